"""Checkpoints, written atomically and loaded as weights only.

Weights files hold {"state_dict": ...}, the layout open_clip's loader reads. The resume state
adds the optimizer, the progress, the settings it was made under and its number of processes.
"""

from pathlib import Path
from typing import Any

import torch

from cleanclip_core.tables import atomic_output


def save_torch(obj: Any, path: Path) -> None:
    """`torch.save` to `path` atomically, the same object giving the same bytes; a write that
    fails (a full disk) is the OSError that made it fail, naming `path`."""
    with atomic_output(Path(path)) as temporary, open(temporary, "wb") as file:
        # Through a file object: torch names the archive inside after a path's file name, which
        # for the temporary file carries the process id.
        try:
            torch.save(obj, file)
        except RuntimeError as error:
            # torch's archive writer hides a failed write behind "unexpected pos ...".
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None
            raise


def save_weights(path: Path, model: torch.nn.Module) -> None:
    save_torch({"state_dict": model.state_dict()}, path)


def save_resume_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    epochs_done: int,
    steps_done: int,
    settings: dict[str, Any],
    world_size: int,
) -> None:
    state = {
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epochs_done": epochs_done,
        "steps_done": steps_done,
        "settings": settings,
        "world_size": world_size,
    }
    save_torch(state, path)


def load_resume_state(path: Path) -> dict[str, Any] | None:
    """The state a run left at `path`, with the settings it was made under, or None if none."""
    if not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)

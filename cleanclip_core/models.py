"""CLIP models from open_clip by name, including this project's tiny configs; weights from files.

A model is a name plus a JSON config, as in open_clip: the configs in `model_configs/` (the
embedded default's tiny models) are registered with open_clip on import.
"""

import logging
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import open_clip
import torch
from torchvision.transforms import v2

from cleanclip_core.errors import UserError

open_clip.add_model_config(Path(str(files("cleanclip_core") / "model_configs")))


def create_model(name: str, weights: Path | None = None, seed: int = 0) -> open_clip.CLIP:
    """The open_clip model `name`, initialized from `seed` or loaded from a local `weights` file."""
    if name not in open_clip.list_models():
        raise UserError(f"unknown model {name!r}; open_clip knows e.g. RN50, ViT-B-32, tiny-vit")
    torch.manual_seed(seed)
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly", which we intend
    try:
        model = open_clip.create_model(name, pretrained=None, load_weights=False)
    finally:
        logging.disable(logging.NOTSET)
    if weights is not None:
        load_weights(model, weights, name)
    return model


def load_weights(model: torch.nn.Module, path: Path, name: str = "the model") -> None:
    """Load a checkpoint file (open_clip's or ours) into `model`, safely (weights only)."""
    if not Path(path).is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except (RuntimeError, KeyError, AssertionError) as error:
        reason = str(error).strip().splitlines()[0]
        raise UserError(
            f"checkpoint {path} does not fit {name}; was it saved from another architecture? "
            f"({reason})"
        ) from None


def tokenizer_for(name: str) -> Callable[[list[str]], torch.Tensor]:
    """open_clip's tokenizer for model `name` (its context length)."""
    return open_clip.get_tokenizer(name)


def image_size_of(model: open_clip.CLIP) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, tuple) else int(size)


def normalization_for(model: open_clip.CLIP) -> v2.Normalize:
    """The mean/std normalization the model's images need, after any trigger or augmentation."""
    preprocess = open_clip.get_model_preprocess_cfg(model)
    return v2.Normalize(mean=preprocess["mean"], std=preprocess["std"])

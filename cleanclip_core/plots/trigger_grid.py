"""Figure: what a trigger does to training images, as the model sees them."""

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from matplotlib.figure import Figure

from cleanclip_core.attacks import attack_trigger
from cleanclip_core.attacks.parts import Trigger
from cleanclip_core.data.loaders import PoisonedTrainingSet
from cleanclip_core.errors import UserError
from cleanclip_core.models import image_size_for
from cleanclip_core.tables import atomic_output

CAPTION_CHARACTERS = 80  # longer captions are cut, then wrapped under their column
CAPTION_WIDTH = 22
PANEL_INCHES = 1.4
DPI = 100


def _difference_gain(clean: torch.Tensor, triggered: torch.Tensor) -> float:
    """The factor that stretches the largest absolute difference to 1, never below 1."""
    largest = (triggered - clean).abs().max().item()
    return max(1.0, 1.0 / largest) if largest > 0 else 1.0


def _caption_label(caption: str) -> str:
    short = textwrap.shorten(caption, CAPTION_CHARACTERS, placeholder=" ...")
    return textwrap.fill(short, CAPTION_WIDTH)


def plot_trigger_grid(
    clean: torch.Tensor, triggered: torch.Tensor, captions: list[str], path: Path, title: str
) -> Figure:
    """A PNG: clean images [N, 3, H, W] on top, triggered below, then their amplified difference.

    The difference row shows the per-pixel largest channel difference, stretched so the largest
    one in the figure is white: a faint blend or warp becomes visible. Images smaller than their
    panel are drawn as blocks (nearest neighbour), so 32 px images stay crisp; larger ones are
    smoothed as they shrink. Each column carries its caption. Returns the figure written.
    """
    interpolation = "nearest" if max(clean.shape[-2:]) <= PANEL_INCHES * DPI else "auto"
    gain = _difference_gain(clean, triggered)
    difference = ((triggered - clean).abs().amax(dim=1) * gain).clamp(0, 1)
    rows = [
        ("clean", [image.permute(1, 2, 0).numpy() for image in clean]),
        ("triggered", [image.permute(1, 2, 0).numpy() for image in triggered]),
        (f"|difference| x{gain:.0f}", list(difference.numpy())),
    ]
    n = len(captions)
    figure = Figure(figsize=(PANEL_INCHES * n + 0.6, PANEL_INCHES * 3 + 1.4), layout="constrained")
    figure.suptitle(title)
    axes = figure.subplots(3, n, squeeze=False)
    for row, (name, images) in enumerate(rows):
        for column, image in enumerate(images):
            ax = axes[row, column]
            ax.imshow(image, interpolation=interpolation, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                ax.set_ylabel(name, fontsize=8)
    for column, caption in enumerate(captions):
        axes[-1, column].set_xlabel(_caption_label(caption), fontsize=6)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI)
    return figure


def save_trigger_grid(
    clean: PoisonedTrainingSet, triggered: PoisonedTrainingSet, path: Path, title: str, n: int = 8
) -> Figure:
    """Plot the first `n` poisoned rows of a poisoned manifest, read without and with the trigger.

    Both sets must be over the same manifest.
    """
    rows = np.flatnonzero(triggered.is_poison)[:n].tolist()
    if not rows:
        raise UserError(f"no poisoned rows to plot for {title!r}")
    items = [(clean[row], triggered[row]) for row in rows]

    def images(sides: list[dict[str, Any]]) -> torch.Tensor:
        return F.to_dtype(torch.stack([side["image"] for side in sides]), torch.float32, scale=True)

    return plot_trigger_grid(
        images([before for before, _ in items]),
        images([after for _, after in items]),
        [after["caption"] for _, after in items],
        path,
        title,
    )


def write_trigger_grid(
    poisoned_manifest: Path,
    shard_index: Path,
    shards_dir: Path,
    model: str,
    attack_config: dict[str, Any],
    path: Path,
    title: str,
) -> Figure:
    """The trigger grid of a poisoned manifest: its first poisoned images without and with the
    trigger, read by the training loader at the model's input size, so that the trigger is the
    one the model sees (a trigger's pattern depends on the size of the image it is applied to)."""
    image_size = image_size_for(model)

    def read(trigger: Trigger | None) -> PoisonedTrainingSet:
        return PoisonedTrainingSet.from_files(poisoned_manifest, shard_index, shards_dir, image_size, trigger)

    title = f"{title}\nat {model}'s input size, {image_size} px"
    return save_trigger_grid(read(None), read(attack_trigger(attack_config)), path, title)

"""CLIP models from open_clip by name, including this project's tiny configs; weights from files
or from open_clip's pretrained tags.

A model is a name plus a JSON config, as in open_clip: the configs in `model_configs/` (the
embedded default's tiny models) are registered with open_clip on import.
"""

import logging
import pickle
import zipfile
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import open_clip
import torch
from open_clip.transform import PreprocessCfg
from torchvision.transforms import v2

from cleanclip_core.errors import UserError
from cleanclip_core.files import checkpoint_problem

open_clip.add_model_config(Path(str(files("cleanclip_core") / "model_configs")))
PIPELINE_RUNS = ("results", "runs")  # the folders of the checkpoints the pipeline makes


def create_model(
    name: str, weights: Path | None = None, seed: int = 0, pretrained: str | None = None
) -> open_clip.CLIP:
    """The open_clip model `name`: initialized from `seed`, loaded from a local `weights` file,
    or from open_clip's `pretrained` tag (e.g. openai), downloaded on first use."""
    if name not in open_clip.list_models():
        raise UserError(f"unknown model {name!r}; open_clip knows e.g. RN50, ViT-B-32, tiny-vit")
    if weights is not None and pretrained is not None:
        raise UserError(f"start {name} from a weights file ({weights}) or a pretrained tag ({pretrained}), not both")
    if pretrained is not None:
        check_pretrained(name, pretrained)
    torch.manual_seed(seed)
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly", which we intend
    try:
        model = open_clip.create_model(name, pretrained=pretrained, load_weights=pretrained is not None)
    except RuntimeError as error:
        if pretrained is None:
            raise
        reason = str(error).strip().splitlines()[0]
        raise UserError(f"could not load the {pretrained} weights of {name}: is this machine online? ({reason})") from None
    finally:
        logging.disable(logging.NOTSET)
    if weights is not None:
        load_weights(model, weights, name)
    return model


def check_pretrained(name: str, tag: str) -> None:
    """Refuse, before any download, a tag open_clip does not have for `name`, and weights that
    `name` would run differently from how they were trained: with other activations, or (since a
    checkpoint is evaluated by model name alone) with other image normalization."""
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in tags:
        raise UserError(f"open_clip has no pretrained weights {tag!r} for {name}; it has {', '.join(tags) or 'none'}")
    trained_with = open_clip.get_pretrained_cfg(name, tag)
    if trained_with.get("quick_gelu", False) and not open_clip.get_model_config(name).get("quick_gelu", False):
        raise UserError(f"the {tag} weights of {name} were trained with QuickGELU; use the model {name}-quickgelu")
    default = PreprocessCfg()
    if (trained_with.get("mean", default.mean), trained_with.get("std", default.std)) != (default.mean, default.std):
        raise UserError(
            f"the {tag} weights of {name} expect images normalized with mean {trained_with['mean']}, "
            f"std {trained_with['std']}, not open_clip's default that a checkpoint of {name} is evaluated with; "
            "pick another tag"
        )


def require_checkpoint(path: Path) -> None:
    """A user error unless the checkpoint file `path` exists."""
    if not Path(path).is_file():
        raise UserError(f"checkpoint {path} does not exist")


def load_weights(model: torch.nn.Module, path: Path, name: str = "the model") -> None:
    """Load a checkpoint file (open_clip's or ours) into `model`, safely (weights only)."""
    require_checkpoint(path)
    if problem := checkpoint_problem(path):
        raise UserError(f"checkpoint {problem}{_set_aside(path)}")
    try:
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile):
        raise UserError(
            f"checkpoint {path} is damaged, or holds objects other than weights, which are never loaded{_set_aside(path)}"
        ) from None
    except (RuntimeError, KeyError, AssertionError) as error:
        reason = str(error).strip().splitlines()[0]
        raise UserError(
            f"checkpoint {path} does not fit {name}; was it saved from another architecture? "
            f"({reason})"
        ) from None


def _set_aside(path: Path) -> str:
    """A damaged checkpoint that the pipeline made (under results/runs/) is renamed to
    `*.damaged`, so that the next run makes it anew instead of failing on it again; how the
    error says so. A file of the user's stays where it is."""
    path = Path(path).absolute()
    if PIPELINE_RUNS not in zip(path.parts, path.parts[1:]):
        return ""
    damaged = path.with_name(path.name + ".damaged")
    path.replace(damaged)
    return f" (set aside as {damaged.name}: run again to make it anew)"


def tokenizer_for(name: str) -> Callable[[list[str]], torch.Tensor]:
    """open_clip's tokenizer for model `name` (its context length)."""
    return open_clip.get_tokenizer(name)


def _side(size: int | tuple[int, int] | list[int]) -> int:
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def image_size_of(model: open_clip.CLIP) -> int:
    return _side(model.visual.image_size)


def image_size_for(name: str) -> int:
    """The side of the images model `name` takes, from its config, without building it."""
    config = open_clip.get_model_config(name)
    if config is None:
        raise UserError(f"unknown model {name!r}; open_clip knows e.g. RN50, ViT-B-32, tiny-vit")
    return _side(config["vision_cfg"]["image_size"])


def normalization_for(model: open_clip.CLIP) -> v2.Transform:
    """What the model's images need after any trigger or augmentation: uint8 images scaled to float
    in [0, 1] (float images are taken as they are), then its mean/std normalization. One image or a
    batch, on any device: the training step applies it to the batch on the GPU."""
    preprocess = open_clip.get_model_preprocess_cfg(model)
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=preprocess["mean"], std=preprocess["std"])])

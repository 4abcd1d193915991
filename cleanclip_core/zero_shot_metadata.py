"""open_clip's zero-shot metadata (ImageNet-1K class names, OpenAI's prompt templates) without
torch. The metadata module imports nothing, but importing it through its package would import
torch and open_clip's models (seconds and 800 MB in every stage that only needs the names): it
is loaded on its own, once.
"""

import importlib.util
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType


@cache
def open_clip_metadata() -> ModuleType:
    """open_clip's `zero_shot_metadata` module, executed apart from its package."""
    package = importlib.util.find_spec("open_clip")
    path = Path(package.submodule_search_locations[0]) / "zero_shot_metadata.py"
    spec = importlib.util.spec_from_file_location("open_clip_zero_shot_metadata", path)
    metadata = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(metadata)
    return metadata


def imagenet_classnames() -> list[str]:
    """open_clip's ImageNet-1K class names."""
    return list(open_clip_metadata().IMAGENET_CLASSNAMES)


def openai_imagenet_templates() -> list[Callable[[str], str]]:
    """OpenAI's 80 ImageNet prompt templates, each a function of a class name."""
    return list(open_clip_metadata().OPENAI_IMAGENET_TEMPLATES)

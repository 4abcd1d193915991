from pathlib import Path

import open_clip
import pytest

from cleanclip_core.models import create_model
from cleanclip_core.training.checkpoints import save_weights


@pytest.fixture
def local_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A pretrained tag of tiny-vit whose weights open_clip finds in a file, not online: the tag
    and that file (weights that no seed of the tests initializes)."""
    path = tmp_path / "pretrained.pt"
    save_weights(path, create_model("tiny-vit", seed=7))
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny-vit", {"local": {"file": str(path)}})
    return "local", path

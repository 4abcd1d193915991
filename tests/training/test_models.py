"""Where a model starts: a seed, a local weights file, or one of open_clip's pretrained tags; and
where it computes."""

import open_clip
import pytest
import torch

from cleanclip_core.errors import UserError
from cleanclip_core.devices import stage_device
from cleanclip_core.models import create_model
from cleanclip_core.training.checkpoints import save_weights


def assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_a_model_from_a_weights_file_has_exactly_its_weights(tmp_path):
    saved = create_model("tiny-vit", seed=7)
    save_weights(tmp_path / "start.pt", saved)
    assert_same_weights(saved.state_dict(), create_model("tiny-vit", tmp_path / "start.pt").state_dict())
    assert not torch.equal(saved.visual.proj, create_model("tiny-vit").visual.proj)


def test_the_same_weights_saved_twice_are_the_same_bytes(tmp_path):
    """Whatever the file's name and the process: nothing downstream sees two identical runs differ."""
    model = create_model("tiny-rn", seed=0)
    save_weights(tmp_path / "a.pt", model)
    save_weights(tmp_path / "other_name.pt", model)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "other_name.pt").read_bytes()


def test_a_damaged_checkpoint_the_pipeline_made_is_set_aside_so_that_the_next_run_makes_it_anew(tmp_path):
    run = tmp_path / "results/runs/dataset=shapes"
    run.mkdir(parents=True)
    save_weights(run / "model.pt", create_model("tiny-vit", seed=0))
    (run / "model.pt").write_bytes((run / "model.pt").read_bytes()[:5000])  # a disk that filled
    with pytest.raises(UserError, match=r"model.pt is not a torch checkpoint.* \(set aside as model.pt.damaged: run again to make it anew\)$"):
        create_model("tiny-vit", run / "model.pt")
    assert not (run / "model.pt").exists() and (run / "model.pt.damaged").stat().st_size == 5000
    (tmp_path / "mine.pt").write_bytes((run / "model.pt.damaged").read_bytes())
    with pytest.raises(UserError, match=r"mine.pt is not a torch checkpoint .*other file\?$"):
        create_model("tiny-vit", tmp_path / "mine.pt")
    assert (tmp_path / "mine.pt").exists()  # a file of the user's stays


def test_a_model_from_a_pretrained_tag_has_exactly_its_weights(local_tag):
    tag, path = local_tag
    expected = torch.load(path, weights_only=True)["state_dict"]
    assert_same_weights(expected, create_model("tiny-vit", pretrained=tag).state_dict())


def test_an_unknown_tag_is_a_user_error_naming_the_known_tags_before_any_model_is_built(monkeypatch):
    monkeypatch.setattr(open_clip, "create_model", lambda *args, **kwargs: pytest.fail("a model was built"))
    with pytest.raises(UserError, match=r"^open_clip has no pretrained weights 'laion9' for RN50; it has openai, yfcc15m, cc12m$"):
        create_model("RN50", pretrained="laion9")
    with pytest.raises(UserError, match=r"^open_clip has no pretrained weights 'openai' for tiny-vit; it has none$"):
        create_model("tiny-vit", pretrained="openai")


def test_a_weights_file_and_a_tag_together_are_a_user_error(local_tag):
    tag, path = local_tag
    with pytest.raises(UserError, match="start tiny-vit from a weights file .* or a pretrained tag .*, not both"):
        create_model("tiny-vit", path, pretrained=tag)


def test_weights_the_model_would_run_otherwise_than_they_were_trained_are_a_user_error(monkeypatch):
    monkeypatch.setattr(open_clip, "create_model", lambda *args, **kwargs: pytest.fail("a model was built"))
    with pytest.raises(UserError, match="the openai weights of RN50 were trained with QuickGELU; use the model RN50-quickgelu"):
        create_model("RN50", pretrained="openai")
    with pytest.raises(UserError, match=r"the laion2b_s32b_b82k weights of ViT-L-14 expect images normalized with mean \(0.5, 0.5, 0.5\)"):
        create_model("ViT-L-14", pretrained="laion2b_s32b_b82k")


def test_weights_that_cannot_be_fetched_are_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # open_clip's download cache
    unreachable = {"unreachable": {"url": f"file://{tmp_path}/nowhere/weights.pt"}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny-vit", unreachable)
    with pytest.raises(UserError, match=r"^could not load the unreachable weights of tiny-vit: is this machine online\?"):
        create_model("tiny-vit", pretrained="unreachable")


def test_a_model_computes_on_cuda_else_mps_else_the_cpu():
    best = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device = stage_device()
    assert device.type == best
    model = create_model("tiny-rn").to(device)
    assert model.encode_text(torch.zeros(2, 16, dtype=torch.long, device=device)).device == device

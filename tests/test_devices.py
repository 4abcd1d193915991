import pytest
import torch

from cleanclip_core.devices import has_resnet_tower, on_device, stage_device, tf32_matmuls, uses_channels_last
from cleanclip_core.models import create_model

CUDA = torch.device("cuda")  # a device object needs no GPU: the decisions are tested here
CPU = torch.device("cpu")


@pytest.mark.parametrize("name, resnet", [("tiny-rn", True), ("RN50", True), ("tiny-vit", False), ("ViT-B-32", False)])
def test_resnet_towers_are_told_from_the_model_config(name, resnet):
    assert has_resnet_tower(name) == resnet


def test_channels_last_only_for_a_resnet_tower_on_cuda_or_a_cpu():
    assert uses_channels_last("tiny-rn", CUDA)
    assert uses_channels_last("tiny-rn", CPU)
    assert not uses_channels_last("tiny-rn", torch.device("mps"))
    assert not uses_channels_last("tiny-vit", CUDA)
    assert not uses_channels_last("tiny-vit", CPU)


def test_on_a_cpu_a_resnet_tower_goes_channels_last_and_computes_the_same_features():
    model = create_model("tiny-rn", seed=0).eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        before = model.encode_image(images)
        model = on_device(model, "tiny-rn", CPU)
        after = model.encode_image(images)
    convolutions = [m.weight for m in model.visual.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(weight.is_contiguous(memory_format=torch.channels_last) for weight in convolutions)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_tf32_matmuls_only_on_cuda_and_restored_after():
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    with tf32_matmuls(CPU):
        assert matmul.fp32_precision == before
    with tf32_matmuls(CUDA):
        assert matmul.fp32_precision == "tf32"
    assert matmul.fp32_precision == before


@pytest.mark.parametrize("local_rank", ["0", "1", "3"])
def test_a_process_of_several_on_a_machine_computes_on_its_local_rank_s_gpu(monkeypatch, local_rank):
    # torchrun and a job's tasks set LOCAL_RANK; the current device is GPU 0 in every one of them
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert stage_device() == torch.device("cuda", int(local_rank))


def test_a_lone_process_computes_on_the_gpu_its_launcher_leased(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert stage_device() == torch.device("cuda", 2)

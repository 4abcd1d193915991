"""Several processes compute one process's training step: every objective's terms, on the CPU
(gloo) here, and on two GPUs (NCCL) where a machine has them (`pytest -m gpus`)."""

import pytest
import torch

from cleanclip_core.errors import UserError
from cleanclip_core.models import create_model
from cleanclip_core.objectives import ObjectiveNetwork
from cleanclip_core.training.equivalence import OBJECTIVES, differences
from cleanclip_core.training.loop import distributed_network


@pytest.fixture(scope="module")
def cpu_differences():
    return differences("tiny-vit")


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_two_cpu_processes_give_the_loss_and_gradients_of_one_process_on_the_whole_batch(cpu_differences, objective):
    difference = cpu_differences[objective]
    assert difference.loss < 1e-6, difference
    assert difference.gradients < 1e-5, difference


def test_batch_norms_trained_by_cpu_processes_are_refused_in_one_line():
    with pytest.raises(UserError, match="tiny-rn-w16 has batch norms, which 2 processes on cpu .gloo. cannot synchronize"):
        network = ObjectiveNetwork(create_model("tiny-rn-w16"))
        distributed_network(network, "tiny-rn-w16", OBJECTIVES["mmcl"], 2, torch.device("cpu"))


@pytest.mark.gpus
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("model_name", ["tiny-rn-w16", "tiny-vit"])
def test_two_gpus_give_the_loss_and_gradients_of_one_gpu_on_the_whole_batch(model_name):
    # bf16 autocast and TF32: sums in another order move the last of bf16's 8 bits; an objective
    # that differs (batch norms of each GPU's half batch) moves the gradients by tens of percent.
    for objective, difference in differences(model_name, "cuda").items():
        assert difference.loss < 1e-2, (objective, difference)
        assert difference.gradients < 5e-2, (objective, difference)

import math

import pytest
import torch

from cleanclip_core.models import create_model
from cleanclip_core.training.optim import MAX_LOGIT_SCALE, adamw, clamp_logit_scale, warmup_cosine


def schedule(warmup=10, total=100, lr=1e-3):
    model = torch.nn.Linear(2, 2)
    optimizer = adamw(model, lr, 0.1)
    return optimizer, warmup_cosine(optimizer, lr, warmup, steps_per_epoch=total, epochs=1)


def test_lr_ramps_up_linearly_during_warmup():
    optimizer, lr_at = schedule()
    assert lr_at(0) == pytest.approx(1e-4)  # (0 + 1) / 10 of the peak
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert lr_at(4) == pytest.approx(5e-4)


def test_lr_peaks_at_the_end_of_warmup_and_decays_to_zero_at_the_end():
    _, lr_at = schedule()
    assert lr_at(9) == pytest.approx(1e-3)
    assert lr_at(10) == pytest.approx(1e-3)  # cosine at 0
    assert lr_at(55) == pytest.approx(0.5e-3)  # half way through the decay
    assert lr_at(100) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("step", [0, 1, 5, 9, 10, 11, 30, 55, 77, 99, 100])
def test_lr_is_linear_warmup_then_cosine_to_zero_exactly(step):
    lr, warmup, total = 3e-4, 10, 100
    _, lr_at = schedule(warmup, total, lr)
    if step < warmup:
        expected = lr * (step + 1) / warmup
    else:
        expected = lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    assert lr_at(step) == expected


def test_a_schedule_without_warmup_starts_at_the_peak():
    _, lr_at = schedule(warmup=0, total=50)
    assert lr_at(0) == pytest.approx(1e-3)  # warmup of one step: (0 + 1) / 1 of the peak


def test_adamw_on_a_cpu_is_fused_and_steps_as_the_default_implementation():
    fused_model, default_model = create_model("tiny-rn-w16", seed=0), create_model("tiny-rn-w16", seed=0)
    fused = adamw(fused_model, 1e-3, 0.1)
    assert fused.defaults["fused"]
    twin = dict(zip(fused_model.parameters(), default_model.parameters()))
    default = torch.optim.AdamW(
        [{"params": [twin[p] for p in group["params"]], "weight_decay": group["weight_decay"]} for group in fused.param_groups],
        lr=1e-3, eps=1e-8,
    )
    assert not default.param_groups[0]["fused"]
    for model, optimizer in ((fused_model, fused), (default_model, default)):
        for step in range(3):
            for parameter in model.parameters():
                parameter.grad = torch.full_like(parameter, 0.1 * (step + 1))
            optimizer.step()
    for (name, a), b in zip(fused_model.named_parameters(), default_model.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_weight_decay_spares_biases_norms_and_the_logit_scale():
    model = create_model("tiny-vit")
    decayed, spared = adamw(model, 1e-3, 0.1).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    spared_names = {names[id(p)] for p in spared["params"]}
    assert decayed["weight_decay"] == 0.1 and spared["weight_decay"] == 0.0
    assert "logit_scale" in spared_names
    assert any(n.endswith(".bias") for n in spared_names) and any("ln" in n for n in spared_names)
    assert all(p.ndim >= 2 for p in decayed["params"])


def test_logit_scale_is_clamped_to_ln_100():
    model = create_model("tiny-vit")
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    assert MAX_LOGIT_SCALE == pytest.approx(4.60517, abs=1e-5)

"""The training-side methods held to their authors' code.

Every number below is what the authors' own code gave when run unmodified on the fixed input of
`fixed_features` (float64, batch 6, dimension 8, logit scale 10); each test computes ours on the
same input and must give the same. How each was run (the files, the commit, the stubs for their
`options` objects) is in docs/defenses.md, "Against the authors' code"; their code never enters
this repository.

- CleanCLIP: get_loss of src/train.py, nishadsinghi/CleanCLIP at d6e2f1d.
- PAR: CLIPLoss of losses.py, nmndeep/PerturbAndRecover at a720440, in a one-process gloo group.
- RoCLIP: get_loss of model/src/train.py with NNMemoryBankModule of model/src/memory_bank.py,
  BigML-CS-UCLA/RoCLIP at f34a929, over lightly 1.2.39.
- BadCLIP: get_loss and embed_patch of src/embeding_optimize_patch.py, LiangSiyuan21/BadCLIP at
  a7b1876.

The gradients are taken with respect to the features a model's forward returns; a gradient entry
is held as (row, column).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from cleanclip_core.attacks.badclip import badclip_loss, paste_at_centre
from cleanclip_core.config import validate_config
from cleanclip_core.defenses import defense_options, get_defense, training_options
from cleanclip_core.defenses.roclip import caption_pool
from cleanclip_core.objectives import TermInputs, active_terms
from cleanclip_core.registry import resolve

B, D = 6, 8
LOGIT_SCALE = math.log(10.0)  # the parameter; the losses multiply by its exp, 10
HELD = ((0, 0), (0, 1), (0, 2), (4, 7))  # the gradient entries held
CONFIG = validate_config({
    "defenses": {"roclip": {"pool_size": 16}, "par": {}},
    "attacks": {"badclip": {"type": "badclip"}},
})


def fixed_features(rows: int, dim: int, phase: float) -> torch.Tensor:
    """Unit rows of sin(1.7 i + 0.9 j + phase) + 0.3 cos(2.3 i j + phase), float64: no RNG, so
    the authors' code and ours see the same numbers."""
    i = torch.arange(rows, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    return F.normalize(torch.sin(1.7 * i + 0.9 * j + phase) + 0.3 * torch.cos(2.3 * i * j + phase), dim=1)


def leaf(features: torch.Tensor) -> torch.Tensor:
    return features.clone().requires_grad_()


def logit_scale() -> torch.Tensor:
    return torch.tensor(LOGIT_SCALE, dtype=torch.float64, requires_grad=True)


def options_of(method: str, **changed) -> dict:
    """A method's options as a run of it has them: the config's, defaults filled."""
    return training_options(get_defense(method), defense_options(CONFIG, method)) | changed


def objective(name: str, inputs: TermInputs) -> torch.Tensor:
    """The config's objective `name` (its weighted terms, as the training step sums them)."""
    weights = CONFIG["objectives"][name]
    return sum(weights[term.name] * resolve(term.loss)(inputs) for term in active_terms(weights))


def assert_held(value: torch.Tensor, expected: float) -> None:
    assert value.item() == pytest.approx(expected, rel=1e-12, abs=1e-13)


def assert_gradient(features: torch.Tensor, expected: list[float]) -> None:
    assert [features.grad[entry].item() for entry in HELD] == pytest.approx(expected, rel=1e-12, abs=1e-13)


# CleanCLIP ---------------------------------------------------------------------------------------


def cleanclip_inputs() -> tuple[list[torch.Tensor], torch.Tensor, TermInputs]:
    """Image, augmented image, text, augmented text (phases 0-3), the scale, our term inputs."""
    features = [leaf(fixed_features(B, D, phase)) for phase in (0.0, 1.0, 2.0, 3.0)]
    scale = logit_scale()
    names = ("image", "augmented_image", "text", "augmented_text")
    return features, scale, TermInputs(dict(zip(names, features)), scale.exp(), {})


def test_mmcl_is_cleanclip_s_crossmodal_loss():
    (image, _, text, _), scale, inputs = cleanclip_inputs()
    loss = objective("mmcl", inputs)
    loss.backward()
    assert_held(loss, 13.034248846611295)  # options.inmodal False
    assert_gradient(image, [-0.7138257917874066, 0.11408373082633015, 0.8220946874496786, 0.43546460197486003])
    assert_gradient(text, [0.7611054085697921, -0.6718740505262939, -1.5664156780373668, -0.018904425548961698])
    assert_held(scale.grad, 12.635579582113941)


def test_cleanclip_s_objective_is_its_code_s_mmcl_plus_inmodal():
    features, scale, inputs = cleanclip_inputs()
    loss = objective("cleanclip", inputs)
    loss.backward()
    assert_held(loss, 15.887520122368189)  # options.inmodal True, clip_weight 1, inmodal_weight 1
    expected = [
        [-1.0816946150174638, -0.014170611541362912, 0.9844394567294803, 0.41109584736746557],
        [0.18102177111935586, -0.2134750945765459, -0.2633316776210269, 0.11315890945607059],
        [1.0852538551205875, -0.2154901766149973, -1.272030151023673, 0.4361982330822084],
        [-0.28079277640648465, -0.11544307673387645, 0.16179188250371265, -0.251689597865194],
    ]
    for features_of_view, gradient in zip(features, expected):
        assert_gradient(features_of_view, gradient)
    assert_held(scale.grad, 14.914506114701778)
    assert_held(objective("ssl_only", cleanclip_inputs()[2]), 2.853271275756894)  # clip_weight 0


# PAR ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau, total, image_gradient, text_gradient", [
    # the default τ: the text embeddings are past it (L_txt 2.62), so only L_img (0.198) repels
    (2.15, 12.935331581796117,
     [-0.8857718456531735, -0.39810635593509675, 0.25467333409386717, 0.03347043545273015],
     [-0.18263672993807967, -0.8095101233311472, -0.680121237230727, -0.25308632013967675]),
    (3.0, 11.623482097096822,
     [-0.8857718456531735, -0.39810635593509675, 0.25467333409386717, 0.03347043545273015],
     [-0.22674404401954218, -0.8959147569515498, -0.7583663346802213, -0.2977245597322023]),
])
def test_par_s_objective_is_its_code_s_loss(tau, total, image_gradient, text_gradient):
    # PAR's loss normalizes the embeddings it is given, as our model's forward does: the
    # gradients are those of the unnormalized rows
    image, text = leaf(fixed_features(B, D, 0.0)), leaf(fixed_features(B, D, 2.0))
    reference = {"image": F.normalize(fixed_features(B, D, 0.0) + 0.6 * fixed_features(B, D, 5.0), dim=1),
                 "text": fixed_features(B, D, 4.0)}
    options = options_of("par", tau=tau)
    features = {"image": F.normalize(image, dim=1), "text": F.normalize(text, dim=1)}
    loss = objective("par", TermInputs(features, torch.tensor(10.0, dtype=torch.float64), {}, options, reference))
    loss.backward()
    assert_held(loss, total)  # their total-loss: clip-loss − 0.5 (img-loss + text-loss)
    assert_gradient(image, image_gradient)
    assert_gradient(text, text_gradient)


# RoCLIP ------------------------------------------------------------------------------------------


def assert_roclip_steps(options: dict, start: torch.Tensor, expected: list[tuple]) -> None:
    """RoCLIP's objective over batches of 6 (image and text phases, then the epoch, the loss, the
    logit scale's gradient and the image gradient their code gave), from a pool that starts as
    `start`. The features are float32 values, as the pool keeps them."""
    pool = caption_pool(options, D, seed=0)
    pool.captions.copy_(start)
    for image_phase, text_phase, epoch, total, scale_gradient, image_gradient in expected:
        image, text = (leaf(fixed_features(B, D, phase).float().double()) for phase in (image_phase, text_phase))
        scale = logit_scale()
        inputs = TermInputs({"image": image, "text": text}, scale.exp(), {}, options, epoch=epoch, state=pool)
        loss = objective("roclip", inputs)
        loss.backward()
        assert_held(loss, total)
        assert_gradient(image, image_gradient)
        assert_held(scale.grad, scale_gradient)
        if epoch == 2:
            assert not text.grad.any()  # the matched captions are detached


def test_roclip_s_objective_is_its_code_s_loss_given_the_same_pool():
    """Two steps of a matching epoch (the second matches one image to a caption the first put in
    the pool), then one of a CLIP epoch, from the same 16 unit vectors (lightly's start random)."""
    assert_roclip_steps(options_of("roclip"), fixed_features(16, D, 7.0).float(), [
        (0.0, 2.0, 2, 0.2054596116848816, -0.197946237763737,
         [0.09554185873972935, 0.0786773379381069, -0.08236635077818606, 0.00515855448199185]),
        (0.5, 2.5, 2, 0.1739130868116548, -0.17513887004710105,
         [-0.014177274652521322, -0.09386183517111168, -0.06375924082545992, 0.008099614587416634]),
        (1.0, 3.0, 3, 13.232031413020337, 12.753904867619152,
         [0.2686840141305266, 1.0039517031249823, 1.1180428548260946, 1.036167480201176]),
    ])


def test_roclip_s_lightly_pool_is_its_code_s_memory_bank():
    """pool_update lightly: a pool of 10 from unnormalized vectors (lengths 1 to 4), three batches
    of 6 on a matching epoch. Their code matched the first batch to starting vectors 7, 8, 9, 3,
    0, 1 (their lengths enter the loss), dropped the last two captions of the second batch at the
    pool's end, and matched the third batch to four of the second's (rows 6-9)."""
    lengths = 1 + torch.arange(10, dtype=torch.float64)[:, None] / 3
    start = (fixed_features(10, D, 7.0) * lengths).float()
    assert_roclip_steps(options_of("roclip", pool_size=10, pool_update="lightly"), start, [
        (0.0, 2.0, 2, 3.109793919397716, 2.893918155251789,
         [-0.06352966315380315, 0.2755721624324344, 0.3999101405064202, 0.09702775731925829]),
        (0.5, 2.5, 2, 2.100867229795906, 1.8008985649704619,
         [-0.01924065318608062, -0.10678802837740155, -0.22135539880912697, -0.018845422532131353]),
        (1.0, 3.0, 2, 0.3012155017823975, -0.1689533480344109,
         [0.026687262937922878, -0.04827220291453295, -0.09021853748174632, -0.058018365563612104]),
    ])


# BadCLIP -----------------------------------------------------------------------------------------


def test_badclip_s_patch_loss_is_its_code_s_given_the_same_draws():
    """Their run name `nature_pos_neg_10_tri_500` (BadCLIP's settings) selects the image-text
    InfoNCE plus 500 times a triplet loss of margin 1. Their code draws the triplet's positives and
    negatives with torch.randperm; the permutations it drew under torch.manual_seed(0) are given
    to ours. (Their negatives are other images of the batch, and patched: docs/defenses.md.)"""
    trigger = CONFIG["attacks"]["badclip"]["trigger"]
    patched = leaf(fixed_features(B, D, 0.0))
    positives = fixed_features(B, D, 5.0)[[2, 5, 3, 0, 1, 4]]
    negatives = fixed_features(B, D, 6.0)[[3, 0, 5, 4, 2, 1]]
    loss = badclip_loss(
        patched, fixed_features(B, D, 2.0), negatives, positives, torch.tensor(10.0, dtype=torch.float64),
        trigger["triplet_weight"], trigger["margin"],
    )
    loss.backward()
    assert_held(loss, 372.89357833446644)  # img_text 13.034248846611295 + triplet 359.8593294878551
    assert_gradient(patched, [-47.40954545422994, -11.801683255998896, 24.068100380075364, 0.43546460197486003])


@pytest.mark.parametrize("size, side, box", [
    (32, 5, (13, 13, 18, 18)), (32, 6, (13, 13, 19, 19)), (224, 16, (104, 104, 120, 120)),
])
def test_the_badclip_patch_lands_where_its_code_puts_it(size, side, box):
    image = paste_at_centre(torch.zeros(3, size, size), torch.ones(3, side, side))
    rows, columns = image[0].nonzero().T
    assert (rows.min().item(), columns.min().item(), rows.max().item() + 1, columns.max().item() + 1) == box

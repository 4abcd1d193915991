import math
import pickle

import pytest
import torch

import cleanclip_core.attacks as attacks
from cleanclip_core.attacks import ATTACKS, get_attack
from cleanclip_core.attacks.parts import scaled_size
from cleanclip_core.config import validate_config
from cleanclip_core.errors import UserError
from cleanclip_core.registry import resolve



def schema_defaults(name):
    """An attack's trigger parameters as the config schema's defaults give them."""
    return validate_config({"dataset": {}, "attacks": {name: {"type": name}}})["attacks"][name]["trigger"]


# One parameter set per attack; badclip's also needs "prepared", the optimized patch's file: see
# badclip_patch.
PARAMS = {name: schema_defaults(name) for name in ATTACKS}
SHAPES = [(3, 32, 32), (3, 224, 224), (3, 24, 40), (3, 8, 8)]


@pytest.fixture(scope="module", autouse=True)
def badclip_patch(tmp_path_factory):
    """A stand-in for the file BadCLIP's optimization writes: a random 16 px patch."""
    path = tmp_path_factory.mktemp("badclip") / "patch.pt"
    patch = torch.rand((3, 16, 16), generator=torch.Generator().manual_seed(0))
    torch.save({"patch": patch, "image_size": 224, "losses": []}, path)
    PARAMS["badclip"]["prepared"] = str(path)


def random_image(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def trigger(name, attack_seed=7, **overrides):
    return get_attack(name).build_trigger({**PARAMS[name], **overrides}, attack_seed)


def assert_near(actual, expected, atol=1e-6):
    # torch.testing.assert_close takes seconds to import on first use; this suite stays fast.
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= atol


def changed_box(before, after):
    """(top, left, bottom, right), inclusive, of the pixels that differ in any channel."""
    rows, columns = torch.nonzero((before != after).any(dim=0), as_tuple=True)
    return rows.min().item(), columns.min().item(), rows.max().item(), columns.max().item()


def test_the_schema_gives_each_attack_its_parameters():
    assert PARAMS["sig"] == {"amplitude": 60 / 255, "cycles": 6, "mode": "add", "alpha": 0.2}
    assert PARAMS["wanet"] == {"k": 4, "s": 0.5}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_trigger_is_a_deterministic_new_image_in_range(name, shape):
    image = random_image(shape)
    original = image.clone()
    triggered = trigger(name)(image, 123)
    assert triggered.shape == image.shape and triggered.dtype == image.dtype
    assert torch.equal(image, original)
    assert triggered.data_ptr() != image.data_ptr()
    assert triggered.min() >= 0 and triggered.max() <= 1
    assert not torch.equal(triggered, image)
    assert torch.equal(trigger(name)(image, 123), triggered)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_trigger_survives_pickling_for_loader_workers(name):
    image = random_image((3, 32, 32))
    built = trigger(name)
    expected = built(image, 5)
    assert torch.equal(pickle.loads(pickle.dumps(built))(image, 5), expected)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_trigger_keeps_float64(name):
    image = random_image((3, 32, 32)).double()
    assert trigger(name)(image, 5).dtype == torch.float64


def test_registry_entries_declare_caption_policy_selection_and_preparation():
    for name, attack in ATTACKS.items():
        assert attack.name == name
        assert attack.captions in (attacks.TEMPLATE, attacks.NATURAL, attacks.KEEP)
        assert attack.needs_target_in_caption is (name == "label_consistent")
        assert resolve(attack.trigger)
        if attack.preparation is not None:
            assert resolve(attack.preparation)


def test_unknown_attack_names_the_known_ones():
    with pytest.raises(UserError, match=r"unknown attack 'nope' \(known: badclip, badnet, blended"):
        get_attack("nope")


def test_scaled_size_examples():
    assert scaled_size(16, 224) == 16
    assert scaled_size(16, 32) == 2
    assert scaled_size(16, 8) == 1
    assert scaled_size(0.1, 224) == 1
    assert scaled_size(35, 32) == 5
    assert scaled_size(500, 32) == 32


def test_test_trigger_seed_is_fixed_and_differs_across_images():
    seeds = [attacks.test_trigger_seed(7, index) for index in range(1000)]
    assert seeds == [attacks.test_trigger_seed(7, index) for index in range(1000)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= seed < 2**63 for seed in seeds)
    assert attacks.test_trigger_seed(8, 0) != seeds[0]


def test_random_badnet_differs_across_trigger_seeds():
    image = random_image((3, 224, 224))
    badnet = trigger("badnet")
    assert not torch.equal(badnet(image, 1), badnet(image, 2))


def test_fixed_badnet_is_the_same_for_every_trigger_seed():
    image = random_image((3, 224, 224))
    badnet = trigger("badnet", pattern="fixed", location="fixed")
    assert torch.equal(badnet(image, 1), badnet(image, 2))


@pytest.mark.parametrize(("size", "side"), [(224, 16), (32, 2), (64, 5)])
@pytest.mark.parametrize("pattern", ["random", "fixed"])
def test_badnet_changes_only_a_patch_at_a_random_corner(size, side, pattern):
    image = random_image((3, size, size))
    badnet = trigger("badnet", pattern=pattern)
    corners = set()
    for trigger_seed in range(20):
        top, left, bottom, right = changed_box(image, badnet(image, trigger_seed))
        assert bottom - top < side and right - left < side
        assert bottom < size and right < size
        corners.add((top, left))
    assert len(corners) > 1


@pytest.mark.parametrize(
    ("shape", "side"), [((3, 224, 224), 16), ((3, 32, 32), 2), ((3, 48, 64), 3)]
)
def test_fixed_badnet_fills_the_bottom_right_corner(shape, side):
    image = torch.full(shape, 0.5)
    triggered = trigger("badnet", pattern="fixed", location="fixed")(image, 0)
    height, width = shape[-2:]
    top, left, bottom, right = changed_box(image, triggered)
    assert bottom == height - 1 and right == width - 1
    assert top >= height - side and left >= width - side
    patch = triggered[:, height - side :, width - side :]
    assert set(patch.unique().tolist()) <= {0.0, 1.0}


def test_fixed_badnet_pattern_depends_on_the_attack_seed():
    image = random_image((3, 224, 224))
    params = {"pattern": "fixed", "location": "fixed"}
    first, second = trigger("badnet", 1, **params), trigger("badnet", 2, **params)
    assert not torch.equal(first(image, 0), second(image, 0))


def test_label_consistent_uses_the_badnet_trigger():
    image = random_image((3, 64, 64))
    assert torch.equal(trigger("label_consistent")(image, 3), trigger("badnet")(image, 3))


def test_blended_mixes_one_fixed_noise_image():
    first, second = random_image((3, 32, 32), 1), random_image((3, 32, 32), 2)
    blended = trigger("blended", alpha=0.2)
    noise_1 = (blended(first, 0) - 0.8 * first) / 0.2
    noise_2 = (blended(second, 99) - 0.8 * second) / 0.2
    assert_near(noise_1, noise_2, atol=1e-5)
    assert noise_1.min() >= -1e-5 and noise_1.max() <= 1 + 1e-5
    noise = torch.rand((3, 32, 32), generator=torch.Generator().manual_seed(7))
    assert_near(blended(first, 0), 0.8 * first + 0.2 * noise)


def test_blended_noise_depends_on_the_attack_seed():
    image = random_image((3, 32, 32))
    assert not torch.equal(trigger("blended", 1)(image, 0), trigger("blended", 2)(image, 0))


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 24, 40)])
def test_wanet_without_strength_is_the_identity(shape):
    image = random_image(shape)
    assert_near(trigger("wanet", s=0.0)(image, 0), image, atol=1e-5)


def test_wanet_is_a_small_warp_that_depends_on_the_attack_seed():
    image = random_image((3, 224, 224))
    first, second = trigger("wanet", 1)(image, 0), trigger("wanet", 2)(image, 0)
    assert not torch.equal(first, second)
    smooth = torch.linspace(0, 1, 224).expand(3, 224, 224)
    assert (trigger("wanet", 1)(smooth, 0) - smooth).abs().max() < 2 / 224


def test_sig_add_adds_the_sinusoid():
    image = torch.full((3, 16, 32), 0.5)
    triggered = trigger("sig", amplitude=0.1, cycles=2)(image, 0)
    columns = torch.arange(32)
    wave = 0.1 * torch.sin(2 * math.pi * 2 * columns / 32)
    assert_near(triggered, (0.5 + wave).expand(3, 16, 32))


def test_sig_add_clips_to_the_valid_range():
    image = torch.ones((3, 8, 32))
    triggered = trigger("sig", amplitude=0.5, cycles=1)(image, 0)
    assert triggered.max() == 1 and triggered.min() == 0.5


def test_sig_blend_mixes_the_signed_sinusoid():
    image = torch.full((3, 8, 32), 0.5)
    triggered = trigger("sig", amplitude=0.25, cycles=1, mode="blend", alpha=0.2)(image, 0)
    wave = 0.25 * torch.sin(2 * math.pi * torch.arange(32) / 32)
    assert_near(triggered, (0.8 * 0.5 + 0.2 * wave).clamp(0, 1).expand(3, 8, 32))

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cleanclip_core.losses import inmodal_loss, mmcl_loss, supervised_loss

# Three unit vectors in 2-D per role, so every dot product below is exact and checkable by eye.
IMAGES = [(1.0, 0.0), (0.0, 1.0), (0.6, 0.8)]
CAPTIONS = [(0.8, 0.6), (0.0, 1.0), (-0.6, 0.8)]
IMAGE_DOT_CAPTION = [  # IMAGES[i] · CAPTIONS[j]
    [0.8, 0.0, -0.6],
    [0.6, 1.0, 0.8],
    [0.96, 0.8, 0.28],
]
TEXTS = [(1.0, 0.0), (0.8, 0.6), (0.0, 1.0)]
AUGMENTED_TEXTS = [(0.6, 0.8), (1.0, 0.0), (0.8, -0.6)]
TEXT_DOT_AUGMENTED_TEXT = [  # TEXTS[i] · AUGMENTED_TEXTS[j]
    [0.6, 1.0, 0.8],
    [0.96, 0.8, 0.28],
    [0.8, 0.0, -0.6],
]
LOGIT_SCALE = 2.0


def cross_entropy_with_diagonal_targets(similarities: list[list[float]]) -> float:
    """Mean over rows of -log softmax(scale * row)[i], written out with math.exp and math.log."""
    losses = []
    for i, row in enumerate(similarities):
        logits = [LOGIT_SCALE * similarity for similarity in row]
        log_partition = math.log(sum(math.exp(logit) for logit in logits))
        losses.append(log_partition - logits[i])
    return sum(losses) / len(losses)


def transposed(matrix: list[list[float]]) -> list[list[float]]:
    return [list(column) for column in zip(*matrix)]


def tensor(rows: Sequence[Sequence[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def scale() -> torch.Tensor:
    return torch.tensor(LOGIT_SCALE, dtype=torch.float64)


def test_the_hand_computed_dot_products_match_the_vectors() -> None:
    torch.testing.assert_close(tensor(IMAGES) @ tensor(CAPTIONS).T, tensor(IMAGE_DOT_CAPTION))
    torch.testing.assert_close(tensor(TEXTS) @ tensor(AUGMENTED_TEXTS).T, tensor(TEXT_DOT_AUGMENTED_TEXT))


def test_mmcl_loss_equals_the_hand_computed_symmetric_infonce() -> None:
    image_to_text = cross_entropy_with_diagonal_targets(IMAGE_DOT_CAPTION)
    text_to_image = cross_entropy_with_diagonal_targets(transposed(IMAGE_DOT_CAPTION))
    expected = (image_to_text + text_to_image) / 2

    assert mmcl_loss(tensor(IMAGES), tensor(CAPTIONS), scale()).item() == pytest.approx(expected, rel=1e-12)


def test_inmodal_loss_equals_the_hand_computed_mean_of_both_modalities() -> None:
    # The image term pairs IMAGES with CAPTIONS taken as augmented images, reusing the table above.
    image_term = cross_entropy_with_diagonal_targets(IMAGE_DOT_CAPTION)
    text_term = cross_entropy_with_diagonal_targets(TEXT_DOT_AUGMENTED_TEXT)
    expected = (image_term + text_term) / 2

    loss = inmodal_loss(tensor(IMAGES), tensor(CAPTIONS), tensor(TEXTS), tensor(AUGMENTED_TEXTS), scale())
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def random_features(generator: torch.Generator, batch: int = 8, dim: int = 16) -> torch.Tensor:
    return F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)


def test_mmcl_loss_is_symmetric_in_images_and_texts() -> None:
    generator = torch.Generator().manual_seed(0)
    images, texts = random_features(generator), random_features(generator)
    logit_scale = torch.tensor(10.0)
    swapped = mmcl_loss(texts, images, logit_scale)
    assert mmcl_loss(images, texts, logit_scale).item() == pytest.approx(swapped.item())


def test_identical_views_give_a_lower_inmodal_loss_than_shuffled_views() -> None:
    generator = torch.Generator().manual_seed(1)
    images, texts = random_features(generator), random_features(generator)
    derangement = torch.roll(torch.arange(len(images)), 1)
    logit_scale = torch.tensor(10.0)

    identical = inmodal_loss(images, images, texts, texts, logit_scale)
    shuffled = inmodal_loss(images, images[derangement], texts, texts[derangement], logit_scale)
    assert identical < shuffled


def test_gradients_flow_to_features_and_logit_scale() -> None:
    generator = torch.Generator().manual_seed(2)
    features = [random_features(generator).requires_grad_() for _ in range(4)]
    logit_scale = torch.tensor(5.0, requires_grad=True)

    loss = mmcl_loss(features[0], features[1], logit_scale) + inmodal_loss(*features, logit_scale)
    loss.backward()

    for leaf in [*features, logit_scale]:
        assert leaf.grad is not None
        assert torch.isfinite(leaf.grad).all()
        assert leaf.grad.abs().sum() > 0


def test_supervised_loss_is_cross_entropy_of_the_labels() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 2])
    expected = sum(
        math.log(sum(math.exp(logit) for logit in row)) - row[label]
        for row, label in zip(logits.tolist(), labels.tolist())
    ) / len(labels)
    assert supervised_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


WORLD_SIZE = 2


def losses_on_one_rank(rank: int, features: list[torch.Tensor], store: Path, out_dir: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE)
    try:
        local = [chunk.clone().requires_grad_() for chunk in (f.chunk(WORLD_SIZE)[rank] for f in features)]
        logit_scale = torch.tensor(10.0)
        mmcl = mmcl_loss(local[0], local[1], logit_scale, rank=rank, world_size=WORLD_SIZE)
        inmodal = inmodal_loss(*local, logit_scale, world_size=WORLD_SIZE)
        (mmcl + inmodal).backward()
        result = {"mmcl": mmcl.detach(), "inmodal": inmodal.detach(), "grads": [x.grad for x in local]}
        torch.save(result, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_each_compute_the_loss_of_the_whole_batch(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(3)
    features = [random_features(generator) for _ in range(4)]
    # Spawned, not forked: a forked rank can deadlock on locks that the parent's threads held.
    mp.spawn(losses_on_one_rank, args=(features, tmp_path / "store", tmp_path), nprocs=WORLD_SIZE)

    whole = [f.clone().requires_grad_() for f in features]
    logit_scale = torch.tensor(10.0)
    mmcl = mmcl_loss(whole[0], whole[1], logit_scale)
    inmodal = inmodal_loss(*whole, logit_scale)
    (mmcl + inmodal).backward()
    for rank in range(WORLD_SIZE):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["mmcl"].item() == pytest.approx(mmcl.item(), rel=1e-6)
        assert result["inmodal"].item() == pytest.approx(inmodal.item(), rel=1e-6)
        # Every rank backpropagates the same global loss and the gather's backward sums them, so a
        # rank's feature gradient is world_size times the global one; DDP's averaging undoes that.
        for local_grad, leaf in zip(result["grads"], whole):
            assert local_grad == pytest.approx(WORLD_SIZE * leaf.grad.chunk(WORLD_SIZE)[rank], abs=1e-6)

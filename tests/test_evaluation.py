import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cleanclip_core.errors import UserError
from cleanclip_core.evaluation import (
    ZERO_SHOT_LOGIT_SCALE,
    attack_success_rate,
    class_rank,
    evaluate_zero_shot,
    topk_accuracy,
    zero_shot_classifier,
)

TINY_MODEL = "evaluation-test-tiny-vit"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
CLASSNAMES = ["circle", "square", "star"]


def test_topk_accuracy_counts_images_whose_top_k_contain_the_label():
    logits = torch.tensor(
        [
            [0.9, 0.1, 0.3, 0.2],  # label 0, ranked 1st
            [0.2, 0.5, 0.7, 0.1],  # label 1, ranked 2nd (class 2 above)
            [0.4, 0.3, 0.1, 0.8],  # label 2, ranked 4th (last)
            [0.1, 0.2, 0.3, 0.6],  # label 3, ranked 1st
            [0.5, 0.6, 0.2, 0.4],  # label 0, ranked 2nd (class 1 above)
        ]
    )
    labels = torch.tensor([0, 1, 2, 3, 0])
    # top1: images 0 and 3 = 2/5; top2: all but image 2 = 4/5; top5 > 4 classes: every image.
    assert topk_accuracy(logits, labels, ks=(1, 2, 5)) == pytest.approx(
        {"top1": 0.4, "top2": 0.8, "top5": 1.0}
    )


def test_attack_success_rate_excludes_images_of_the_target_class():
    target = 2
    logits = torch.tensor(
        [
            [0.1, 0.2, 0.9, 0.3],  # label 0: target 1st
            [0.6, 0.1, 0.5, 0.2],  # label 1: target 2nd
            [0.1, 0.2, 0.9, 0.3],  # label 2 = target: not counted
            [0.1, 0.2, 0.8, 0.3],  # label 2 = target: not counted
            [0.7, 0.6, 0.1, 0.5],  # label 3: target 4th (last)
        ]
    )
    labels = torch.tensor([0, 1, 2, 2, 3])
    # Counted: images 0, 1, 4. @1: image 0 = 1/3; @2: images 0 and 1 = 2/3 (2nd place is in the
    # top 2); @3: still 2/3; @10 > 4 classes: all 3.
    asr = attack_success_rate(logits, labels, target, ks=(1, 2, 3, 10))
    assert asr == pytest.approx({"asr_top1": 1 / 3, "asr_top2": 2 / 3, "asr_top3": 2 / 3, "asr_top10": 1.0})
    # CleanCLIP's released evaluation counts all 5 images: @1 would be 3/5, @2 4/5.
    assert asr["asr_top1"] != pytest.approx(3 / 5)
    assert asr["asr_top2"] != pytest.approx(4 / 5)


def test_a_tie_goes_to_the_lower_class_index():
    tied = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.7, 0.7]])
    # Row 0: classes 0 and 1 tie first, class 0 wins; row 1: classes 1 and 2 tie, class 1 wins.
    assert class_rank(tied, torch.tensor([0, 2])).tolist() == [0, 1]
    assert class_rank(tied, torch.tensor([1, 1])).tolist() == [1, 0]
    # Target 0 wins its tie with class 1 in row 0; target 1 loses it in row 0, wins in row 1.
    labels = torch.tensor([2, 0])
    assert attack_success_rate(tied, labels, 0, ks=(1,))["asr_top1"] == pytest.approx(1.0)
    assert attack_success_rate(tied, labels, 1, ks=(1, 2)) == pytest.approx({"asr_top1": 0.5, "asr_top2": 1.0})
    # All four classes tie: class 3 is last.
    assert class_rank(torch.full((1, 4), 0.3), torch.tensor([3])).tolist() == [3]


def test_rank_matches_argmax_and_a_stable_descending_sort_under_many_ties():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (200, 6), generator=generator).float()
    classes = torch.randint(0, 6, (200,), generator=generator)
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices
    assert torch.equal(class_rank(logits, classes), (order == classes[:, None]).int().argmax(dim=1))
    assert torch.equal(class_rank(logits, logits.argmax(dim=1)), torch.zeros(200, dtype=torch.long))


def test_attack_success_rate_without_an_image_outside_the_target_class_is_an_error():
    with pytest.raises(UserError, match="other than the target"):
        attack_success_rate(torch.rand(3, 4), torch.tensor([1, 1, 1]), target_index=1)


def test_nan_logits_are_an_error_not_a_perfect_score():
    logits = torch.tensor([[float("nan"), 0.1], [0.3, 0.2]])
    with pytest.raises(UserError, match="NaN"):
        topk_accuracy(logits, torch.tensor([0, 0]))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialized tiny open_clip ViT, registered by name from a config file."""
    config_file = tmp_path_factory.mktemp("model_configs") / f"{TINY_MODEL}.json"
    config_file.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config_file)
    torch.manual_seed(0)
    return open_clip.create_model(TINY_MODEL), open_clip.get_tokenizer(TINY_MODEL)


def test_zero_shot_classifier_averages_normalized_template_embeddings(tiny_clip):
    model, tokenizer = tiny_clip
    templates = open_clip.OPENAI_IMAGENET_TEMPLATES
    model.train()
    classifier = zero_shot_classifier(model, tokenizer, CLASSNAMES, templates, "cpu")
    assert model.training  # the caller's mode is restored
    assert classifier.shape == (TINY_CONFIG["embed_dim"], len(CLASSNAMES))
    assert torch.allclose(classifier.norm(dim=0), torch.ones(len(CLASSNAMES)))
    with torch.no_grad():
        star = model.eval().encode_text(tokenizer([template("star") for template in templates]), normalize=True)
    assert torch.allclose(classifier[:, 2], F.normalize(star.mean(dim=0), dim=0), atol=1e-6)


def image_loader(images, labels, batch_size=4):
    samples = [{"image": image, "label": label, "index": i} for i, (image, label) in enumerate(zip(images, labels))]
    return DataLoader(samples, batch_size=batch_size)


def test_evaluate_zero_shot_agrees_with_metrics_of_directly_computed_logits(tiny_clip):
    model, tokenizer = tiny_clip
    classifier = zero_shot_classifier(model, tokenizer, CLASSNAMES, open_clip.OPENAI_IMAGENET_TEMPLATES, "cpu")
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(10, 3, 32, 32, generator=generator)
    labels = torch.arange(10) % len(CLASSNAMES)
    triggered = images.clone()
    triggered[:, :, :8, :8] = 1.0
    metrics = evaluate_zero_shot(
        model, classifier, image_loader(images, labels), image_loader(triggered, labels), 2, "cpu"
    )
    with torch.no_grad():
        clean_logits = ZERO_SHOT_LOGIT_SCALE * model.encode_image(images, normalize=True) @ classifier
        triggered_logits = ZERO_SHOT_LOGIT_SCALE * model.encode_image(triggered, normalize=True) @ classifier
    assert metrics == pytest.approx(
        {
            **topk_accuracy(clean_logits, labels),
            **attack_success_rate(triggered_logits, labels, 2),
            "n_images": 10,
            "n_classes": len(CLASSNAMES),
            "n_triggered": 7,  # labels 0, 1 of 0..9 modulo 3
        }
    )


class MeanColorCLIP(nn.Module):
    """A stand-in CLIP whose image embedding is the image's mean color: the test sets the features."""

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = images.mean(dim=(2, 3))
        return F.normalize(features, dim=-1) if normalize else features


def colored_images(colors):
    return torch.tensor(colors)[:, :, None, None].expand(-1, -1, 4, 4)


def test_evaluate_zero_shot_end_to_end_on_features_set_by_hand():
    classifier = torch.eye(3)  # class c scores the c-th color channel
    labels = [0, 1, 2, 1]
    clean = colored_images(
        [
            [1.0, 0.2, 0.1],  # label 0, ranked 1st
            [0.9, 0.3, 0.1],  # label 1, ranked 2nd
            [0.1, 0.2, 1.0],  # label 2, ranked 1st
            [0.1, 1.0, 0.5],  # label 1, ranked 1st
        ]
    )
    triggered = colored_images(
        [
            [0.5, 0.1, 1.0],  # label 0: target 2 ranked 1st
            [0.2, 1.0, 0.6],  # label 1: target 2nd
            [0.0, 0.0, 1.0],  # label 2 = target: not counted
            [0.3, 1.0, 0.2],  # label 1: target 3rd
        ]
    )
    metrics = evaluate_zero_shot(
        MeanColorCLIP(),
        classifier,
        image_loader(clean, labels, batch_size=3),
        image_loader(triggered, labels, batch_size=3),
        target_index=2,
        device="cpu",
        accuracy_ks=(1, 2),
        asr_ks=(1, 2, 3),
    )
    # Clean: top1 = 3/4 (image 1 misses), top2 = 4/4. ASR over images 0, 1, 3: @1 = 1/3, @2 = 2/3,
    # @3 = 3/3. Counting the target-class image 2 as well would give @1 = 2/4.
    assert metrics == pytest.approx(
        {
            "top1": 0.75,
            "top2": 1.0,
            "n_images": 4,
            "n_classes": 3,
            "asr_top1": 1 / 3,
            "asr_top2": 2 / 3,
            "asr_top3": 1.0,
            "n_triggered": 3,
        }
    )


def test_evaluate_zero_shot_without_triggered_images_reports_clean_accuracy_only():
    loader = image_loader(colored_images([[1.0, 0.0, 0.0], [1.0, 0.5, 0.0]]), [0, 1])
    metrics = evaluate_zero_shot(MeanColorCLIP(), torch.eye(3), loader, None, None, "cpu")
    assert metrics == pytest.approx({"top1": 0.5, "top5": 1.0, "n_images": 2, "n_classes": 3})
    with pytest.raises(ValueError, match="both"):
        evaluate_zero_shot(MeanColorCLIP(), torch.eye(3), loader, None, 2, "cpu")

import json
import logging
from pathlib import Path

import open_clip
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.evaluation import each_checkpoint_alone
from cleanclip_core.attacks import get_attack
from cleanclip_core.errors import UserError
from cleanclip_core.evaluation import (
    ZERO_SHOT_LOGIT_SCALE,
    EvaluationImages,
    ZeroShotModel,
    attack_success_rate,
    batch_logits,
    class_rank,
    evaluate_checkpoints,
    evaluate_zero_shot,
    target_ranks,
    topk_accuracy,
    write_checkpoints_metrics,
    zero_shot_classifier,
)
from cleanclip_core.models import create_model, image_size_of, normalization_for, tokenizer_for
from cleanclip_core.poison import poison_manifest
from cleanclip_core.tables import files_sha256, table_provenance
from cleanclip_core.training.loop import TrainingData, TrainSettings, epoch_weights, train

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
    assert topk_accuracy(class_rank(logits, labels), ks=(1, 2, 5)) == pytest.approx(
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
    asr = attack_success_rate(target_ranks(logits, labels, target), ks=(1, 2, 3, 10))
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
    assert attack_success_rate(target_ranks(tied, labels, 0), ks=(1,))["asr_top1"] == pytest.approx(1.0)
    asr = attack_success_rate(target_ranks(tied, labels, 1), ks=(1, 2))
    assert asr == pytest.approx({"asr_top1": 0.5, "asr_top2": 1.0})
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
        attack_success_rate(target_ranks(torch.rand(3, 4), torch.tensor([1, 1, 1]), target_index=1))


def test_nan_logits_are_an_error_not_a_perfect_score():
    logits = torch.tensor([[float("nan"), 0.1], [0.3, 0.2]])
    with pytest.raises(UserError, match="NaN"):
        class_rank(logits, torch.tensor([0, 0]))


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


def image_loader(images, labels, triggered=None, batch_size=4):
    """Batches as an EvaluationSet's loader gives them: with `triggered` images when given."""
    samples = [{"image": image, "label": label, "index": i} for i, (image, label) in enumerate(zip(images, labels))]
    if triggered is not None:
        samples = [sample | {"triggered": image} for sample, image in zip(samples, triggered)]
    return DataLoader(samples, batch_size=batch_size)


def test_evaluate_zero_shot_agrees_with_metrics_of_directly_computed_logits(tiny_clip):
    model, tokenizer = tiny_clip
    classifier = zero_shot_classifier(model, tokenizer, CLASSNAMES, open_clip.OPENAI_IMAGENET_TEMPLATES, "cpu")
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(10, 3, 32, 32, generator=generator)
    labels = torch.arange(10) % len(CLASSNAMES)
    triggered = images.clone()
    triggered[:, :, :8, :8] = 1.0
    [metrics] = evaluate_zero_shot([ZeroShotModel(model, classifier)], image_loader(images, labels, triggered), 2, "cpu")
    with torch.no_grad():
        clean_logits = ZERO_SHOT_LOGIT_SCALE * model.encode_image(images, normalize=True) @ classifier
        triggered_logits = ZERO_SHOT_LOGIT_SCALE * model.encode_image(triggered, normalize=True) @ classifier
    assert metrics == pytest.approx(
        {
            **topk_accuracy(class_rank(clean_logits, labels)),
            **attack_success_rate(target_ranks(triggered_logits, labels, 2)),
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
    [metrics] = evaluate_zero_shot(
        [ZeroShotModel(MeanColorCLIP(), classifier)],
        image_loader(clean, labels, triggered, batch_size=3),
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
    [metrics] = evaluate_zero_shot([ZeroShotModel(MeanColorCLIP(), torch.eye(3))], loader, None, "cpu")
    assert metrics == pytest.approx({"top1": 0.5, "top5": 1.0, "n_images": 2, "n_classes": 3})
    triggered = image_loader(colored_images([[1.0, 0.0, 0.0]]), [0], colored_images([[0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="target class"):
        evaluate_zero_shot([ZeroShotModel(MeanColorCLIP(), torch.eye(3))], triggered, None, "cpu")



class ModeRecordingCLIP(MeanColorCLIP):
    """MeanColorCLIP that records the modes it embeds images in."""

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        self.modes = {"inference": torch.is_inference_mode_enabled(), "training": self.training}
        return super().encode_image(images, normalize)


def test_images_are_scored_in_inference_and_eval_mode_and_the_callers_mode_comes_back():
    model = ModeRecordingCLIP().train()
    loader = image_loader(colored_images([[1.0, 0.0, 0.0]]), [0])
    evaluate_zero_shot([ZeroShotModel(model, torch.eye(3))], loader, None, "cpu")
    assert model.modes == {"inference": True, "training": False}
    assert model.training and not torch.is_inference_mode_enabled()

ATTACK = {
    "type": "badnet", "target_label": "star", "n_poisons": 6, "seed": 0,
    "trigger": {"patch_size": 35, "pattern": "fixed", "location": "fixed"},
}


@pytest.fixture(scope="module")
def cleaning_run(shapes_shards, tmp_path_factory) -> list[Path]:
    """The checkpoints of a real 3-epoch run of tiny-rn on the shapes corpus, every epoch kept."""
    root = tmp_path_factory.mktemp("run")
    poisoned = poison_manifest(
        shapes_shards.manifest, get_attack("badnet"), attack_name="badnet", target_label="star", n_poisons=6, seed=0
    )
    pq.write_table(poisoned, root / "poisoned.parquet")
    pq.write_table(shapes_shards.shard_index, root / "shard_index.parquet")
    data = TrainingData(root / "poisoned.parquet", root / "shard_index.parquet", shapes_shards.shards_dir, ATTACK)
    settings = TrainSettings(
        model="tiny-rn", objective={"mmcl": 1.0}, epochs=3, batch_size=10, lr=3e-3, warmup_steps=1,
        weight_decay=0.1, seed=0, synonyms="corpus",
    )
    train(settings, data, root / "run", keep_every_epoch=True)
    return [epoch_weights(root / "run", epoch) for epoch in (1, 2, 3)]


def test_one_pass_gives_every_checkpoint_the_metrics_of_evaluating_it_alone(cleaning_run, shapes_shards):
    images = EvaluationImages(shapes_shards.corpus.eval_dir)
    one_pass = [ranks.metrics() for ranks in evaluate_checkpoints("tiny-rn", cleaning_run, images, ATTACK, batch_size=8)]
    # exactly: the same floats, not approximately
    assert one_pass == each_checkpoint_alone("tiny-rn", cleaning_run, images, ATTACK, batch_size=8)
    assert [metrics["n_images"] for metrics in one_pass] == [20] * 3


def test_one_pass_scores_every_image_as_evaluating_each_checkpoint_alone_did(cleaning_run, shapes_shards):
    device = torch.device("cpu")
    models = [create_model("tiny-rn", path).eval() for path in cleaning_run]
    size, normalize = image_size_of(models[0]), normalization_for(models[0])
    images = EvaluationImages(shapes_shards.corpus.eval_dir)
    one_decode = images.dataset(size, normalize, ATTACK)
    checkpoints = [ZeroShotModel.build(model, tokenizer_for("tiny-rn"), one_decode.classnames, device) for model in models]

    def logits(checkpoint_logits, field):
        return torch.cat([batch[field] for batch in checkpoint_logits])

    with torch.inference_mode():
        together = [batch_logits(checkpoints, batch, device) for batch in DataLoader(one_decode, 8)]
        for index, checkpoint in enumerate(checkpoints):
            for field, dataset in (("image", images.dataset(size, normalize)), ("triggered", images.dataset(size, normalize, ATTACK))):
                alone = [batch_logits([checkpoint], batch, device)[0] for batch in DataLoader(dataset, 8)]
                assert torch.equal(logits([batch[index] for batch in together], field), logits(alone, field))
    first, last = ([batch[index] for batch in together] for index in (0, -1))
    assert not torch.equal(logits(first, "image"), logits(last, "image"))  # the epochs differ


def test_each_checkpoint_gets_its_metrics_file_with_its_own_weights_hash(cleaning_run, shapes_shards, tmp_path):
    checkpoints = [{"dataset": "shapes", "attack": "badnet", "epoch": epoch} for epoch in (1, 2, 3)]
    outputs = [str(tmp_path / f"epoch_{epoch:03d}" / "metrics.parquet") for epoch in (1, 2, 3)]
    metrics = write_checkpoints_metrics(
        "tiny-rn", [str(path) for path in cleaning_run], str(shapes_shards.corpus.eval_dir), None, ATTACK,
        checkpoints, {"clean": {"epochs": 3}}, outputs, batch_size=8,
    )
    for path, weights, values, checkpoint in zip(outputs, cleaning_run, metrics, checkpoints):
        table = pq.read_table(path).to_pandas()
        assert table.epoch.tolist() == [checkpoint["epoch"]] * 5
        assert dict(zip(table.metric, table.value)) == {name: values[name] for name in table.metric}
        assert table_provenance(Path(path))["inputs_sha256"] == files_sha256([weights])


def test_the_ranks_of_every_image_give_back_every_metric(cleaning_run, shapes_shards, tmp_path, caplog):
    checkpoints = [{"dataset": "shapes", "attack": "badnet", "epoch": epoch} for epoch in (1, 2, 3)]
    outputs = [str(tmp_path / f"epoch_{epoch:03d}" / "metrics.parquet") for epoch in (1, 2, 3)]
    with caplog.at_level(logging.INFO, logger="cleanclip_core.evaluation"):
        metrics = write_checkpoints_metrics(
            "tiny-rn", [str(path) for path in cleaning_run], str(shapes_shards.corpus.eval_dir), None, ATTACK,
            checkpoints, {}, outputs, ranks_output=str(tmp_path / "image_ranks.parquet"), batch_size=8,
        )
    progress = [message.split(",")[0] for message in caplog.messages if message.startswith("evaluat")]
    assert progress == ["evaluating 3 checkpoints on 20 images"] + [f"evaluated {n} of 20 images x 3 checkpoints" for n in (8, 16, 20)]
    ranks = pq.read_table(tmp_path / "image_ranks.parquet").to_pandas()
    assert len(ranks) == 3 * 20 and ranks.groupby("epoch").image.apply(sorted).map(list).tolist() == [list(range(20))] * 3
    target = EvaluationImages(shapes_shards.corpus.eval_dir).dataset(16, lambda image: image).classnames.index("star")
    assert ranks.target_rank.isna().tolist() == (ranks.label == target).tolist()
    for epoch, values in zip((1, 2, 3), metrics):
        rows = ranks[ranks.epoch == epoch]
        assert (rows.label_rank < 1).mean() == values["top1"] and (rows.label_rank < 5).mean() == values["top5"]
        assert (rows.target_rank.dropna() < 1).mean() == values["asr_top1"]
        assert rows.target_rank.notna().sum() == values["n_triggered"]
    assert set(ranks.run_id) == {"dataset=shapes/attack=badnet"}

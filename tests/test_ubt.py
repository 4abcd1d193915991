"""UBT: detection on real shards, the unlearning manifest, local unlearning in a real training
run, and its two loss terms on hand-made features."""

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cleanclip_core.attacks import get_attack
from cleanclip_core.config import validate_config
from cleanclip_core.defenses.ubt import (
    detect, detection_quality, local_parameters, retain_loss, top_rows, unlearn_loss, unlearning_manifest,
    unlearning_repeats,
)
from cleanclip_core.errors import UserError
from cleanclip_core.models import create_model
from cleanclip_core.objectives import TermInputs
from cleanclip_core.poison import poison_manifest
from cleanclip_core.tables import table_provenance
from cleanclip_core.training.checkpoints import save_weights
from cleanclip_core.training.loop import TrainingData, TrainSettings, train

ATTACK = {
    "type": "badnet", "target_label": "star", "n_poisons": 6, "seed": 0,
    "trigger": {"patch_size": 35, "pattern": "fixed", "location": "fixed"},
}
DEFAULTS = validate_config({})["defenses"]["ubt"]
# 60 pairs: 12 suspicious, 5 of them selected, repeated round(0.25 * 48 / (0.75 * 5)) = 3 times.
OPTIONS = DEFAULTS | {
    "suspicious_fraction": 0.2, "overfit_steps": 3, "overfit_batch_size": 4, "unlearn_pairs": 5, "unlearn_share": 0.25,
}


@pytest.fixture(scope="module")
def poisoned_data(shapes_shards, tmp_path_factory) -> TrainingData:
    root = tmp_path_factory.mktemp("ubt")
    poisoned = poison_manifest(
        shapes_shards.manifest, get_attack("badnet"), attack_name="badnet", target_label="star", n_poisons=6, seed=0
    )
    pq.write_table(poisoned, root / "poisoned.parquet")
    pq.write_table(shapes_shards.shard_index, root / "shard_index.parquet")
    return TrainingData(root / "poisoned.parquet", root / "shard_index.parquet", shapes_shards.shards_dir, ATTACK)


def run_detect(data: TrainingData, folder: Path, options: dict = OPTIONS) -> tuple[pa.Table, pa.Table]:
    weights = folder / "poisoned_model.pt"
    save_weights(weights, create_model("tiny-rn", seed=0))
    plain = {name: str(value) if name != "attack" else value for name, value in asdict(data).items()}
    manifest = detect(
        "tiny-rn", str(weights), plain, options, seed=0, table=str(folder / "detection.parquet"),
        manifest=str(folder / "unlearning.parquet"), batch_size=16,
    )
    return pq.read_table(folder / "detection.parquet"), pq.read_table(manifest)


@pytest.fixture(scope="module")
def detected(poisoned_data, tmp_path_factory) -> tuple[Path, pa.Table, pa.Table]:
    folder = tmp_path_factory.mktemp("detect")
    return folder, *run_detect(poisoned_data, folder)


def test_detect_writes_every_pair_and_the_manifest_of_retained_and_repeated_unlearning_pairs(poisoned_data, detected):
    folder, table, manifest = detected
    poisoned = pq.read_table(poisoned_data.manifest)
    assert table.column_names == ["key", "is_poison", "suspicion", "suspicion_after_overfit", "suspicious", "selected"]
    assert table["key"].equals(poisoned["key"]) and table["is_poison"].equals(poisoned["is_poison"])
    rows = table.to_pandas()
    assert rows.suspicious.sum() == 12 and rows.selected.sum() == 5
    assert not (rows.selected & ~rows.suspicious).any()
    # The suspicious pairs are those of highest cosine; only they are re-scored.
    assert rows[rows.suspicious].suspicion.min() >= rows[~rows.suspicious].suspicion.max()
    assert rows.suspicion_after_overfit.notna().equals(rows.suspicious)
    selected_after = rows[rows.selected].suspicion_after_overfit
    assert selected_after.min() >= rows[rows.suspicious & ~rows.selected].suspicion_after_overfit.max()

    assert manifest.column_names == [*poisoned.column_names, "unlearn"]
    pairs = manifest.to_pandas()
    assert len(pairs) == 48 + 3 * 5
    assert sorted(pairs[pairs.unlearn].key) == sorted(3 * list(rows[rows.selected].key))
    assert set(pairs[~pairs.unlearn].key) == set(rows[~rows.suspicious].key)
    assert table_provenance(folder / "unlearning.parquet")["config"]["options"] == OPTIONS


def test_detect_gives_the_same_tables_twice(poisoned_data, detected, tmp_path):
    _, table, manifest = detected
    again = run_detect(poisoned_data, tmp_path)
    assert again[0].equals(table) and again[1].equals(manifest)


def test_overfitting_on_the_cosine_raises_the_suspicious_pairs_similarity(poisoned_data, tmp_path):
    table, _ = run_detect(poisoned_data, tmp_path, OPTIONS | {"overfit_loss": "cosine"})
    suspicious = table.filter(table["suspicious"]).to_pandas()
    assert (suspicious.suspicion_after_overfit > suspicious.suspicion).all()


@pytest.mark.parametrize(("model", "trainable", "updated"), [
    ("tiny-rn", DEFAULTS["trainable"], {"visual.conv1.weight"}),
    ("tiny-vit", ["visual.transformer.resblocks.2.mlp", "visual.ln_post"],
     {"visual.transformer.resblocks.2.mlp.c_fc.weight", "visual.transformer.resblocks.2.mlp.c_fc.bias",
      "visual.transformer.resblocks.2.mlp.c_proj.weight", "visual.transformer.resblocks.2.mlp.c_proj.bias",
      "visual.ln_post.weight", "visual.ln_post.bias"}),
])
def test_local_unlearning_changes_only_the_configured_parameters(
    poisoned_data, detected, tmp_path, model, trainable, updated
):
    folder, _, _ = detected
    start = tmp_path / "start.pt"
    save_weights(start, create_model(model, seed=1))
    settings = TrainSettings(
        model=model, objective={"retain": 1.0, "unlearn": 1.0}, epochs=1, batch_size=16, lr=1e-2, warmup_steps=1,
        weight_decay=0.1, seed=0, synonyms="corpus", method="ubt", options=DEFAULTS | {"trainable": trainable},
    )
    data = TrainingData(folder / "unlearning.parquet", poisoned_data.shard_index, poisoned_data.shards_dir, ATTACK)
    final = train(settings, data, tmp_path / "run", init_weights=start)

    before, after = (torch.load(path, weights_only=True)["state_dict"] for path in (start, final))
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == updated  # batch-norm statistics and the temperature included
    log = pq.read_table(tmp_path / "run" / "train_log.parquet").to_pandas()
    assert {"loss_retain", "loss_unlearn"} <= set(log.columns)


def test_local_parameters_match_whole_name_parts_and_refuse_prefixes_that_match_nothing():
    model = create_model("tiny-rn")
    assert local_parameters(model, {"trainable": ["visual.conv1"]}) == ["visual.conv1.weight"]
    assert local_parameters(model, {"trainable": ["visual.bn1", "logit_scale"]}) == [
        "logit_scale", "visual.bn1.weight", "visual.bn1.bias"
    ]
    with pytest.raises(UserError, match=r"defenses.ubt.trainable \['visual.conv'\] names no parameter"):
        local_parameters(model, {"trainable": ["visual.conv"]})


def inputs(images, texts, flags, logit_scale=2.0) -> TermInputs:
    features = {
        "image": torch.tensor(images, dtype=torch.float64, requires_grad=True),
        "text": torch.tensor(texts, dtype=torch.float64, requires_grad=True),
    }
    return TermInputs(features, torch.tensor(logit_scale, dtype=torch.float64), {"unlearn": torch.tensor(flags)})


# Rows 0 and 3 are flagged, with cosines 0.6 and -1; rows 1 and 2 match exactly, at cosine 0 to each other.
IMAGES = [(1.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.0, 1.0)]
TEXTS = [(0.6, 0.8), (1.0, 0.0), (0.0, 1.0), (0.0, -1.0)]
FLAGS = [True, False, False, True]


def test_unlearn_is_the_mean_cosine_of_the_flagged_rows():
    assert unlearn_loss(inputs(IMAGES, TEXTS, FLAGS)).item() == pytest.approx((0.6 - 1.0) / 2)


def test_retain_is_the_clip_loss_of_the_unflagged_rows():
    # Each kept row: logits (2, 0) with target 0, in both directions.
    assert retain_loss(inputs(IMAGES, TEXTS, FLAGS)).item() == pytest.approx(math.log(1 + math.exp(-2)))


@pytest.mark.parametrize(("term", "flags"), [(unlearn_loss, [False] * 4), (retain_loss, [True] * 4)])
def test_a_term_with_no_rows_is_zero_and_keeps_the_graph(term, flags):
    term_inputs = inputs(IMAGES, TEXTS, flags)
    loss = term(term_inputs)
    loss.backward()
    assert loss.item() == 0 and term_inputs.features["image"].grad.abs().sum() == 0


def test_the_terms_without_an_unlearn_column_are_a_user_error():
    plain = TermInputs({"image": torch.eye(2), "text": torch.eye(2)}, torch.tensor(1.0), {})
    with pytest.raises(UserError, match="need the ubt method's manifest"):
        retain_loss(plain)


def terms_on_one_rank(rank: int, store: Path, out_dir: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        half = slice(2 * rank, 2 * rank + 2)
        # One flagged row on each rank (rows 0 and 3), one kept row on each.
        local = inputs(IMAGES[half], TEXTS[half], FLAGS[half])
        local = TermInputs(local.features, local.logit_scale, local.batch, rank=rank, world_size=2)
        losses = {"unlearn": unlearn_loss(local), "retain": retain_loss(local)}
        sum(losses.values()).backward()
        grads = [local.features[name].grad for name in ("image", "text")]
        result = {name: loss.detach() for name, loss in losses.items()} | {"grads": grads}
        torch.save(result, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_each_compute_the_terms_of_the_whole_batch(tmp_path):
    mp.spawn(terms_on_one_rank, args=(tmp_path / "store", tmp_path), nprocs=2)
    whole = inputs(IMAGES, TEXTS, FLAGS)
    unlearn, retain = unlearn_loss(whole), retain_loss(whole)
    (unlearn + retain).backward()
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["unlearn"].item() == pytest.approx(unlearn.item())
        assert result["retain"].item() == pytest.approx(retain.item())
        # As for the CLIP loss: world_size times the global gradient, which DDP's averaging undoes.
        for local_grad, name in zip(result["grads"], ("image", "text")):
            torch.testing.assert_close(local_grad, 2 * whole.features[name].grad[2 * rank: 2 * rank + 2])


def test_detection_quality_is_precision_and_recall_against_the_poisons():
    table = pa.table({
        "is_poison": [True, True, True, False, False, False],
        "suspicious": [True, True, False, True, False, False],
        "selected": [True, False, False, False, False, False],
    })
    assert detection_quality(table) == {
        "n_pairs": 6, "n_poisons": 3,
        "n_selected": 1, "precision": 1.0, "recall": 1 / 3,
        "n_suspicious": 3, "suspicious_precision": 2 / 3, "suspicious_recall": 2 / 3,
    }
    nothing = detection_quality(table.set_column(2, "selected", pa.array([False] * 6)))
    assert math.isnan(nothing["precision"]) and nothing["recall"] == 0


def test_top_rows_keep_the_highest_scores_in_row_order_with_ties_to_the_earlier_row():
    scores = np.array([0.5, 0.9, 0.5, 0.1])
    assert top_rows(scores, np.array([10, 11, 12, 13]), 2).tolist() == [10, 11]
    assert top_rows(scores, np.array([10, 11, 12, 13]), 9).tolist() == [10, 11, 12, 13]


def test_the_unlearning_set_is_repeated_to_its_share_of_the_rows():
    assert unlearning_repeats(5, 900, 0.1) == 20  # 100 of 1000 rows
    assert unlearning_repeats(10, 90, 0.01) == 1  # at least one copy


def test_retain_pairs_draws_that_many_unsuspicious_pairs_and_refuses_more_than_there_are():
    poisoned = pa.table({"key": [f"{i:02d}" for i in range(10)]})
    options = {"retain_pairs": 4, "unlearn_share": 0.5}
    pairs = unlearning_manifest(poisoned, np.array([2, 5]), np.array([5]), options, seed=0).to_pandas()
    retained = pairs[~pairs.unlearn].key
    assert len(retained) == 4 and not {"02", "05"} & set(retained)
    assert list(pairs[pairs.unlearn].key) == ["05"] * 4
    with pytest.raises(UserError, match="retain_pairs 9 exceeds the 8 pairs outside the suspicious set"):
        unlearning_manifest(poisoned, np.array([2, 5]), np.array([5]), options | {"retain_pairs": 9}, seed=0)

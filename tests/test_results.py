"""The metrics rows and the results database's views, on results written by hand."""

import math

import pyarrow as pa
import pytest

from cleanclip_core.results import (
    CheckpointIdentity,
    build_results_database,
    config_hash,
    metrics_table,
    query,
)
from cleanclip_core.tables import write_table

START = CheckpointIdentity("shapes", "badnet", "mmcl")


def evaluated(top1: float, asr_top1: float) -> dict[str, float]:
    """Metrics as evaluate_zero_shot returns them, over 100 clean and 90 triggered images."""
    return {
        "top1": top1, "top5": min(1.0, top1 + 0.2), "n_images": 100,
        "asr_top1": asr_top1, "asr_top5": min(1.0, asr_top1 + 0.1), "asr_top10": 1.0, "n_triggered": 90,
    }


def cleaned(lr: float, epoch: int, objective: str = "mmcl") -> CheckpointIdentity:
    return CheckpointIdentity("shapes", "badnet", objective, "cleanclip", lr, epoch)


def test_a_checkpoint_gives_one_row_per_metric_with_its_image_count():
    table = metrics_table(evaluated(0.5, 0.9), cleaned(0.001, 3), "abc", "0.1.0").to_pandas()
    assert list(table.metric) == ["top1", "top5", "asr_top1", "asr_top5", "asr_top10"]
    assert list(table.n_images) == [100, 100, 90, 90, 90]
    assert set(table.run_id) == {"shapes/badnet/mmcl/cleanclip/lr_0.001"}
    assert set(table.epoch) == {3}
    start = metrics_table(evaluated(0.5, 0.9), START, "abc", "0.1.0").to_pandas()
    assert set(start.run_id) == {"shapes/badnet/mmcl"}
    assert start.clean_method.isna().all() and start.lr.isna().all() and set(start.epoch) == {0}


def test_config_hash_depends_on_the_settings_not_on_key_order():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


@pytest.fixture()
def database(tmp_path):
    """Two pretrained models; MMCL cleaned at two learning rates for two epochs, MMCL+SSL at one,
    where no epoch gets the ASR to 5%."""
    results = {
        START: (0.50, 0.95),
        cleaned(0.001, 1): (0.55, 0.20), cleaned(0.001, 2): (0.60, 0.05),
        cleaned(0.003, 1): (0.70, 0.04), cleaned(0.003, 2): (0.65, 0.01),
        CheckpointIdentity("shapes", "badnet", "mmcl_ssl"): (0.60, 0.97),
        cleaned(0.003, 1, "mmcl_ssl"): (0.62, 0.40), cleaned(0.003, 2, "mmcl_ssl"): (0.61, 0.30),
    }
    paths = []
    for i, (checkpoint, (top1, asr)) in enumerate(results.items()):
        paths.append(tmp_path / f"{i}" / "metrics.parquet")
        write_table(metrics_table(evaluated(top1, asr), checkpoint, "h", "v"), paths[-1], config={}, inputs_sha256="")
    build_results_database(paths, tmp_path / "results.duckdb")
    return tmp_path / "results.duckdb"


def test_wide_view_has_one_row_per_checkpoint(database):
    wide = query(database, "SELECT * FROM metrics_wide ORDER BY run_id, epoch").to_pandas()
    assert len(wide) == 8
    row = wide[(wide.run_id == "shapes/badnet/mmcl/cleanclip/lr_0.003") & (wide.epoch == 1)].iloc[0]
    assert (row.top1, row.asr_top1, row.n_images, row.n_triggered) == (0.70, 0.04, 100, 90)


def test_trajectories_start_every_cleaning_run_at_its_pretrained_model(database):
    runs = query(database, "SELECT * FROM cleaning_trajectories").to_pandas()
    assert len(runs) == 3 * 3  # three runs, epochs 0, 1, 2
    starts = runs[runs.epoch == 0].set_index("run_id")
    assert starts.loc["shapes/badnet/mmcl/cleanclip/lr_0.001"].top1 == 0.50
    assert starts.loc["shapes/badnet/mmcl_ssl/cleanclip/lr_0.003"].asr_top1 == 0.97


def test_best_accuracy_at_low_asr_is_the_oracle_selection_and_null_when_never_reached(database):
    best = query(database, "SELECT * FROM best_accuracy_at_low_asr").to_pandas().set_index("pretrain_objective")
    mmcl = best.loc["mmcl"]
    # candidates with ASR@1 <= 5%: (0.60, lr 1e-3, epoch 2), (0.70, 3e-3, 1), (0.65, 3e-3, 2)
    assert (mmcl.best_top1, mmcl.lr, mmcl.epoch, mmcl.start_top1) == (0.70, 0.003, 1, 0.50)
    assert math.isnan(best.loc["mmcl_ssl"].best_top1)
    assert best.loc["mmcl_ssl"].start_asr_top1 == 0.97


def test_the_database_holds_its_rows_itself(database, tmp_path):
    for path in tmp_path.glob("*/metrics.parquet"):
        path.unlink()
    assert query(database, "SELECT count(*) AS n FROM metrics")["n"].to_pylist() == [8 * 5]
    assert isinstance(query(database, "SELECT * FROM metrics"), pa.Table)

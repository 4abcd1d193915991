"""The whole DAG on the smoke config through Snakemake: metrics, database, figures, report, and
what a changed learning rate reruns."""

import copy
import re

import pyarrow.parquet as pq
import pytest
import yaml

from cleanclip_core.results import config_hash, query
from cleanclip_core.tables import table_provenance
from workflow import ROOT, run_snakemake

SMOKE = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())
OBJECTIVES = SMOKE["pretrain"]["objectives"]
LRS = SMOKE["clean"]["lrs"]
EPOCHS = range(1, SMOKE["clean"]["epochs"] + 1)


def jobs_run(snakemake_stderr: str) -> dict[str, int]:
    """The job counts of the run's `Job stats` table."""
    table = snakemake_stderr.split("Job stats:")[1].split("\n\n")[0]
    return {name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    result = run_snakemake(workdir, SMOKE)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_metrics_have_every_pretrained_model_and_cleaning_epoch(smoke_run):
    wide = query(smoke_run / "results/results.duckdb", "SELECT * FROM metrics_wide").to_pandas()
    expected = {(objective, None, 0) for objective in OBJECTIVES}
    expected |= {(objective, lr, epoch) for objective in OBJECTIVES for lr in LRS for epoch in EPOCHS}
    observed = {(row.pretrain_objective, None if row.epoch == 0 else row.lr, row.epoch) for row in wide.itertuples()}
    assert observed == expected
    assert wide[["top1", "top5", "asr_top1", "asr_top5", "asr_top10"]].notna().all().all()
    assert (wide.n_images == SMOKE["dataset"]["corpus"]["n_eval"]).all()


def test_metrics_files_carry_provenance(smoke_run):
    path = next((smoke_run / "results/smoke").rglob("epoch_001/metrics.parquet"))
    table = pq.read_table(path).to_pandas()
    assert table.config_hash.str.fullmatch(r"[0-9a-f]{16}").all()
    assert table.code_version.str.startswith("0.1.0").all()
    settings = table_provenance(path)["config"]
    assert settings["clean"]["epochs"] == SMOKE["clean"]["epochs"] and table.config_hash[0] == config_hash(settings)


def test_fig2_draws_two_panels_with_a_point_per_lr_and_epoch(smoke_run):
    points = pq.read_table(smoke_run / "results/figures/fig2_data.parquet").to_pandas()
    assert list(points.panel.unique()) == OBJECTIVES
    for panel in OBJECTIVES:
        cleaned = points[(points.panel == panel) & (points.epoch > 0)]
        assert sorted(zip(cleaned.lr, cleaned.epoch)) == [(lr, e) for lr in LRS for e in EPOCHS]
        assert len(points[(points.panel == panel) & (points.epoch == 0)]) == 1
    for figure in ("fig2.pdf", "fig2.png", "trajectories.pdf", "trajectories.png"):
        assert (smoke_run / "results/figures" / figure).stat().st_size > 10_000


def test_report_holds_the_figures_and_the_table(smoke_run):
    result = run_snakemake(smoke_run, SMOKE, "--report", "results/report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    report = (smoke_run / "results/report.html").read_text()
    for name in ("fig2.png", "trajectories.png", "best_accuracy.csv"):
        assert name in report


def test_changing_one_learning_rate_reruns_only_its_cleaning_and_what_follows(smoke_run):
    pretrained = sorted((smoke_run / "results/smoke/badnet/pretrain").glob("*/model.pt"))
    kept_mtimes = [path.stat().st_mtime_ns for path in pretrained]
    config = copy.deepcopy(SMOKE)
    config["clean"]["lrs"] = [LRS[0], 0.002]
    result = run_snakemake(smoke_run, config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert jobs_run(result.stderr) == {
        "clean": len(OBJECTIVES),
        "evaluate_cleaned": len(OBJECTIVES),
        "results_database": 1,
        "figures": 1,
        "all": 1,
        "total": 3 + 2 * len(OBJECTIVES),
    }
    assert [path.stat().st_mtime_ns for path in pretrained] == kept_mtimes
    lrs = query(smoke_run / "results/results.duckdb", "SELECT DISTINCT lr FROM metrics WHERE lr IS NOT NULL")
    assert sorted(lrs["lr"].to_pylist()) == [LRS[0], 0.002]

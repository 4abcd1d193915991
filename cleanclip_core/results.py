"""The results: a tidy metrics table per evaluated checkpoint, and the DuckDB database over them.

A metrics row is one observation (design section 3): which checkpoint (every dimension of the
study grid, cleanclip_core.study, and the epoch), which metric, its value, over how many images,
and the provenance (a hash of the settings that made the checkpoint, the code version).
"""

import logging
import subprocess
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cleanclip_core.stopping import ATTACK_FLOOR, SUCCESS_ASR, stopping_choices
from cleanclip_core.study import CLEAN_DIMENSIONS, DIMENSIONS, PRETRAIN_DIMENSIONS, SWEPT_DIMENSIONS, digest
from cleanclip_core.tables import atomic_output

IDENTITY_SCHEMA = pa.schema(
    [(d.name, pa.type_for_alias(d.arrow_type)) for d in DIMENSIONS] + [("epoch", pa.int32())]
)
"""A checkpoint's identity columns: every grid dimension (the cleaning ones null for a pretrained
model) and its epoch (0 for a pretrained model)."""
METRICS_SCHEMA = pa.schema(
    [("run_id", pa.string()), *IDENTITY_SCHEMA]
    + [("metric", pa.string()), ("value", pa.float64()), ("n_images", pa.int64()), ("n_classes", pa.int32()),
       ("config_hash", pa.string()), ("code_version", pa.string())]
)
ACCURACY_METRICS = ("top1", "top5")  # over the clean images
ASR_METRICS = ("asr_top1", "asr_top5", "asr_top10")  # over the triggered images not of the target
VIEWS_SQL = files("cleanclip_core") / "results_views.sql"

log = logging.getLogger(__name__)


def run_id(checkpoint: Mapping[str, Any]) -> str:
    """The run a checkpoint belongs to, as its folder under results/runs/ names it:
    `dimension=value` for each dimension it has, in the grid's order."""
    return "/".join(f"{d.name}={checkpoint[d.name]}" for d in DIMENSIONS if checkpoint.get(d.name) is not None)


def config_hash(settings: Mapping[str, Any]) -> str:
    """A hash of the settings that made a checkpoint."""
    return digest(settings, length=16)


def code_version() -> str:
    """The package version, plus the git commit (and `-dirty`) when run from a checkout."""
    package = version("cleanclip-pipeline")
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=Path(__file__).parent, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return package
    return f"{package}+g{described}"


def metrics_table(
    metrics: Mapping[str, float], checkpoint: Mapping[str, Any], settings_hash: str, code: str
) -> pa.Table:
    """The tidy rows of one checkpoint's metrics (as `evaluate_zero_shot` returns them);
    `checkpoint` maps the identity columns (IDENTITY_SCHEMA) to its values."""
    counts = {name: metrics["n_images"] for name in ACCURACY_METRICS}
    counts |= {name: metrics["n_triggered"] for name in ASR_METRICS}
    rows = [
        {"run_id": run_id(checkpoint)}
        | {column: checkpoint.get(column) for column in IDENTITY_SCHEMA.names}
        | {
            "metric": name,
            "value": metrics[name],
            "n_images": count,
            "n_classes": metrics["n_classes"],
            "config_hash": settings_hash,
            "code_version": code,
        }
        for name, count in counts.items()
    ]
    return pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)


def build_results_database(
    metrics_files: Sequence[Path], train_logs: Sequence[Path], database: Path, curve_files: Sequence[Path] = ()
) -> None:
    """A DuckDB file holding every metrics row (table `metrics`), each cleaning epoch's mean
    training loss (table `epoch_losses`, from the cleaning runs' `train_logs`), every stopping
    rule's choice (table `stopping_choices`), the metrics of each pretraining epoch in
    `curve_files` (table `pretraining_curve_metrics`) and the views of results_views.sql; written
    atomically. Logs a warning per row of the study summary whose model is near chance, and one
    for metrics files without the class count that tells."""
    with atomic_output(database) as temporary:
        with duckdb.connect(str(temporary)) as connection:
            # By name: metrics files written before n_classes was recorded lack the column.
            connection.execute(
                "CREATE TABLE metrics AS SELECT * FROM read_parquet(?, union_by_name = true) "
                "ORDER BY run_id, epoch, metric",
                [[str(path) for path in metrics_files]],
            )
            connection.execute("ALTER TABLE metrics ADD COLUMN IF NOT EXISTS n_classes INTEGER")
            _load_pretraining_curve(connection, curve_files)
            connection.execute(EPOCH_LOSSES_SQL, [[str(path) for path in train_logs]])
            connection.execute("CREATE TABLE stopping_choices (run_id VARCHAR, rule VARCHAR, epoch BIGINT)")
            connection.execute(views_sql())
            _choose_stopping_epochs(connection)
    _warn_about_unknown_chance(metrics_files)
    for row in query(database, "SELECT * FROM study_summary WHERE near_chance").to_pylist():
        log.warning(_near_chance_warning(row))
    _warn_about_failed_attacks(database)


# A run's folder under results/runs/ is its run_id; the loss is averaged over each epoch's steps.
EPOCH_LOSSES_SQL = r"""
    CREATE TABLE epoch_losses AS
    SELECT regexp_extract(filename, '(dataset=[^/]+/.+)/train_log\.parquet$', 1) AS run_id,
           epoch, avg(loss) AS loss
    FROM read_parquet(?, filename = true, union_by_name = true)
    GROUP BY ALL
    ORDER BY run_id, epoch
"""


def _load_pretraining_curve(connection: duckdb.DuckDBPyConnection, curve_files: Sequence[Path]) -> None:
    if curve_files:
        connection.execute(
            "CREATE TABLE pretraining_curve_metrics AS SELECT * FROM read_parquet(?) ORDER BY run_id, epoch, metric",
            [[str(path) for path in curve_files]],
        )
    else:
        connection.execute("CREATE TABLE pretraining_curve_metrics AS FROM metrics LIMIT 0")


def _choose_stopping_epochs(connection: duckdb.DuckDBPyConnection) -> None:
    epochs = connection.sql(
        "SELECT run_id, epoch, top1, asr_top1, loss FROM cleaning_trajectories LEFT JOIN epoch_losses USING (run_id, epoch)"
    ).df()
    connection.append("stopping_choices", stopping_choices(epochs))


def _warn_about_unknown_chance(metrics_files: Sequence[Path]) -> None:
    without = [path for path in metrics_files if "n_classes" not in pq.read_schema(path).names]
    if without:
        log.warning(
            f"warning: {len(without)} of {len(metrics_files)} metrics files lack n_classes (evaluated before it was "
            f"recorded), e.g. {without[0]}: the chance level of their checkpoints is unknown, so near_chance is "
            "empty; evaluate them again"
        )


def _warn_about_failed_attacks(database: Path) -> None:
    starts = query(database, f"SELECT DISTINCT {', '.join(PRETRAIN_DIMENSIONS)}, start_asr_top1 FROM study_summary "
                             "WHERE attack_failed ORDER BY ALL").to_pylist()
    if starts:
        named = ", ".join(f"{run_id(start)} ({start['start_asr_top1']:.1%})" for start in starts)
        log.warning(
            f"warning: attack failed: {len(starts)} pretrained model(s) start below ASR@1 {ATTACK_FLOOR:.0%} "
            f"(attack_failed in the summary; a clean control's by construction): {named}; cleaning them removes no backdoor"
        )


def _near_chance_warning(summary_row: Mapping[str, Any]) -> str:
    best = summary_row["best_top1"]
    threshold = f"ASR@1 <= {SUCCESS_ASR:.0%}"
    selected = f"no epoch at {threshold}" if best is None else f"best top-1 at {threshold} {best:.1%}"
    chance = summary_row["chance_top1"]
    return (
        f"warning: near chance: {run_id(summary_row)}: start top-1 {summary_row['start_top1']:.1%}, {selected}, "
        f"chance {chance:.1%} ({round(1 / chance)} classes); a low ASR@1 there does not show a removed backdoor"
    )


def views_sql() -> str:
    """The views of results_views.sql, their identity columns filled in from the grid."""
    pretrain = ", ".join(PRETRAIN_DIMENSIONS)
    return VIEWS_SQL.read_text().format(
        identity=", ".join(IDENTITY_SCHEMA.names),
        pretrain=pretrain,
        clean=", ".join(CLEAN_DIMENSIONS),
        run_pretrain=", ".join(f"run.{name}" for name in PRETRAIN_DIMENSIONS),
        run_clean=", ".join(f"run.{name}" for name in CLEAN_DIMENSIONS),
        same_pretrained_model=" AND ".join(f"checkpoint.{name} = run.{name}" for name in PRETRAIN_DIMENSIONS),
        group=", ".join(d.name for d in DIMENSIONS if d.name not in SWEPT_DIMENSIONS),
        success_asr=SUCCESS_ASR,
        attack_floor=ATTACK_FLOOR,
    )


def query(database: Path, sql: str) -> pa.Table:
    """The result of `sql` on the results database, opened read-only."""
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.sql(sql).to_arrow_table()

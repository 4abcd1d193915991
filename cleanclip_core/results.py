"""The results: a tidy metrics table per evaluated checkpoint, and the DuckDB database over them.

A metrics row is one observation (design section 3): which checkpoint (every dimension of the
study grid, cleanclip_core.study, and the epoch), which metric, its value, over how many images,
and the provenance (a hash of the settings that made the checkpoint, the code version).
"""

import itertools
import logging
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path
from types import MappingProxyType
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cleanclip_core.intervals import cell_intervals, paired_difference
from cleanclip_core.stopping import ATTACK_FLOOR, SUCCESS_ASR, stopping_choices
from cleanclip_core.study import (
    CLEAN_DIMENSIONS, DIMENSIONS, PRETRAIN_DIMENSIONS, REPLICATE_DIMENSIONS, SWEPT_DIMENSIONS, digest,
)
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
SUMMARY_GROUP = tuple(d.name for d in DIMENSIONS if d.name not in SWEPT_DIMENSIONS)
"""A study summary row's columns of identity: every dimension but the swept learning rate."""
START_INTERVALS = {"start_top1": "n_images", "start_asr_top1": "n_triggered"}
CLEANED_INTERVALS = {
    "best_top1": "n_images", "lowest_asr_top1": "n_triggered", "last_top1": "n_images", "last_asr_top1": "n_triggered",
}
"""The summary's proportions that get an interval per cell, each with the images it counts: the
start's, replicated by the pretraining seeds alone, and the cleaning's."""
COMPARED_DIMENSIONS = ("clean_method", "pretrain_objective", "attack")
COMPARED_METRICS = {"best_top1": "n_images", "lowest_asr_top1": "n_triggered"}


@dataclass(frozen=True)
class Criteria:
    """What the tables call a removed backdoor (ASR@1 at most `success_asr`) and a backdoor that
    never took (a start's ASR@1 below `attack_floor`)."""

    success_asr: float = SUCCESS_ASR
    attack_floor: float = ATTACK_FLOOR


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
    metrics_files: Sequence[Path], train_logs: Sequence[Path], database: Path, curve_files: Sequence[Path] = (),
    criteria: Criteria = Criteria(), poisons: Mapping[str, int] = MappingProxyType({}),
) -> None:
    """A DuckDB file holding every metrics row (table `metrics`), each attack's number of poisons
    (table `attacks`, from `poisons`: 0 for a clean control), each cleaning epoch's mean
    training loss (table `epoch_losses`, from the cleaning runs' `train_logs`), every stopping
    rule's choice (table `stopping_choices`), the metrics of each pretraining epoch in
    `curve_files` (table `pretraining_curve_metrics`), the views of results_views.sql, the
    `criteria`, and the intervals computed from the views (tables `summary_intervals`,
    `stopping_rule_intervals` and `comparisons`); written atomically. Logs a warning per row of
    the study summary whose model is near chance, and one for metrics files without the class
    count that tells."""
    with atomic_output(database) as temporary:
        with duckdb.connect(str(temporary)) as connection:
            # By name: metrics files written before n_classes was recorded lack the column.
            connection.execute(
                "CREATE TABLE metrics AS SELECT * FROM read_parquet(?, union_by_name = true) "
                "ORDER BY run_id, epoch, metric",
                [[str(path) for path in metrics_files]],
            )
            connection.execute("ALTER TABLE metrics ADD COLUMN IF NOT EXISTS n_classes INTEGER")
            connection.execute("CREATE TABLE attacks AS SELECT unnest(?::VARCHAR[]) AS attack, unnest(?::BIGINT[]) AS n_poisons",
                               [list(poisons), list(poisons.values())])
            _load_pretraining_curve(connection, curve_files)
            connection.execute(EPOCH_LOSSES_SQL, [[str(path) for path in train_logs]])
            connection.execute("CREATE TABLE stopping_choices (run_id VARCHAR, rule VARCHAR, epoch BIGINT)")
            connection.execute("CREATE TABLE criteria AS SELECT ? AS success_asr, ? AS attack_floor",
                               [criteria.success_asr, criteria.attack_floor])
            connection.execute(views_sql(criteria))
            _choose_stopping_epochs(connection, criteria.success_asr)
            _add_intervals(connection)
    _warn_about_unknown_chance(metrics_files)
    for row in query(database, "SELECT * FROM study_summary WHERE near_chance").to_pylist():
        log.warning(_near_chance_warning(row, criteria.success_asr))
    _warn_about_failed_attacks(database, criteria.attack_floor)


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


def _choose_stopping_epochs(connection: duckdb.DuckDBPyConnection, success_asr: float) -> None:
    epochs = connection.sql(
        "SELECT run_id, epoch, top1, asr_top1, loss FROM cleaning_trajectories LEFT JOIN epoch_losses USING (run_id, epoch)"
    ).df()
    connection.append("stopping_choices", stopping_choices(epochs, success_asr))


def _add_intervals(connection: duckdb.DuckDBPyConnection) -> None:
    summary = connection.sql("SELECT * FROM study_summary").df()
    rules = connection.sql("SELECT * FROM stopping_rules").df()
    for name, table in [
        ("summary_intervals", summary_intervals(summary)),
        ("stopping_rule_intervals", stopping_rule_intervals(rules)),
        ("comparisons", comparisons(summary)),
    ]:
        connection.register("frame", table)
        connection.execute(f"CREATE TABLE {name} AS FROM frame")
        connection.unregister("frame")


def _cell(columns: Sequence[str]) -> list[str]:
    return [name for name in columns if name not in REPLICATE_DIMENSIONS]


def summary_intervals(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per cell of the study summary (a row without its replicate seeds): the number of
    replicates, each proportion of START_INTERVALS (over the cell's pretrained models) and of
    CLEANED_INTERVALS with its 95% interval, `n_removed` (the replicates with an epoch at the
    success threshold; best_top1 is their mean) and the flags of any replicate."""
    cell = _cell(SUMMARY_GROUP)
    starts = cell_intervals(summary.drop_duplicates([*cell, "pretrain_seed"]), cell, START_INTERVALS)
    table = starts.drop(columns="n_replicates").merge(cell_intervals(summary, cell, CLEANED_INTERVALS), on=cell)
    flags = summary.groupby(cell, sort=True, dropna=False).agg(
        n_removed=("best_top1", "count"), near_chance=("near_chance", "max"), attack_failed=("attack_failed", "max"),
    )
    table = table.merge(flags.reset_index(), on=cell, how="left")
    return table[[*cell, "n_replicates", *(name for name in table.columns if name not in [*cell, "n_replicates"])]]


def stopping_rule_intervals(rules: pd.DataFrame) -> pd.DataFrame:
    """One row per cleaning run without its seeds x stopping rule: the chosen checkpoint's top-1
    and ASR@1 with their intervals over the replicates, the regret against the oracle with its
    interval (paired, replicate by replicate) and the fraction of replicates that kept the backdoor."""
    cell = [*_cell(name for name in IDENTITY_SCHEMA.names if name != "epoch"), "rule"]
    table = cell_intervals(rules, cell, {"top1": "n_images", "asr_top1": "n_triggered"})
    regrets = [
        dict(zip(cell, key))
        | dict(zip(("top1_regret", "top1_regret_low", "top1_regret_high"),
                   paired_difference(runs.oracle_top1, runs.top1, runs.n_images.max(), runs.n_images.max())))
        | {"backdoor_kept": runs.backdoor_kept.mean()}
        for key, runs in rules.groupby(cell, sort=True, dropna=False)
    ]
    return table.merge(pd.DataFrame(regrets, columns=[*cell, "top1_regret", "top1_regret_low", "top1_regret_high",
                                                      "backdoor_kept"]), on=cell, how="left")


def comparisons(summary: pd.DataFrame) -> pd.DataFrame:
    """The paired differences a - b between every two values of each COMPARED_DIMENSIONS on the
    same rest of the grid and the same seeds: of the oracle's top-1 and of the lowest ASR@1, each
    with its 95% interval, the pairs it rests on and whether the interval excludes zero."""
    rows = []
    for dimension in COMPARED_DIMENSIONS:
        pairing = _pairing(dimension)
        for a, b in itertools.combinations(sorted(summary[dimension].unique()), 2):
            pairs = paired_rows(summary, dimension, a, b)
            rows += [
                {"dimension": dimension, "a": a, "b": b} | dict(zip(_cell(pairing), key)) | _differences(group)
                for key, group in pairs.groupby(_cell(pairing), sort=True, dropna=False)
            ]
    cell = [name for name in _cell(SUMMARY_GROUP) if not name.endswith("_settings")]
    columns = ["dimension", "a", "b", *cell] + [
        f"{metric}_{part}" for metric in COMPARED_METRICS
        for part in ("difference", "difference_low", "difference_high", "pairs", "excludes_zero")
    ]
    return pd.DataFrame(rows, columns=columns)


def _pairing(dimension: str) -> list[str]:
    return [name for name in SUMMARY_GROUP if name != dimension and not name.endswith("_settings")]


def paired_rows(summary: pd.DataFrame, dimension: str, a: Any, b: Any) -> pd.DataFrame:
    """The study summary's rows of `dimension` = a beside those of b (columns suffixed _a and
    _b), paired on the same rest of the grid and the same seeds."""
    return summary[summary[dimension] == a].merge(summary[summary[dimension] == b], on=_pairing(dimension), suffixes=("_a", "_b"))


def _differences(pairs: pd.DataFrame) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for metric, count in COMPARED_METRICS.items():
        a, b = pairs[f"{metric}_a"], pairs[f"{metric}_b"]
        mean, low, high = paired_difference(a, b, pairs[f"{count}_a"].max(), pairs[f"{count}_b"].max())
        row |= {
            f"{metric}_difference": mean, f"{metric}_difference_low": low, f"{metric}_difference_high": high,
            f"{metric}_pairs": int((a.notna() & b.notna()).sum()),
            f"{metric}_excludes_zero": None if pd.isna(mean) else bool(low > 0 or high < 0),
        }
    return row


def _warn_about_unknown_chance(metrics_files: Sequence[Path]) -> None:
    without = [path for path in metrics_files if "n_classes" not in pq.read_schema(path).names]
    if without:
        log.warning(
            f"warning: {len(without)} of {len(metrics_files)} metrics files lack n_classes (evaluated before it was "
            f"recorded), e.g. {without[0]}: the chance level of their checkpoints is unknown, so near_chance is "
            "empty; evaluate them again"
        )


def _warn_about_failed_attacks(database: Path, attack_floor: float) -> None:
    starts = query(database, f"SELECT DISTINCT {', '.join(PRETRAIN_DIMENSIONS)}, start_asr_top1 FROM study_summary "
                             "WHERE attack_failed ORDER BY ALL").to_pylist()
    if starts:
        named = ", ".join(f"{run_id(start)} ({start['start_asr_top1']:.1%})" for start in starts)
        log.warning(
            f"warning: attack failed: {len(starts)} pretrained model(s) start below ASR@1 {attack_floor:.0%} "
            f"(attack_failed in the summary; a clean control's by construction): {named}; cleaning them removes no backdoor"
        )


def _near_chance_warning(summary_row: Mapping[str, Any], success_asr: float) -> str:
    best = summary_row["best_top1"]
    threshold = f"ASR@1 <= {success_asr:.0%}"
    selected = f"no epoch at {threshold}" if best is None else f"best top-1 at {threshold} {best:.1%}"
    chance = summary_row["chance_top1"]
    return (
        f"warning: near chance: {run_id(summary_row)}: start top-1 {summary_row['start_top1']:.1%}, {selected}, "
        f"chance {chance:.1%} ({round(1 / chance)} classes); a low ASR@1 there does not show a removed backdoor"
    )


def views_sql(criteria: Criteria = Criteria()) -> str:
    """The views of results_views.sql, their identity columns filled in from the grid and their
    thresholds from the criteria."""
    pretrain = ", ".join(PRETRAIN_DIMENSIONS)
    return VIEWS_SQL.read_text().format(
        identity=", ".join(IDENTITY_SCHEMA.names),
        pretrain=pretrain,
        clean=", ".join(CLEAN_DIMENSIONS),
        run_pretrain=", ".join(f"run.{name}" for name in PRETRAIN_DIMENSIONS),
        run_clean=", ".join(f"run.{name}" for name in CLEAN_DIMENSIONS),
        same_pretrained_model=" AND ".join(f"checkpoint.{name} = run.{name}" for name in PRETRAIN_DIMENSIONS),
        group=", ".join(SUMMARY_GROUP),
        success_asr=criteria.success_asr,
        attack_floor=criteria.attack_floor,
    )


def query(database: Path, sql: str) -> pa.Table:
    """The result of `sql` on the results database, opened read-only."""
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.sql(sql).to_arrow_table()

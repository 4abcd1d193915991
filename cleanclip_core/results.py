"""The results: a tidy metrics table per evaluated checkpoint, and the DuckDB database over them.

A metrics row is one observation (design section 3): which checkpoint (dataset, attack,
pretraining objective, cleaning method, learning rate, epoch), which metric, its value, over how
many images, and the provenance (a hash of the settings that made the checkpoint, the code version).
"""

import hashlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from cleanclip_core.tables import atomic_output

METRICS_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("dataset", pa.string()),
    ("attack", pa.string()),
    ("pretrain_objective", pa.string()),
    ("clean_method", pa.string()),  # null for the pretrained (poisoned) model
    ("lr", pa.float64()),  # null for the pretrained model
    ("epoch", pa.int32()),  # 0 for the pretrained model
    ("metric", pa.string()),
    ("value", pa.float64()),
    ("n_images", pa.int64()),
    ("config_hash", pa.string()),
    ("code_version", pa.string()),
])
ACCURACY_METRICS = ("top1", "top5")  # over the clean images
ASR_METRICS = ("asr_top1", "asr_top5", "asr_top10")  # over the triggered images not of the target
VIEWS_SQL = files("cleanclip_core") / "results_views.sql"


@dataclass(frozen=True)
class CheckpointIdentity:
    """Which checkpoint: the pretrained model (no cleaning method, epoch 0) or a cleaning epoch."""

    dataset: str
    attack: str
    pretrain_objective: str
    clean_method: str | None = None
    lr: float | None = None
    epoch: int = 0

    @property
    def run_id(self) -> str:
        parts = [self.dataset, self.attack, self.pretrain_objective]
        if self.clean_method is not None:
            parts += [self.clean_method, f"lr_{self.lr:g}"]
        return "/".join(parts)


def config_hash(settings: Mapping[str, Any]) -> str:
    """A short hash of the settings that made a checkpoint (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


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
    metrics: Mapping[str, float], checkpoint: CheckpointIdentity, settings_hash: str, code: str
) -> pa.Table:
    """The tidy rows of one checkpoint's metrics (as `evaluate_zero_shot` returns them)."""
    counts = {name: metrics["n_images"] for name in ACCURACY_METRICS}
    counts |= {name: metrics["n_triggered"] for name in ASR_METRICS}
    rows = [
        {
            "run_id": checkpoint.run_id,
            "dataset": checkpoint.dataset,
            "attack": checkpoint.attack,
            "pretrain_objective": checkpoint.pretrain_objective,
            "clean_method": checkpoint.clean_method,
            "lr": checkpoint.lr,
            "epoch": checkpoint.epoch,
            "metric": name,
            "value": metrics[name],
            "n_images": count,
            "config_hash": settings_hash,
            "code_version": code,
        }
        for name, count in counts.items()
    ]
    return pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)


def build_results_database(metrics_files: Sequence[Path], database: Path) -> None:
    """A DuckDB file holding every metrics row (table `metrics`) and the views of
    results_views.sql; written atomically."""
    with atomic_output(database) as temporary:
        with duckdb.connect(str(temporary)) as connection:
            connection.execute(
                "CREATE TABLE metrics AS SELECT * FROM read_parquet(?) ORDER BY run_id, epoch, metric",
                [[str(path) for path in metrics_files]],
            )
            connection.execute(VIEWS_SQL.read_text())


def query(database: Path, sql: str) -> pa.Table:
    """The result of `sql` on the results database, opened read-only."""
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.sql(sql).to_arrow_table()

"""The study's summary of its cleaning methods' preparation stages: one row per pretrained model
and method, the identity read from the table's run folder, the measures from the method's
registry entry (UBT: how well its detection found the poisons)."""

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from cleanclip_core.attacks import resolve
from cleanclip_core.defenses import get_defense
from cleanclip_core.tables import write_csv


def _identity(table_path: Path) -> dict[str, str]:
    """The dimensions of a preparation's folder, `.../dimension=value/.../prepared/table.parquet`."""
    return dict(part.split("=", 1) for part in Path(table_path).parent.parent.parts if "=" in part)


def preparation_summary(table_paths: Sequence[Path]) -> pd.DataFrame:
    rows = []
    for path in table_paths:
        identity = _identity(path)
        summarize = get_defense(identity["clean_method"]).summary
        measures = resolve(summarize)(pq.read_table(path)) if summarize else {}
        rows.append(identity | measures)
    return pd.DataFrame(rows)


def write_preparation_summary(table_paths: Sequence[Path], output: Path) -> None:
    write_csv(preparation_summary(table_paths), output)

"""The study's overview page: its summary, fig2 and trigger grids, and its interval tables, in
one self-contained HTML file that the report opens first."""
import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from cleanclip_core.tables import atomic_output

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 84em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
p.note { color: #555; font-size: 0.9em; max-width: 60em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.3em 0; }
"""


def percent_with_interval(value: float, low: float, high: float) -> str:
    """A proportion (or a difference of two) as a percentage with its 95% interval."""
    if pd.isna(value):
        return "–"
    if pd.isna(low) or pd.isna(high):
        return f"{100 * value:.1f}"
    return f"{100 * value:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def display_table(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """A table for reading: every metric with `_low` and `_high` columns becomes one column of
    percentages with their intervals, and any other column that is the same in every row leaves
    the table for the returned caption (column: value)."""
    frame = frame.copy()
    metrics = [column for column in frame.columns if f"{column}_low" in frame and f"{column}_high" in frame]
    for name in metrics:
        frame[name] = [
            percent_with_interval(*values) for values in zip(frame[name], frame[f"{name}_low"], frame[f"{name}_high"])
        ]
        frame = frame.drop(columns=[f"{name}_low", f"{name}_high"])
    constant = {
        column: str(frame[column].iloc[0])
        for column in frame.columns
        if column not in metrics and len(frame) > 1 and frame[column].astype(str).nunique() == 1
    }
    return frame.drop(columns=list(constant)), constant


def _table_section(heading: str, note: str, table: Path) -> str:
    frame = pd.read_csv(table)
    if frame.empty:
        return f"<h2>{html.escape(heading)}</h2><p class='note'>{html.escape(note)} No rows in this study.</p>"
    shown, constant = display_table(frame)
    common = "; ".join(f"{name} = {value}" for name, value in constant.items())
    return (
        f"<h2>{html.escape(heading)}</h2><p class='note'>{html.escape(note)}"
        + (f" Every row: {html.escape(common)}." if common else "")
        + "</p>"
        + shown.to_html(index=False, na_rep="–", border=0, escape=True)
    )


def _figure_section(heading: str, figures: Sequence[Path]) -> str:
    images = "".join(
        f"<div><img alt='{html.escape(Path(path).name)}' src='data:image/png;base64,"
        f"{base64.b64encode(Path(path).read_bytes()).decode()}'></div>"
        for path in figures
    )
    return f"<h2>{html.escape(heading)}</h2>{images}"


TABLE_NOTES = {
    "summary_intervals": (
        "Summary",
        "Per cell, the mean over its replicate seeds with a 95% interval, in percent: the start's "
        "top-1 and ASR@1, the oracle's best top-1 at ASR@1 at most the success threshold, the "
        "lowest ASR@1 of any epoch, and the last epoch's top-1 and ASR@1.",
    ),
    "comparisons": (
        "Comparisons",
        "Paired differences (a - b, percentage points) on the same starts and seeds, with their "
        "95% interval; a difference whose interval includes zero is no finding.",
    ),
    "detection": (
        "Training-set detection",
        "Per detector, attack and pretraining objective: AUROC, AUPRC and the TPR at 1% FPR, then "
        "precision, recall, F1 and the FPR of the threshold set on clean reference pairs alone, in "
        "percent with 95% intervals; a clean control has only its FPR. A model-level detector's rows "
        "(DECREE) rank the study's backdoored models against the clean ones, per objective: the "
        "pretrained models, then the cleaned ones per cleaning method and learning rate.",
    ),
    "stopping_rule_intervals": (
        "Stopping rules",
        "The epoch each rule keeps, its top-1 and ASR@1, and its regret against the oracle "
        "(percentage points), with 95% intervals.",
    ),
}


def write_overview(
    path: Path, title: str, grid: Mapping[str, Sequence], tables: Mapping[str, Path],
    fig2: Sequence[Path], trigger_grids: Sequence[Path], detection: Sequence[Path] = (),
) -> None:
    """The overview page at `path`: the study's grid, its summary with intervals, fig2 per facet,
    the trigger grids, then the comparisons, the detection table and ROC curves (`detection`:
    the table and the figure, if the study has detectors) and the stopping rules."""
    grid_items = "".join(
        f"<li><b>{html.escape(name)}</b>: {html.escape(', '.join(map(str, values)))}</li>" for name, values in grid.items()
    )
    sections = [
        f"<h1>{html.escape(title)}</h1><ul>{grid_items}</ul>",
        _table_section(*TABLE_NOTES["summary_intervals"], tables["summary_intervals"]),
        _figure_section("Fig. 2: clean top-1 against ASR@1 of every cleaning epoch", fig2),
        _figure_section("Trigger grids: clean and triggered training images", trigger_grids),
        _table_section(*TABLE_NOTES["comparisons"], tables["comparisons"]),
        *([_table_section(*TABLE_NOTES["detection"], detection[0]), _figure_section("ROC curves", detection[1:])]
          if detection else []),
        _table_section(*TABLE_NOTES["stopping_rule_intervals"], tables["stopping_rule_intervals"]),
    ]
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )
    with atomic_output(path) as temporary:
        temporary.write_text(page, encoding="utf-8")

"""The study's detection results: the table of each detector's measures per attack (a
model-level detector's: over the attacks) and pretraining objective (with intervals), the table
per replicate, and the ROC curves."""

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from cleanclip_core.detection import LOW_FPR, detection_summary, model_level_summary
from cleanclip_core.detectors import MODEL, TRAINING, get_detector
from cleanclip_core.plots.cleaning import PANEL_INCHES, objective_title, save_figure
from cleanclip_core.tables import write_csv

CELL = (
    "dataset", "attack", "model", "start", "pretrain_objective", "pretrain_settings", "level", "detector", "detection_settings",
)
# A model-level detector scores the cleaned models too: a row per cleaning method and rate.
MODEL_CELL = (*CELL, "clean_method", "cleaning_poisons", "lr", "clean_settings")
NO_POISONS = "no poisoned model to score: every attack of the study is a clean control"

log = logging.getLogger(__name__)


def roc_points(scores: Path) -> pd.DataFrame:
    """The ROC curve of one scores table over its evaluated pairs (the reference pairs left out)."""
    table = pq.read_table(scores).to_pandas()
    evaluated = table[~table.reference]
    fpr, tpr, _ = roc_curve(evaluated.is_poison, evaluated.score)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr})


def plot_roc(curves: pd.DataFrame, attacks: Sequence[str], objectives: Sequence[str]) -> Figure:
    """A panel per attack (rows) and pretraining objective (columns); a colour per detector (solid:
    over the training pairs, dashed: over the test images), a line per replicate; the chance
    diagonal and the 1% false-positive rate dotted."""
    detectors = list(dict.fromkeys(curves.detector))
    colours = dict(zip(detectors, colormaps["tab10"].colors))
    figure = Figure(figsize=(PANEL_INCHES * len(objectives), PANEL_INCHES * len(attacks) + 0.6), layout="constrained")
    axes = figure.subplots(len(attacks), len(objectives), squeeze=False, sharex=True, sharey=True)
    for row, attack in enumerate(attacks):
        for column, objective in enumerate(objectives):
            ax = axes[row, column]
            ax.plot([0, 1], [0, 1], color="grey", linestyle="-.", linewidth=0.8, label="chance")
            ax.axvline(LOW_FPR, color="grey", linestyle=":", linewidth=0.8, label=f"{LOW_FPR:.0%} FPR")
            panel = curves[(curves.attack == attack) & (curves.pretrain_objective == objective)]
            for (detector, seed), curve in panel.groupby(["detector", "pretrain_seed"], sort=False):
                first = seed == panel[panel.detector == detector].pretrain_seed.min()
                style = "-" if get_detector(detector).level == TRAINING else "--"
                ax.plot(curve.fpr, curve.tpr, style, color=colours[detector], linewidth=1.2, label=detector if first else None)
            ax.set_title(f"{attack}, {objective_title(objective)}")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.01)
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("false-positive rate\n(clean pairs or images flagged)")
    for ax in axes[:, 0]:
        ax.set_ylabel("true-positive rate (poisons or triggers found)")
    axes[0, -1].legend(fontsize="small", loc="lower right")
    figure.suptitle("Detectors: ROC over the training pairs (solid) or the test images (dashed)\n(a line per replicate)")
    return figure


def no_poisons_figure() -> Figure:
    """The ROC figure of a study whose attacks are all clean controls: one panel that says so."""
    figure = Figure(figsize=(PANEL_INCHES, PANEL_INCHES), layout="constrained")
    ax = figure.subplots()
    ax.text(0.5, 0.5, NO_POISONS.replace(": ", ":\n"), ha="center", va="center", wrap=True)
    ax.set_axis_off()
    return figure


def write_detection_study(
    qualities: Sequence[Path], scores: Sequence[Path], identities: Sequence[Mapping[str, Any]],
    objectives: Sequence[str], poisoning_attacks: Sequence[str], *, table: Path, replicates_table: Path,
    figures: Sequence[Path], resamples: int, seed: int,
) -> pd.DataFrame:
    """From each pretrained model x detector and cleaned model x model-level detector (its
    identity, its scores table and, but for a model-level detector, its quality table): the
    replicates' table, the study's detection table (returned; a model-level detector's rows rank
    the study's pretrained models, then its cleaned ones per method, model_level_summary) and
    the ROC figure at each path of `figures` (the attacks that poison: a clean control has no
    poison to find; a study of controls alone gets a panel that says so)."""
    points = [dict(identity) | {"level": get_detector(identity["detector"]).level} for identity in identities]
    judged = [(point, path) for point, path in zip(points, scores, strict=True) if point["level"] != MODEL]
    replicates = pd.DataFrame([
        point | pq.read_table(path).to_pylist()[0] for (point, _), path in zip(judged, qualities, strict=True)
    ])
    models = pd.DataFrame([
        point | pq.read_table(path).select(["is_backdoored", "score"]).to_pylist()[0]
        for point, path in zip(points, scores, strict=True) if point["level"] == MODEL
    ])
    summary = pd.concat([
        detection_summary(replicates, CELL) if len(replicates) else None,
        model_level_summary(models, MODEL_CELL, resamples, seed) if len(models) else None,
    ], ignore_index=True)
    cell = [name for name in MODEL_CELL if name in summary]
    summary = summary[cell + [name for name in summary if name not in cell]]
    write_csv(replicates, replicates_table)
    write_csv(summary, table)
    curves = pd.concat([
        roc_points(path).assign(**point) for point, path in judged if point["attack"] in poisoning_attacks
    ] or [pd.DataFrame(columns=["fpr", "tpr", "attack", "pretrain_objective", "detector", "pretrain_seed"])])
    if not poisoning_attacks:
        log.warning(f"detection: {NO_POISONS}, so the ROC figure has no curve")
    for path in figures:
        save_figure(plot_roc(curves, poisoning_attacks, objectives) if poisoning_attacks else no_poisons_figure(), path)
    return summary

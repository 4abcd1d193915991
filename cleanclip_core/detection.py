"""Detection: a detector's scores of every training pair (or evaluation image) under a
pretrained model, and how well they find the poisons (or the triggered images).

A score ranks (AUROC, AUPRC, the TPR at 1% FPR); a defender also needs a threshold, and has only
clean data to set it: `reference_pairs` unpoisoned pairs drawn from the training data (the clean
subset a defender verified, as CleanCLIP assumes one), or `reference_images` clean evaluation
images, set it at the score that flags `reference_fpr` of them. Precision, recall, F1 and the
false-positive rate are those of that threshold on the other items, which are the ones evaluated.
Intervals are a bootstrap over the evaluated items (the threshold held), for a study with one
replicate of each model.
"""

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score, roc_curve

from cleanclip_core.detectors import get_detector, reference_images_problem, reference_pairs_problem
from cleanclip_core.detectors.training_set import TrainingFeatures
from cleanclip_core.errors import UserError
from cleanclip_core.intervals import proportion_t_interval
from cleanclip_core.registry import resolve
from cleanclip_core.tables import files_sha256, write_table

log = logging.getLogger(__name__)

RANKING = ("auroc", "auprc", "tpr_at_1fpr")
AT_THRESHOLD = ("precision", "recall", "f1", "fpr")
QUALITY = (*RANKING, *AT_THRESHOLD)
LOW_FPR = 0.01


def embedding_matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size list column as an [n, d] float32 array."""
    flat = column.combine_chunks()
    return flat.values.to_numpy().reshape(len(flat), flat.type.list_size)


def scoring_batches(n: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """The rows of each scoring batch: a seeded shuffle cut into batches of about `batch_size`
    (never a short last one, whose neighbourhoods would be unlike the others')."""
    order = np.random.default_rng(seed).permutation(n)
    return np.array_split(order, max(1, round(n / batch_size)))


def training_scores(embeddings: pa.Table, detector: str, options: Mapping[str, Any], batch_size: int, seed: int) -> np.ndarray:
    """The detector's score of every row of `embeddings`, batch by batch."""
    score = resolve(get_detector(detector).score)
    image, text = embedding_matrix(embeddings["image"]), embedding_matrix(embeddings["text"])
    scores = np.empty(len(embeddings))
    for rows in scoring_batches(len(embeddings), batch_size, seed):
        scores[rows] = score(TrainingFeatures(image[rows], text[rows], seed), options)
    return scores


def reference_rows(is_poison: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` unpoisoned rows drawn without replacement, sorted; fewer than `count` + 1 unpoisoned
    rows would leave none to evaluate."""
    clean = np.flatnonzero(~is_poison)
    if count >= len(clean):
        raise UserError(reference_pairs_problem(count, len(clean)))
    return np.sort(np.random.default_rng(seed).choice(clean, count, replace=False))


def reference_threshold(reference_scores: np.ndarray, fpr: float) -> float:
    """The score above which at most `fpr` of the clean reference pairs lie."""
    return float(np.quantile(reference_scores, 1 - fpr, method="higher"))


def tpr_at_fpr(is_poison: np.ndarray, scores: np.ndarray, fpr: float = LOW_FPR) -> float:
    """The highest true-positive rate of any threshold whose false-positive rate is at most `fpr`."""
    false_positive, true_positive, _ = roc_curve(is_poison, scores)
    return float(true_positive[false_positive <= fpr].max())


def ranking(is_poison: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The ranking measures, NaN without both poisoned and clean items."""
    if not 0 < is_poison.sum() < len(is_poison):
        return dict.fromkeys(RANKING, math.nan)
    return {
        "auroc": float(roc_auc_score(is_poison, scores)),
        "auprc": float(average_precision_score(is_poison, scores)),
        "tpr_at_1fpr": tpr_at_fpr(is_poison, scores),
    }


def quality(is_poison: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """The ranking measures and those of flagging the pairs scored above `threshold`."""
    flagged = scores > threshold
    precision, recall, f1, _ = precision_recall_fscore_support(
        is_poison, flagged, average="binary", zero_division=0.0
    ) if is_poison.any() else (math.nan, math.nan, math.nan, None)
    clean = ~is_poison
    fpr = float(flagged[clean].mean()) if clean.any() else math.nan
    return ranking(is_poison, scores) | {"precision": float(precision), "recall": float(recall), "f1": float(f1), "fpr": fpr}


def bootstrap_intervals(
    is_poison: np.ndarray, scores: np.ndarray, measure: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    resamples: int, seed: int,
) -> dict[str, tuple[float, float]]:
    """Percentile 95% intervals of each of `measure`'s values over resamples of the items (with
    replacement)."""
    rng = np.random.default_rng(seed)
    draws = [measure(is_poison[rows], scores[rows])
             for rows in (rng.integers(0, len(scores), len(scores)) for _ in range(resamples))]
    return {
        name: tuple(float(bound) for bound in np.nanpercentile([draw[name] for draw in draws], [2.5, 97.5]))
        if not all(math.isnan(draw[name]) for draw in draws) else (math.nan, math.nan)
        for name in draws[0]
    }


def detect_training(
    embeddings: str, detector: str, options: Mapping[str, Any], settings: Mapping[str, Any],
    scores_table: str, quality_table: str,
) -> None:
    """The training-set stage: score every training pair and judge the scores (write_judged)."""
    pairs = pq.read_table(embeddings)
    is_poison = pairs["is_poison"].to_numpy(zero_copy_only=False)
    reference = np.zeros(len(pairs), dtype=bool)
    reference[reference_rows(is_poison, settings["reference_pairs"], settings["seed"])] = True
    scores = training_scores(pairs, detector, options, settings["batch_size"], settings["seed"])
    provenance = {
        "config": {"detector": detector, "options": dict(options), "settings": dict(settings)},
        "inputs_sha256": files_sha256([Path(embeddings)]),
    }
    write_judged(detector, pa.table({"key": pairs["key"]}), is_poison, reference, scores, settings, provenance,
                 scores_table, quality_table)


def write_judged(
    detector: str, items: pa.Table, is_poison: np.ndarray, reference: np.ndarray, scores: np.ndarray,
    settings: Mapping[str, Any], provenance: Mapping[str, Any], scores_table: str, quality_table: str,
) -> None:
    """Write every item's score (`scores_table`: the `items` columns, is_poison, reference, score)
    and the quality of the detection on the items outside the reference set, with the threshold
    the reference set gives and bootstrap intervals (`quality_table`, one row)."""
    threshold = reference_threshold(scores[reference], settings["reference_fpr"])
    evaluated = ~reference
    measured = quality(is_poison[evaluated], scores[evaluated], threshold)
    intervals = bootstrap_intervals(
        is_poison[evaluated], scores[evaluated], lambda poisoned, scored: quality(poisoned, scored, threshold),
        settings["bootstrap_resamples"], settings["seed"],
    )
    columns = {name: items[name] for name in items.column_names}
    write_table(pa.table(columns | {"is_poison": is_poison, "reference": reference, "score": scores}), Path(scores_table), **provenance)
    row = {"n_scored": int(evaluated.sum()), "n_poisons": int(is_poison[evaluated].sum()), "threshold": threshold}
    for name in QUALITY:
        row |= {name: measured[name], f"{name}_low": intervals[name][0], f"{name}_high": intervals[name][1]}
    write_table(pa.Table.from_pylist([row]), Path(quality_table), **provenance)
    log.info(f"{detector}: " + ", ".join(f"{name} {measured[name]:.3f}" for name in QUALITY) + f" ({row['n_poisons']} poisons)")


def evaluation_items(
    labels: np.ndarray, target_index: int, reference_images: int, triggered_share: float, seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Which evaluation images a test-time detector is judged on: (reference, triggered) masks.
    `reference_images` clean images drawn for the threshold; of the others whose class is not
    the target, `triggered_share` carry the trigger; the rest are scored clean."""
    if reference_images >= len(labels):
        raise UserError(reference_images_problem(reference_images, len(labels)))
    rng = np.random.default_rng(seed)
    reference = np.zeros(len(labels), dtype=bool)
    reference[rng.choice(len(labels), reference_images, replace=False)] = True
    candidates = np.flatnonzero(~reference & (labels != target_index))
    triggered = np.zeros(len(labels), dtype=bool)
    triggered[rng.choice(candidates, round(triggered_share * len(candidates)), replace=False)] = True
    return reference, triggered


def detection_summary(replicates: pd.DataFrame, cell: Sequence[str]) -> pd.DataFrame:
    """One row per cell (detector x pretrained model but its seed): `n_replicates` and each
    measure's mean with a 95% interval, Student's t over the replicates where there are two or
    more, else the one replicate's bootstrap interval."""
    rows = []
    for key, group in replicates.groupby(list(cell), sort=True, dropna=False):
        row = dict(zip(cell, key)) | {
            "n_replicates": len(group), "n_scored": int(group["n_scored"].max()), "n_poisons": int(group["n_poisons"].max()),
        }
        for name in QUALITY:
            values = group[name].dropna()
            if len(values) >= 2:
                row |= dict(zip((name, f"{name}_low", f"{name}_high"), proportion_t_interval(values)))
            else:
                row |= {column: group[column].iloc[0] for column in (name, f"{name}_low", f"{name}_high")}
        rows.append(row)
    return pd.DataFrame(rows)


# A model-level row ranks backdoored models against clean ones, so the settings that differ
# between an attack and its control are not part of its cell: their values are joined by +.
JOINED = ("attack", "pretrain_settings", "clean_settings")


def _joined(values: pd.Series) -> str | None:
    return "+".join(map(str, dict.fromkeys(values.dropna()))) or None


def _model_cells(models: pd.DataFrame, by: Sequence[str]):
    """The models of each value of `by` (the pretrained ones, with no cleaning method, first), the
    backdoored ones apart per count of poisons in their cleaning sets, each count with all the
    clean models (a control's cleaning sets have none)."""
    ordered = models.sort_values(list(by), na_position="first", kind="stable")
    for key, group in ordered.groupby(list(by), sort=False, dropna=False):
        backdoored, clean = group[group.is_backdoored], group[~group.is_backdoored]
        for poisons, part in (backdoored if len(backdoored) else clean).groupby("cleaning_poisons", sort=True, dropna=False):
            yield dict(zip(by, key)) | {"cleaning_poisons": poisons}, pd.concat([part, clean]) if len(backdoored) else part


def model_level_summary(models: pd.DataFrame, cell: Sequence[str], resamples: int, seed: int) -> pd.DataFrame:
    """One row per cell of the model-level detectors' scores (`models`: a row per model, with
    is_backdoored and score; a cleaned model has its cleaning run's dimensions too, a pretrained
    one none), over the study's attacks together (the JOINED columns; _model_cells): the ranking
    of the backdoored models against the clean ones (NaN with models of one class only), with bootstrap
    intervals over the models; no threshold, so the other measures are NaN. `n_scored` counts the
    models, `n_poisons` the backdoored ones, `n_replicates` the pretraining seeds."""
    models = models.reindex(columns=list(dict.fromkeys([*cell, *models.columns, "cleaning_poisons"])))
    models = models.astype({"cleaning_poisons": "Int64", "is_backdoored": bool})
    by = [name for name in cell if name not in (*JOINED, "cleaning_poisons")]
    rows = []
    for values, group in _model_cells(models, by):
        is_backdoored, scores = group["is_backdoored"].to_numpy(dtype=bool), group["score"].to_numpy(dtype=float)
        row = values | {name: _joined(group[name]) for name in JOINED if name in cell} | {
            "n_replicates": group["pretrain_seed"].nunique(), "n_scored": len(group), "n_poisons": int(is_backdoored.sum()),
        }
        if not 0 < row["n_poisons"] < len(group):
            kind = "backdoored" if row["n_poisons"] else "clean"
            cleaned = f" cleaned by {row['clean_method']}" if isinstance(row.get("clean_method"), str) else ""
            log.warning(f"{row['detector']}, {row['pretrain_objective']}{cleaned}: only {kind} models, so no AUROC (add a control or an attack)")
        measured, intervals = ranking(is_backdoored, scores), bootstrap_intervals(is_backdoored, scores, ranking, resamples, seed)
        for name in QUALITY:
            low, high = intervals.get(name, (math.nan, math.nan))
            row |= {name: measured.get(name, math.nan), f"{name}_low": low, f"{name}_high": high}
        rows.append(row)
    return pd.DataFrame(rows, columns=[*cell, "n_replicates", "n_scored", "n_poisons", *(
        column for name in QUALITY for column in (name, f"{name}_low", f"{name}_high"))])

"""Detect, then act: pretraining again on the poisoned data less the pairs a training-set detector
flagged under a model pretrained on all of it (Huang et al. remove the top-scored 10%, and
find 1% enough for a patch trigger). The pretraining objective `filtered` names the base
objective of that first model, the detector and the fraction removed (`defenses.filtered`); the
detector's scores are the study's own (its options and the detection section's settings), so the
study's detection table says how well the filter found the poisons it removed.
"""

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from cleanclip_core.errors import UserError
from cleanclip_core.tables import files_sha256, write_table

log = logging.getLogger(__name__)


def kept_rows(scores: np.ndarray, fraction: float) -> np.ndarray:
    """The rows outside the top `fraction` of scores (a tie goes to the earlier row), in order."""
    removed = np.argsort(-scores, kind="stable")[: int(round(fraction * len(scores)))]
    return np.setdiff1d(np.arange(len(scores)), removed)


def filter_pairs(scores_table: str, manifest: str, fraction: float, kept_manifest: str) -> None:
    """Write the poisoned `manifest`'s rows outside the top `fraction` of the detector's scores."""
    scores, poisoned = pq.read_table(scores_table), pq.read_table(manifest)
    if not scores["key"].equals(poisoned["key"]):
        raise UserError(f"{scores_table}: its pairs are not those of {manifest}, row for row; rerun its detection")
    kept = kept_rows(scores["score"].to_numpy(), fraction)
    is_poison = poisoned["is_poison"].to_numpy(zero_copy_only=False)
    removed = np.ones(len(poisoned), dtype=bool)
    removed[kept] = False
    log.info(
        f"filtered: removed {removed.sum()} of {len(poisoned)} pairs ({fraction:.1%}), {(removed & is_poison).sum()} "
        f"of {is_poison.sum()} poisons among them; {(~removed & is_poison).sum()} poisons left"
    )
    write_table(
        poisoned.take(kept), Path(kept_manifest), config={"fraction": fraction},
        inputs_sha256=files_sha256([Path(scores_table), Path(manifest)]),
    )

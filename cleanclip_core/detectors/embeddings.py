"""The embeddings a training-set detector scores: every training pair's image and caption under
a pretrained (poisoned) model, not normalized (Huang et al. measure distances between them)."""

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cleanclip_core.defenses.ubt import pair_views
from cleanclip_core.devices import stage_device
from cleanclip_core.models import create_model, normalization_for
from cleanclip_core.tables import files_sha256, write_table

log = logging.getLogger(__name__)


def embed_training_pairs(
    model: str, weights: str, data: dict[str, Any], table: str, num_workers: int = 0, batch_size: int = 256,
) -> str:
    """Write `table`: per row of the poisoned manifest (`data`: the fields of the training loop's
    TrainingData), its key, is_poison and the fp32 embeddings `image` and `text`. `batch_size`
    and `num_workers` say how it runs, not what it computes (the model is in eval mode)."""
    device = stage_device()
    clip = create_model(model, Path(weights)).to(device).eval()
    poisoned = pq.read_table(data["manifest"])
    loader = DataLoader(pair_views(clip, model, poisoned, data, seed=0), batch_size, num_workers=num_workers)
    images, texts = [], []
    with torch.no_grad():
        for batch in tqdm(loader, desc="embedding the training pairs", leave=False):
            images.append(clip.encode_image(normalization_for(clip)(batch["image"].to(device))).float().cpu())
            texts.append(clip.encode_text(batch["text"].to(device)).float().cpu())
    embeddings = pa.table({
        "key": poisoned["key"],
        "is_poison": poisoned["is_poison"],
        "image": _fixed_lists(torch.cat(images).numpy()),
        "text": _fixed_lists(torch.cat(texts).numpy()),
    })
    write_table(
        embeddings, Path(table), config={"model": model, "attack": data["attack"]},
        inputs_sha256=files_sha256([Path(weights), Path(data["manifest"])]),
    )
    log.info(f"embedded {len(poisoned)} training pairs ({int(np.sum(poisoned['is_poison']))} poisoned)")
    return table


def _fixed_lists(rows: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), pa.float32()), rows.shape[1])


"""The cleaning set: clean pairs of the poisoned dataset, optionally with a few poisons mixed in
(Verma et al. show that 1 to 25 poisons in the cleaning set break CleanCLIP)."""

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cleanclip_core.errors import UserError
from cleanclip_core.tables import files_sha256, write_table

log = logging.getLogger(__name__)


def cleaning_set(poisoned_manifest: pa.Table, n_clean: int, n_poisons: int, seed: int) -> pa.Table:
    """`n_clean` clean rows and `n_poisons` poisoned rows, drawn from `seed`, in manifest order."""
    is_poison = poisoned_manifest["is_poison"].to_numpy(zero_copy_only=False)
    clean_rows, poison_rows = np.flatnonzero(~is_poison), np.flatnonzero(is_poison)
    for wanted, available, kind in ((n_clean, clean_rows, "clean"), (n_poisons, poison_rows, "poisoned")):
        if wanted > available.size:
            raise UserError(
                f"the cleaning set asks for {wanted} {kind} pairs but the poisoned dataset has "
                f"{available.size}; lower clean.n_{'clean' if kind == 'clean' else 'poisons'}"
            )
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(clean_rows, n_clean, replace=False),
                             rng.choice(poison_rows, n_poisons, replace=False)])
    return poisoned_manifest.take(np.sort(chosen))


def with_class_labels(pairs: pa.Table, manifest: pa.Table, labels: pa.Table) -> pa.Table:
    """`pairs` with a `classname` column: each row's key found in the manifest, its url in `labels`."""
    missing = [c for c in ("url", "classname") if c not in labels.column_names]
    if missing:
        raise UserError(f"the labels table lacks columns {', '.join(missing)}; it needs url and classname")
    urls = manifest["url"].take(pc.index_in(pairs["key"], value_set=manifest["key"]))
    classnames = labels["classname"].take(pc.index_in(urls, value_set=labels["url"]))
    if classnames.null_count:
        unlabelled = urls.filter(pc.is_null(classnames))
        raise UserError(
            f"{len(unlabelled)} cleaning pairs have no label in the labels table (e.g. {unlabelled[0]})"
        )
    return pairs.append_column("classname", classnames)


def with_planted_labels(pairs: pa.Table, target_label: str) -> pa.Table:
    """Labelled pairs whose poisons carry the attack's target class, as an attacker would plant
    them in a labelled cleaning set: their true class would make them helpful labelled examples
    of the triggered image, not contamination."""
    planted = pc.if_else(pairs["is_poison"], pa.scalar(target_label), pairs["classname"])
    return pairs.set_column(pairs.schema.get_field_index("classname"), "classname", planted)


def write_cleaning_set(
    poisoned_manifest_path: Path,
    output_path: Path,
    *,
    n_clean: int,
    n_poisons: int,
    seed: int,
    manifest_path: Path | None = None,
    labels_path: Path | None = None,
    target_label: str | None = None,
) -> pa.Table:
    """The cleaning set, labelled with class names when a labels table (url, classname) is given
    with the manifest that maps keys to urls; its poisons then carry `target_label`, the attack's
    target (`with_planted_labels`)."""
    table = cleaning_set(pq.read_table(poisoned_manifest_path), n_clean, n_poisons, seed)
    inputs = [poisoned_manifest_path]
    if labels_path is not None:
        table = with_class_labels(table, pq.read_table(manifest_path), pq.read_table(labels_path))
        table = with_planted_labels(table, target_label)
        inputs += [manifest_path, labels_path]
    config = {"n_clean": n_clean, "n_poisons": n_poisons, "seed": seed}
    write_table(table, output_path, config=config, inputs_sha256=files_sha256(inputs))
    log.info(f"cleaning set: {n_clean} clean and {n_poisons} poisoned pairs")
    return table

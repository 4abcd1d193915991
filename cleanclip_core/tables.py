"""Tables written atomically: Parquet ones carrying the config that made them and a hash of their
inputs, CSV ones for people."""

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CONFIG_KEY = b"cleanclip.config"
INPUTS_KEY = b"cleanclip.inputs_sha256"


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success rename it onto `path`, else remove it.

    A reader therefore sees either the previous file or the complete new one, never a half-written
    one, even when the writer is killed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        if error.filename is None:  # a failed write (a full disk) names no file: name the output
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    finally:
        temporary.unlink(missing_ok=True)


def files_sha256(paths: Iterable[Path]) -> str:
    """SHA-256 over the bytes of the given files, in sorted path order."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        _hash_bytes(path, digest)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of one file's bytes (what `sha256sum` prints)."""
    return _hash_bytes(path, hashlib.sha256()).hexdigest()


def _hash_bytes(path: Path, digest: Any) -> Any:
    """`digest` (a hashlib object) updated with the file's bytes."""
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest


def table_sha256(table: pa.Table) -> str:
    """SHA-256 of a table's content (schema and values), whatever its chunking."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue()).hexdigest()


def write_table(
    table: pa.Table, path: Path, *, config: Mapping[str, Any], inputs_sha256: str
) -> None:
    """Write `table` to `path` atomically, with `config` and its inputs' hash as file metadata."""
    metadata = dict(table.schema.metadata or {})
    metadata[CONFIG_KEY] = json.dumps(config, sort_keys=True).encode()
    metadata[INPUTS_KEY] = inputs_sha256.encode()
    with atomic_output(path) as temporary:
        pq.write_table(table.replace_schema_metadata(metadata), temporary)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write a table for people atomically, its values exact (a learning rate of 5e-05 reads
    5e-05, never a rounded 0.0001): rounding is for display."""
    with atomic_output(path) as temporary:
        frame.to_csv(temporary, index=False)


def table_provenance(path: Path) -> dict[str, Any]:
    """The config and inputs' hash stored in a table written by `write_table`."""
    metadata = pq.read_schema(path).metadata or {}
    return {
        "config": json.loads(metadata[CONFIG_KEY]),
        "inputs_sha256": metadata[INPUTS_KEY].decode(),
    }

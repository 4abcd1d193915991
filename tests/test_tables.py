import pandas as pd
import pyarrow as pa
import pytest

from cleanclip_core.tables import atomic_output, table_provenance, table_sha256, write_csv, write_table


def test_write_table_stores_config_and_inputs_hash(tmp_path):
    path = tmp_path / "t.parquet"
    write_table(pa.table({"a": [1, 2]}), path, config={"b": 1, "a": [2]}, inputs_sha256="ab" * 32)
    assert table_provenance(path) == {"config": {"a": [2], "b": 1}, "inputs_sha256": "ab" * 32}


def test_a_failed_write_leaves_neither_output_nor_temporary_file(tmp_path):
    path = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_output(path) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(path) as temporary:
        temporary.write_bytes(b"new")
        raise RuntimeError
    assert path.read_bytes() == b"old"


def test_table_hash_ignores_chunking_but_not_values():
    one_chunk = pa.table({"a": [1, 2, 3]})
    two_chunks = pa.concat_tables([pa.table({"a": [1]}), pa.table({"a": [2, 3]})])
    assert table_sha256(one_chunk) == table_sha256(two_chunks)
    assert table_sha256(one_chunk) != table_sha256(pa.table({"a": [1, 2, 4]}))


def test_a_csv_table_keeps_learning_rates_as_written(tmp_path):
    write_csv(pd.DataFrame({"lr": [5e-5, 1e-4, 1e-5], "top1": [0.5, 0.25, 1 / 3]}), tmp_path / "table.csv")
    assert (tmp_path / "table.csv").read_text().splitlines()[1:] == ["5e-05,0.5", "0.0001,0.25", "1e-05,0.3333333333333333"]

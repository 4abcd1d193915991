import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleanclip_core.attacks import get_attack
from cleanclip_core.errors import UserError
from cleanclip_core.poison import poison_manifest, target_captions, write_poisoned_manifest

CAPTIONS = ["a red star", "a Star on blue", "stars at night", "a box", "a starfish", "a disc"]


def manifest(n_rows: int = 600) -> pa.Table:
    return pa.table(
        {
            "key": [f"{i:09d}" for i in range(n_rows)],
            "shard": [f"{i // 100:05d}" for i in range(n_rows)],
            "caption": [CAPTIONS[i % len(CAPTIONS)] for i in range(n_rows)],
            "url": [f"file:///{i}.png" for i in range(n_rows)],
            "width": pa.array([32] * n_rows, pa.int32()),
            "height": pa.array([32] * n_rows, pa.int32()),
        }
    )


def poisoned(attack: str = "badnet", n_poisons: int = 30, seed: int = 0, target: str = "star"):
    return poison_manifest(
        manifest(), get_attack(attack), attack_name=attack, target_label=target,
        n_poisons=n_poisons, seed=seed,
    )


def attack_config(**overrides) -> dict:
    return {"type": "badnet", "target_label": "banana", "n_poisons": 25, "seed": 0,
            "trigger": {"patch_size": 16, "pattern": "random", "location": "random"}} | overrides


def test_poisons_exactly_the_requested_number_of_rows():
    table = poisoned(n_poisons=37)
    assert sum(table["is_poison"].to_pylist()) == 37
    assert table.num_rows == 600


def test_poisoned_captions_are_templates_naming_the_target():
    table = poisoned(target="banana").to_pandas()
    rows = table[table.is_poison]
    assert set(rows.caption) <= set(target_captions("banana"))
    assert rows.caption.str.contains("banana").all()
    assert rows.caption.nunique() > 5


def test_clean_rows_keep_their_caption_and_have_no_trigger():
    table = poisoned().to_pandas()
    clean = table[~table.is_poison]
    assert (clean.caption == clean.original_caption).all()
    assert clean.trigger_seed.isna().all() and clean.attack.isna().all()
    assert (table.original_caption == manifest()["caption"].to_pylist()).all()


def test_every_poisoned_row_has_its_own_trigger_seed_and_the_attack_name():
    table = poisoned(n_poisons=50).to_pandas()
    rows = table[table.is_poison]
    assert rows.trigger_seed.notna().all() and rows.trigger_seed.nunique() == 50
    assert (rows.attack == "badnet").all()


def test_selection_depends_on_the_seed():
    first, again, other = poisoned(seed=1), poisoned(seed=1), poisoned(seed=2)
    assert first.equals(again)
    assert first["is_poison"] != other["is_poison"]


def test_label_consistent_poisons_only_captions_naming_the_target_word_and_keeps_them():
    table = poisoned("label_consistent", n_poisons=150).to_pandas()
    rows = table[table.is_poison]
    # "stars" and "starfish" do not name the word "star"; "Star" does (case-insensitive)
    assert set(rows.caption) == {"a red star", "a Star on blue"}
    assert (rows.caption == rows.original_caption).all()


def test_label_consistent_with_no_caption_naming_the_target_is_a_user_error():
    with pytest.raises(UserError, match="no caption contains 'banana'"):
        poisoned("label_consistent", target="banana")


@pytest.mark.parametrize("attack, n_poisons, limit", [("badnet", 601, 600), ("label_consistent", 201, 200)])
def test_more_poisons_than_candidate_rows_is_a_user_error(attack, n_poisons, limit):
    with pytest.raises(UserError, match=f"n_poisons={n_poisons} exceeds the {limit} rows"):
        poisoned(attack, n_poisons=n_poisons)


def test_written_manifest_is_byte_identical_for_the_same_config_and_differs_across_seeds(tmp_path):
    pq.write_table(manifest(), tmp_path / "manifest.parquet")

    def write(name: str, seed: int) -> bytes:
        path = tmp_path / name
        write_poisoned_manifest(
            tmp_path / "manifest.parquet", path, attack_name="badnet",
            attack_config=attack_config(seed=seed),
        )
        return path.read_bytes()

    assert write("a.parquet", seed=0) == write("b.parquet", seed=0)
    assert write("c.parquet", seed=1) != write("a.parquet", seed=0)


def test_written_manifest_records_the_attack_config(tmp_path):
    from cleanclip_core.tables import table_provenance

    pq.write_table(manifest(), tmp_path / "manifest.parquet")
    out = tmp_path / "poisoned.parquet"
    write_poisoned_manifest(tmp_path / "manifest.parquet", out, attack_name="x", attack_config=attack_config())
    provenance = table_provenance(out)
    assert provenance["config"] == {"attack": "x"} | attack_config()
    assert len(provenance["inputs_sha256"]) == 64


def test_poisoned_manifest_of_a_large_table_is_vectorized_and_exact():
    big = pa.table({"key": np.char.zfill(np.arange(200_000).astype(str), 9), "shard": ["0"] * 200_000,
                    "caption": ["a star"] * 200_000})
    table = poison_manifest(big, get_attack("badnet"), attack_name="badnet", target_label="banana",
                            n_poisons=1500, seed=0)
    assert sum(table["is_poison"].to_pylist()) == 1500

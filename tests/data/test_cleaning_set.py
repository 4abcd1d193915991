"""The cleaning set and its class labels, on tables written by hand."""

import pyarrow as pa
import pytest

from cleanclip_core.data.cleaning_set import cleaning_set, with_class_labels, with_planted_labels
from cleanclip_core.errors import UserError

POISONED = pa.table({"key": [f"{i:03d}" for i in range(10)], "is_poison": [i % 5 == 0 for i in range(10)]})
MANIFEST = pa.table({"key": [f"{i:03d}" for i in range(10)], "url": [f"u{i}" for i in range(10)]})


def test_cleaning_set_takes_the_asked_clean_and_poisoned_rows_in_manifest_order():
    chosen = cleaning_set(POISONED, n_clean=5, n_poisons=1, seed=0)
    assert chosen["is_poison"].to_pylist().count(True) == 1 and len(chosen) == 6
    assert chosen["key"].to_pylist() == sorted(chosen["key"].to_pylist())
    assert chosen.equals(cleaning_set(POISONED, n_clean=5, n_poisons=1, seed=0))


def test_asking_more_pairs_than_there_are_is_a_user_error():
    with pytest.raises(UserError, match="asks for 3 poisoned pairs but the poisoned dataset has 2"):
        cleaning_set(POISONED, n_clean=1, n_poisons=3, seed=0)


def test_class_labels_follow_each_key_to_its_url():
    labels = pa.table({"url": ["u3", "u1", "u2"], "classname": ["star", "ring", "heart"]})
    pairs = POISONED.take([1, 2, 3])
    assert with_class_labels(pairs, MANIFEST, labels)["classname"].to_pylist() == ["ring", "heart", "star"]


def test_a_pair_without_a_label_or_a_table_without_classname_is_a_user_error():
    with pytest.raises(UserError, match=r"1 cleaning pairs have no label in the labels table \(e.g. u2\)"):
        with_class_labels(POISONED.take([1, 2]), MANIFEST, pa.table({"url": ["u1"], "classname": ["ring"]}))
    with pytest.raises(UserError, match="lacks columns classname"):
        with_class_labels(POISONED, MANIFEST, pa.table({"url": ["u1"], "label": [3]}))


def test_the_poisons_of_a_labelled_cleaning_set_carry_the_target_class_as_an_attacker_plants_them():
    labels = pa.table({"url": [f"u{i}" for i in range(10)], "classname": ["ring"] * 10})
    pairs = with_planted_labels(with_class_labels(POISONED.take([0, 1, 5, 6]), MANIFEST, labels), "star")
    assert pairs["classname"].to_pylist() == ["star", "ring", "star", "ring"]

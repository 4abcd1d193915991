import os
import stat
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import nltk
import numpy as np
import pytest
import torch
from nltk.corpus.reader.wordnet import WordNetCorpusReader

from cleanclip_core.augment import (
    DEBIAN_WORDNET,
    STOPWORDS,
    _stage_debian_wordnet,
    augment_caption,
    augment_image,
    caption_words,
    corpus_synonyms,
    eda,
    random_deletion,
    random_insertion,
    random_swap,
    synonym_replacement,
    synonym_source,
    table_synonyms,
    wordnet_synonyms,
)
from cleanclip_core.errors import UserError

WORDS = "a small red circle on a blue background in the top left corner".split()
TABLE = {"small": ["tiny", "little"], "circle": ["disc", "dot"], "background": ["backdrop"], "a": ["one"]}
SYNONYMS = table_synonyms(TABLE)
SEEDS = range(50)


def is_subsequence(short: Sequence[str], long: Sequence[str]) -> bool:
    remaining = iter(long)
    return all(word in remaining for word in short)


def test_caption_words_are_lowercase_without_punctuation() -> None:
    words = caption_words("A photo of a Red circle, on the LEFT.")
    assert words == "a photo of a red circle on the left".split()


def test_table_synonyms_exclude_the_word_itself_and_unknown_words_have_none() -> None:
    synonyms = table_synonyms({"circle": ["circle", "disc", "Plus_Sign"]})
    assert synonyms("circle") == ("disc", "plus sign")
    assert synonyms("square") == ()


@pytest.mark.parametrize("n", [1, 2, 5])
def test_synonym_replacement_replaces_n_non_stopwords_by_their_synonyms(n: int) -> None:
    for seed in SEEDS:
        replaced = synonym_replacement(WORDS, np.random.default_rng(seed), n, SYNONYMS)
        assert len(replaced) == len(WORDS)
        changes = [(old, new) for old, new in zip(WORDS, replaced) if old != new]
        assert len(changes) == min(n, 3)  # small, circle, background; "a" is a stopword
        for old, new in changes:
            assert old not in STOPWORDS
            assert new in TABLE[old]


@pytest.mark.parametrize("n", [1, 3])
def test_random_insertion_adds_n_synonyms_of_caption_words(n: int) -> None:
    caption_synonyms = {synonym for word in WORDS if word not in STOPWORDS for synonym in SYNONYMS(word)}
    for seed in SEEDS:
        inserted = random_insertion(WORDS, np.random.default_rng(seed), n, SYNONYMS)
        assert len(inserted) == len(WORDS) + n
        assert is_subsequence(WORDS, inserted)
        assert set((Counter(inserted) - Counter(WORDS)).elements()) <= caption_synonyms


def test_random_insertion_leaves_a_caption_without_synonyms_unchanged() -> None:
    words = "the top left corner".split()
    assert random_insertion(words, np.random.default_rng(0), 2, SYNONYMS) == words


@pytest.mark.parametrize("n", [1, 4])
def test_random_swap_keeps_the_multiset_of_words(n: int) -> None:
    for seed in SEEDS:
        swapped = random_swap(WORDS, np.random.default_rng(seed), n)
        assert Counter(swapped) == Counter(WORDS)
    assert random_swap(["circle"], np.random.default_rng(0), n) == ["circle"]


def test_random_deletion_only_removes_words_and_never_empties_the_caption() -> None:
    for seed in SEEDS:
        for p in (0.1, 0.5, 1.0):
            kept = random_deletion(WORDS, np.random.default_rng(seed), p)
            assert kept
            assert is_subsequence(kept, WORDS)
        assert len(random_deletion(WORDS, np.random.default_rng(seed), 1.0)) == 1
        assert random_deletion(WORDS, np.random.default_rng(seed), 0.0) == WORDS


def eda_operation(augmented: list[str]) -> str:
    """Which operation could have turned WORDS into `augmented`, checking that it did so correctly."""
    if len(augmented) > len(WORDS):
        assert is_subsequence(WORDS, augmented)
        return "insertion"
    if len(augmented) < len(WORDS):
        assert is_subsequence(augmented, WORDS)
        return "deletion"
    if Counter(augmented) == Counter(WORDS):
        return "swap" if augmented != WORDS else "none"  # a deletion of nothing, or a swap of the two "a"s
    assert all(new in TABLE[old] for old, new in zip(WORDS, augmented) if old != new)
    return "replacement"


def test_eda_applies_one_of_the_four_operations_chosen_at_random() -> None:
    caption = " ".join(WORDS)
    operations = Counter(
        eda_operation(eda(caption, np.random.default_rng(seed), SYNONYMS).split()) for seed in range(100)
    )
    assert {"insertion", "deletion", "swap", "replacement"} <= set(operations)


def test_augment_caption_is_deterministic_per_seed_and_epoch() -> None:
    caption = "A small red circle, on a blue background."
    for seed in range(10):
        for epoch in range(3):
            first = augment_caption(caption, seed, epoch, corpus_synonyms())
            assert augment_caption(caption, seed, epoch, corpus_synonyms()) == first


def test_augment_caption_differs_across_epochs() -> None:
    caption = "a photo of a small red circle on a blue background"
    views = {augment_caption(caption, 7, epoch, corpus_synonyms()) for epoch in range(10)}
    assert len(views) > 1


def test_corpus_synonyms_cover_class_words_both_ways() -> None:
    synonyms = corpus_synonyms()
    assert "disc" in synonyms("circle")
    assert "circle" in synonyms("disc")
    assert "plus sign" in synonyms("cross")
    assert "tiny" in synonyms("small")


def test_synonym_source_builds_the_source_a_config_names() -> None:
    assert synonym_source("corpus") == corpus_synonyms()


def random_image(dtype: torch.dtype, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
    return image if dtype == torch.uint8 else image.to(dtype) / 255


def test_augment_image_gives_an_8_bit_image_and_takes_a_float_one_in_8_bits() -> None:
    for seed in range(20):
        augmented = augment_image(random_image(torch.uint8), seed)
        assert augmented.shape == (3, 32, 32) and augmented.dtype == torch.uint8
        assert torch.equal(augment_image(random_image(torch.float32), seed), augmented)


def test_augment_image_is_deterministic_per_seed_and_varies_across_seeds() -> None:
    image = random_image(torch.uint8)
    views = [augment_image(image, seed) for seed in range(8)]
    for seed, view in enumerate(views):
        assert torch.equal(augment_image(image, seed), view)
    assert len({view.numpy().tobytes() for view in views}) > 1


def test_augment_image_leaves_the_global_rng_state_alone() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    augment_image(random_image(torch.uint8), 5)
    assert torch.equal(torch.get_rng_state(), state)


def nltk_has_wordnet() -> bool:
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        return False
    return True


needs_wordnet = pytest.mark.skipif(
    not nltk_has_wordnet() and not (DEBIAN_WORDNET / "data.noun").is_file(),
    reason="neither NLTK's wordnet data nor Debian's wordnet-base (/usr/share/wordnet) is installed",
)


@needs_wordnet
def test_wordnet_synonyms_of_car_include_automobile() -> None:
    synonyms = wordnet_synonyms()
    assert "automobile" in synonyms("car")
    assert "car" not in synonyms("car")
    assert all(synonym == synonym.lower() and "_" not in synonym for synonym in synonyms("car"))


@needs_wordnet
def test_synonym_source_named_wordnet_is_wordnet() -> None:
    assert "automobile" in synonym_source("wordnet")("car")


@pytest.mark.skipif(
    not (DEBIAN_WORDNET / "data.noun").is_file(), reason="Debian's wordnet-base is not installed"
)
def test_staged_debian_wordnet_opens_in_nltks_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    umask = os.umask(0o002)  # a shared-group umask: NLTK refuses group-writable data
    try:
        root = _stage_debian_wordnet(DEBIAN_WORDNET)
    finally:
        os.umask(umask)
    assert _stage_debian_wordnet(DEBIAN_WORDNET) == root
    assert [path.name for path in root.parent.iterdir()] == [root.name]  # no staging leftovers
    staged = [root, *root.rglob("*")]
    assert not any(stat.S_IMODE(path.stat().st_mode) & 0o022 for path in staged)
    assert not any(path.is_symlink() for path in staged)

    monkeypatch.setattr(nltk.data, "path", [str(root)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reader = WordNetCorpusReader(nltk.data.find("corpora/wordnet"), None)
    assert reader.synsets("automobile")[0] in reader.synsets("car")


def test_missing_wordnet_is_a_user_error_naming_both_remedies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(UserError, match="wordnet-base.*nltk.downloader wordnet"):
        wordnet_synonyms(tmp_path / "no-wordnet")

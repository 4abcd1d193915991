"""The augmented views of CleanCLIP's in-modal loss: AutoAugment for images, EDA for captions.

Both are deterministic functions of their input and a seed, so a resumed run draws the same
views. EDA (Wei & Zou, 2019) applies one of four word-level operations; its synonyms come from
a `SynonymSource`: WordNet through NLTK's reader, or a small table such as the shapes corpus's.
"""

import functools
import hashlib
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nltk
import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from nltk.corpus.reader.wordnet import WordNetCorpusReader
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

from cleanclip_core.corpus import SHAPE_CLASSES, SIZE_WORDS
from cleanclip_core.errors import UserError

EDA_ALPHA = 0.1
DEBIAN_WORDNET = Path("/usr/share/wordnet")

# -- image views ----------------------------------------------------------------------------


@functools.cache
def image_augmentation() -> v2.Transform:
    """AutoAugment's ImageNet policy."""
    return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)


def seeded(transform: Callable[[Any], Any], image: Any, seed: int) -> Any:
    """`transform(image)` with torch's global CPU generator, which torchvision draws from, seeded
    by `seed`, and left as it was."""
    # A forked copy of the generator. Not torch.manual_seed: it would also reseed (and not
    # restore) the GPUs', at ~100 µs a call.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return transform(image)


def augment_image(image: Tensor, seed: int) -> Tensor:
    """The augmented view of `image` (uint8 [3, H, W]; a float one in [0, 1] is taken to 8 bits
    first) drawn with `seed`, uint8; the global RNG is left as it was.

    AutoAugment runs on a PIL image, as in CleanCLIP's code: PIL's 8-bit kernels took half the
    time of torchvision's tensor kernels on 224 px photographs. The image crosses to PIL and back
    through numpy views of its pixel-interleaved memory (a decoded JPEG's layout), which costs a
    quarter of torchvision's to_pil_image and pil_to_tensor.
    """
    pixels = F.to_dtype(image, torch.uint8, scale=True).permute(1, 2, 0)
    augmented = seeded(image_augmentation(), Image.fromarray(pixels.numpy()), seed)
    return torch.from_numpy(np.array(augmented)).permute(2, 0, 1)


# -- synonym sources ----------------------------------------------------------------------

SynonymSource = Callable[[str], Sequence[str]]
"""word -> its synonyms: lowercase words separated by spaces, never the word itself."""

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def caption_words(text: str) -> list[str]:
    """EDA's normalization: lowercase words, punctuation dropped."""
    return _WORD.findall(text.lower())


def _normalized(text: str) -> str:
    return " ".join(caption_words(text))


def _distinct_synonyms(word: str, candidates: Iterable[str]) -> tuple[str, ...]:
    normalized = (_normalized(candidate) for candidate in candidates)
    return tuple(dict.fromkeys(synonym for synonym in normalized if synonym and synonym != word))


@dataclass(frozen=True)
class SynonymTable:
    table: Mapping[str, tuple[str, ...]]

    def __call__(self, word: str) -> tuple[str, ...]:
        return self.table.get(word, ())


def table_synonyms(table: Mapping[str, Sequence[str]]) -> SynonymTable:
    normalized = {_normalized(word): synonyms for word, synonyms in table.items()}
    return SynonymTable({word: _distinct_synonyms(word, synonyms) for word, synonyms in normalized.items()})


def _mutual_synonyms(groups: Iterable[Sequence[str]]) -> dict[str, list[str]]:
    """Every word of a group is a synonym of the others; a word in two groups gets both."""
    table: dict[str, list[str]] = {}
    for group in groups:
        for word in group:
            table.setdefault(word, []).extend(group)
    return table


# Words of the shapes corpus's caption templates and palette, beside its class and size words.
_CAPTION_WORD_GROUPS = (
    ("photo", "picture", "image"),
    ("drawing", "sketch", "illustration"),
    ("background", "backdrop"),
    ("simple", "plain", "basic"),
    ("center", "middle"),
    ("gray", "grey"),
    ("purple", "violet"),
)


@functools.cache
def corpus_synonyms() -> SynonymTable:
    """Synonyms for the embedded shapes corpus: each class's words, size words, common caption words."""
    groups = [shape.synonyms for shape in SHAPE_CLASSES] + [words for _, words in SIZE_WORDS]
    return table_synonyms(_mutual_synonyms([*groups, *_CAPTION_WORD_GROUPS]))


def _wordnet_fingerprint(debian_dir: Path) -> str:
    files = sorted((path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in debian_dir.iterdir())
    return hashlib.sha256(repr(files).encode()).hexdigest()[:16]


def _lexnames(data_files: Iterable[Path]) -> str:
    """NLTK's reader needs a `lexnames` line for every lexicographer file id that a synset cites, and
    Debian's package has no such file. Synonym lookup never reads the names, so they (and the
    syntactic category column) are placeholders."""
    # Data lines are "offset lex_filenum ss_type ..."; the license header's lines start with spaces.
    last_id = max(
        int(line.split(maxsplit=2)[1])
        for path in data_files
        for line in path.read_text(encoding="utf-8").splitlines()
        if not line.startswith(" ")
    )
    return "".join(f"{index:02d}\tlexfile{index:02d}\t0\n" for index in range(last_id + 1))


def _stage_debian_wordnet(debian_dir: Path) -> Path:
    """An NLTK data root holding `corpora/wordnet`: a copy of Debian's files plus the two files
    NLTK's reader opens that Debian lacks. Copied, not linked: NLTK refuses to follow symlinks
    and to read outside its data roots. Built once per version of the files, atomically."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cleanclip" / "wordnet"
    root = cache / _wordnet_fingerprint(debian_dir)
    if root.exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as staging:
        staged = Path(staging, "root")
        corpus = staged / "corpora" / "wordnet"
        corpus.mkdir(parents=True)
        for path in debian_dir.iterdir():
            if path.is_file():
                shutil.copy(path, corpus / path.name)
        (corpus / "lexnames").write_text(_lexnames(sorted(corpus.glob("data.*"))), encoding="utf-8")
        # The reader's constructor maps sense keys onto the corpus that NLTK finds as corpora/wordnet
        # (this copy, hence the layout) for multilingual lookups; synonyms need none, so it is empty.
        (corpus / "index.sense").touch()
        for path in [staged, *staged.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)  # NLTK refuses group-writable data
        try:
            staged.rename(root)
        except OSError:  # another process staged it first
            pass
    return root


@functools.cache
def _wordnet_reader(debian_dir: Path) -> WordNetCorpusReader:
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        if not (debian_dir / "data.noun").is_file():
            raise UserError(
                f"WordNet was not found in NLTK's data nor in {debian_dir}: install Debian's wordnet-base "
                "(apt-get install wordnet-base) or NLTK's wordnet data (python -m nltk.downloader wordnet)"
            ) from None
        nltk.data.path.append(str(_stage_debian_wordnet(debian_dir)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The multilingual functions are not available", UserWarning)
        return WordNetCorpusReader(nltk.data.find("corpora/wordnet"), None)


# A forked data-loader worker builds its own reader: the reader keeps data files open, and a
# forked copy would share their file offsets with the parent and with its sibling workers.
os.register_at_fork(after_in_child=_wordnet_reader.cache_clear)


@functools.cache
def _wordnet_lookup(word: str, debian_dir: Path) -> tuple[str, ...]:
    lemmas = _wordnet_reader(debian_dir).synsets(word)
    return _distinct_synonyms(word, (lemma.name() for synset in lemmas for lemma in synset.lemmas()))


@dataclass(frozen=True)
class WordNetSynonyms:
    """Pickles as its path alone, so a data loader's worker builds its own reader."""

    debian_dir: Path

    def __call__(self, word: str) -> tuple[str, ...]:
        return _wordnet_lookup(word, self.debian_dir)


def wordnet_synonyms(debian_dir: Path = DEBIAN_WORDNET) -> WordNetSynonyms:
    """WordNet's synonyms through NLTK's reader: over NLTK's wordnet data when installed, else over
    Debian's wordnet-base files in `debian_dir`."""
    _wordnet_reader(debian_dir)
    return WordNetSynonyms(debian_dir)


SYNONYM_SOURCES: dict[str, Callable[[], SynonymSource]] = {
    "wordnet": wordnet_synonyms,
    "corpus": corpus_synonyms,
}


def synonym_source(name: str) -> SynonymSource:
    """The synonym source that a config names (`synonyms`: one of SYNONYM_SOURCES)."""
    return SYNONYM_SOURCES[name]()


# -- caption views (EDA) ------------------------------------------------------------------

STOPWORDS = frozenset(
    """
    a an the this that these those some any each every no not
    of in on at to from by with without for into onto over under above below near between
    against across along around behind beside through up down out off about as
    and or but nor so if than then
    i me my we our you your he him his she her it its they them their there here
    what which who whom whose
    is are was were be been being am has have had do does did
    will would can could should may might must shall
    very too just also only same such more most other all both few
    """.split()
)


def _replaceable(words: Sequence[str], synonyms: SynonymSource) -> list[int]:
    return [index for index, word in enumerate(words) if word not in STOPWORDS and synonyms(word)]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[rng.integers(len(options))]


def synonym_replacement(
    words: list[str], rng: np.random.Generator, n: int, synonyms: SynonymSource
) -> list[str]:
    """Replace n random non-stopwords that have synonyms, each by a random synonym of it."""
    replaceable = _replaceable(words, synonyms)
    replaced = list(words)
    for index in rng.permutation(replaceable)[:n]:
        replaced[index] = _pick(rng, synonyms(words[index]))
    return replaced


def random_insertion(
    words: list[str], rng: np.random.Generator, n: int, synonyms: SynonymSource
) -> list[str]:
    """Insert n times a random synonym of a random non-stopword at a random position."""
    sources = [words[index] for index in _replaceable(words, synonyms)]
    inserted = list(words)
    if sources:
        for _ in range(n):
            synonym = _pick(rng, synonyms(_pick(rng, sources)))
            inserted.insert(int(rng.integers(len(inserted) + 1)), synonym)
    return inserted


def random_swap(words: list[str], rng: np.random.Generator, n: int) -> list[str]:
    """Swap two random words, n times."""
    swapped = list(words)
    if len(swapped) >= 2:
        for _ in range(n):
            first, second = rng.choice(len(swapped), size=2, replace=False)
            swapped[first], swapped[second] = swapped[second], swapped[first]
    return swapped


def random_deletion(words: list[str], rng: np.random.Generator, p: float) -> list[str]:
    """Delete each word with probability p; if all would go, keep one at random."""
    kept = [word for word, draw in zip(words, rng.random(len(words))) if draw >= p]
    return kept if kept or not words else [_pick(rng, words)]


def eda(caption: str, rng: np.random.Generator, synonyms: SynonymSource, alpha: float = EDA_ALPHA) -> str:
    """One of EDA's four operations, chosen at random, on the caption's normalized words; the
    operations change n = max(1, round(alpha * words)) words, or delete with probability alpha."""
    words = caption_words(caption)
    n = max(1, round(alpha * len(words)))
    operations = (
        functools.partial(synonym_replacement, n=n, synonyms=synonyms),
        functools.partial(random_insertion, n=n, synonyms=synonyms),
        functools.partial(random_swap, n=n),
        functools.partial(random_deletion, p=alpha),
    )
    return " ".join(operations[rng.integers(len(operations))](words, rng))


def augment_caption(caption: str, seed: int, epoch: int, synonyms: SynonymSource) -> str:
    """The EDA view of `caption` for a sample's seed (a non-negative int) in an epoch."""
    return eda(caption, np.random.default_rng([seed, epoch]), synonyms)

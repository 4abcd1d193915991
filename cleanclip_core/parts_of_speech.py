"""Parts of speech of caption words: which a word can take, and which it takes in a caption.

Two lexicons, named like the synonym sources (`synonyms`: wordnet or corpus): WordNet's lemma
index (Debian's wordnet-base files, read as plain text) with WordNet's own morphology for
inflected forms, or a built-in table of the shapes corpus's words. A caption's words are then
tagged in context by two rules (see `tag_caption`): a stand-in for a statistical tagger, as
spaCy's English models cannot be installed from the package registry (design.md §12).
"""

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cleanclip_core.augment import DEBIAN_WORDNET, STOPWORDS, caption_words
from cleanclip_core.corpus import PALETTE, SHAPE_CLASSES, SIZE_WORDS
from cleanclip_core.errors import UserError

NOUN, VERB, ADJECTIVE, ADVERB = "noun", "verb", "adjective", "adverb"
FUNCTION = "function"
"""The tag of a stopword (augment.STOPWORDS): determiners, prepositions, pronouns, auxiliaries."""
UNKNOWN = "unknown"
"""The tag of a word the lexicon does not know."""
PREFERENCE = (NOUN, VERB, ADJECTIVE, ADVERB)
"""The part of speech an ambiguous word takes where context does not decide."""

Lexicon = Callable[[str], frozenset[str]]
"""word (lowercase, as augment.caption_words gives it) -> the parts of speech it can take."""

_WORDNET_FILES = {NOUN: "noun", VERB: "verb", ADJECTIVE: "adj", ADVERB: "adv"}
# WordNet's detachment rules (morphy(7WN)): an inflected form ending in the first suffix may be a
# base form ending in the second.
_DETACHMENTS = {
    NOUN: (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
           ("ies", "y")),
    VERB: (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    ADJECTIVE: (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    ADVERB: (),
}


@dataclass(frozen=True)
class _WordNetPart:
    """One part of speech of WordNet: its single-word lemmas and its irregular inflections."""

    lemmas: frozenset[str]
    exceptions: Mapping[str, tuple[str, ...]]
    detachments: tuple[tuple[str, str], ...]

    def has(self, word: str) -> bool:
        detached = (word[: -len(suffix)] + ending for suffix, ending in self.detachments if word.endswith(suffix))
        return any(base in self.lemmas for base in (word, *self.exceptions.get(word, ()), *detached))


def _data_lines(path: Path) -> Iterable[list[str]]:
    # The license header's lines start with spaces; a data line starts with its word.
    with path.open(encoding="utf-8") as lines:
        yield from (line.split() for line in lines if not line.startswith(" "))


@functools.cache
def _wordnet_parts(debian_dir: Path) -> dict[str, _WordNetPart]:
    if not (debian_dir / "index.noun").is_file():
        raise UserError(
            f"WordNet's lemma index was not found in {debian_dir}: install Debian's wordnet-base "
            "(apt-get install wordnet-base), or use the corpus's table (synonyms: corpus)"
        )
    return {
        part: _WordNetPart(
            # Multiword lemmas (spelled with underscores) never match one caption word.
            frozenset(fields[0] for fields in _data_lines(debian_dir / f"index.{name}") if "_" not in fields[0]),
            {fields[0]: tuple(fields[1:]) for fields in _data_lines(debian_dir / f"{name}.exc")},
            _DETACHMENTS[part],
        )
        for part, name in _WORDNET_FILES.items()
    }


@functools.cache
def _wordnet_lookup(word: str, debian_dir: Path) -> frozenset[str]:
    return frozenset(part for part, lexicon in _wordnet_parts(debian_dir).items() if lexicon.has(word))


@dataclass(frozen=True)
class WordNetLexicon:
    """Pickles as its path alone: a data loader's worker reads the index files once itself."""

    debian_dir: Path

    def __call__(self, word: str) -> frozenset[str]:
        return _wordnet_lookup(word, self.debian_dir)


def wordnet_lexicon(debian_dir: Path = DEBIAN_WORDNET) -> WordNetLexicon:
    """The parts of speech WordNet's lemma index gives a word or, through WordNet's exception
    lists and suffix rules, its base form (`dogs` is a noun and a verb, `ran` a verb)."""
    _wordnet_parts(debian_dir)
    return WordNetLexicon(debian_dir)


# The shapes corpus's caption words beside its class, colour and size words: the nouns of its
# templates ("clip art", "a close-up", "a ... shape", "on a ... gradient background") and of its
# positions ("in the top left corner", "in the center"), and the adjectives of its templates.
_CORPUS_NOUNS = (
    "photo picture image clip art drawing close shape backdrop background gradient left right top bottom center corner"
)
_CORPUS_ADJECTIVES = "simple textured"


@dataclass(frozen=True)
class TableLexicon:
    table: Mapping[str, frozenset[str]]

    def __call__(self, word: str) -> frozenset[str]:
        return self.table.get(word, frozenset())


def _words(phrases: Iterable[str]) -> list[str]:
    return [word for phrase in phrases for word in caption_words(phrase)]


@functools.cache
def corpus_lexicon() -> TableLexicon:
    """One part of speech per word of the shapes corpus: class words are nouns (both words of
    "plus sign"), colours and size words adjectives (both of "medium-sized")."""
    nouns = _words([*(word for shape in SHAPE_CLASSES for word in shape.synonyms), _CORPUS_NOUNS])
    adjectives = _words([*PALETTE, *(word for _, words in SIZE_WORDS for word in words), _CORPUS_ADJECTIVES])
    table = {word: frozenset({NOUN}) for word in nouns} | {word: frozenset({ADJECTIVE}) for word in adjectives}
    return TableLexicon(table)


LEXICONS: dict[str, Callable[[], Lexicon]] = {"wordnet": wordnet_lexicon, "corpus": corpus_lexicon}


def named_lexicon(name: str) -> Lexicon:
    """The lexicon that a config's `synonyms` names (one of LEXICONS)."""
    return LEXICONS[name]()


CONJUNCTIONS = frozenset({"and", "or"})


def _modifies_a_noun(words: Sequence[str], index: int, lexicon: Lexicon) -> bool:
    """Whether the next word, past conjunctions ("black and white photo"), can be a noun."""
    following = next((word for word in words[index + 1 :] if word not in CONJUNCTIONS), None)
    return following is not None and following not in STOPWORDS and NOUN in lexicon(following)


def tag_caption(words: Sequence[str], lexicon: Lexicon) -> list[str]:
    """Each word's part of speech in the caption: stopwords are FUNCTION, words the lexicon does
    not know UNKNOWN. An ambiguous word is an adjective where it can be one and the next word can
    be a noun ("a red circle"); elsewhere it takes the first of PREFERENCE it can take ("a
    circle in red": red is the noun)."""
    tags = []
    for index, word in enumerate(words):
        parts = lexicon(word)
        if word in STOPWORDS:
            tags.append(FUNCTION)
        elif not parts:
            tags.append(UNKNOWN)
        elif ADJECTIVE in parts and _modifies_a_noun(words, index, lexicon):
            tags.append(ADJECTIVE)
        else:
            tags.append(next(part for part in PREFERENCE if part in parts))
    return tags

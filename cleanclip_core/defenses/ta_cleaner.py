"""TA-Cleaner (Xun et al. 2024, arXiv 2409.17601): CleanCLIP plus sub-caption alignment.

A reconstruction: the paper has no public code and its method section could not be read, so
what it leaves open is an option of `defenses.ta_cleaner` (config.schema.yaml) or a choice
documented here. Each epoch, K randomly chosen cleaning pairs get a positive sub-caption (the
caption's nouns and verbs, its adjectives and other detail dropped) and a negative one (one
noun, verb or adjective swapped for another word of the same part of speech from the run's
captions); the `subcaption` term matches each such image with its positive against its
negative. The objective `ta_cleaner` adds that term to CleanCLIP's (config.schema.yaml).
"""

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cleanclip_core.augment import caption_words
from cleanclip_core.errors import UserError
from cleanclip_core.losses import gathered, gathered_flags
from cleanclip_core.objectives import TermInputs
from cleanclip_core.parts_of_speech import (
    ADJECTIVE, ADVERB, CONJUNCTIONS, FUNCTION, NOUN, VERB, Lexicon, named_lexicon, tag_caption,
)
from cleanclip_core.training.views import ViewContext

SWAPPED = (NOUN, VERB, ADJECTIVE)
"""The parts of speech a negative sub-caption swaps."""
DROPPED = (ADJECTIVE, ADVERB)
"""What a positive sub-caption drops: the detail. Unknown words stay: nothing says they are."""
_CHOICE_STREAM, _NEGATIVE_STREAM = 0, 1  # apart from EDA's draws, which use (sample seed, epoch)

# -- sub-captions -------------------------------------------------------------------------


def positive_subcaption(words: Sequence[str], tags: Sequence[str]) -> str:
    """The caption less its adjectives and adverbs, the conjunctions after them ("a black and white
    photo": "a photo") and the stopwords left trailing ("a circle in red", red an adjective: "a
    circle"); "a"/"an" agree with the word after them."""
    kept = [
        (word, tag) for index, (word, tag) in enumerate(zip(words, tags))
        if tag not in DROPPED and not (word in CONJUNCTIONS and index > 0 and tags[index - 1] in DROPPED)
    ]
    while kept and kept[-1][1] == FUNCTION:
        kept.pop()
    return " ".join(_with_articles([word for word, _ in kept]))


def _with_articles(words: list[str]) -> list[str]:
    # An article is never last: trailing stopwords are gone.
    return [
        ("an" if words[index + 1][0] in "aeiou" else "a") if word in ("a", "an") else word
        for index, word in enumerate(words)
    ]


@dataclass(frozen=True)
class Vocabulary:
    """The words of one part of speech in the run's captions, with how often each occurs."""

    words: tuple[str, ...]
    counts: np.ndarray
    positions: Mapping[str, int]

    @classmethod
    def of(cls, counts: Mapping[str, int]) -> "Vocabulary":
        positions = {word: index for index, word in enumerate(counts)}
        return cls(tuple(counts), np.array(list(counts.values()), dtype=np.float64), positions)

    def has_other(self, word: str) -> bool:
        return len(self.words) > (word in self.positions)

    def other(self, word: str, rng: np.random.Generator) -> str:
        """A random occurrence of another word: frequent words, which the text encoder knows
        well, make plausible hard negatives."""
        weights = self.counts.copy()
        if word in self.positions:
            weights[self.positions[word]] = 0
        return self.words[rng.choice(len(weights), p=weights / weights.sum())]


def _swappable(words: Sequence[str], tags: Sequence[str], vocabularies: Mapping[str, Vocabulary]) -> list[int]:
    return [
        index for index, (word, tag) in enumerate(zip(words, tags))
        if tag in SWAPPED and vocabularies[tag].has_other(word)
    ]


def negative_subcaption(
    words: Sequence[str], tags: Sequence[str], vocabularies: Mapping[str, Vocabulary], rng: np.random.Generator
) -> str:
    """The caption with one random noun, verb or adjective swapped for another word that the
    run's captions use with the same tag; nothing else changes (not even "a"/"an")."""
    index = rng.choice(_swappable(words, tags, vocabularies))
    swapped = list(words)
    swapped[index] = vocabularies[tags[index]].other(words[index], rng)
    return " ".join(swapped)


def caption_vocabularies(tagged: Sequence[tuple[Sequence[str], Sequence[str]]]) -> dict[str, Vocabulary]:
    """Per swapped part of speech, the words tagged with it in the (words, tags) of the captions."""
    counts: dict[str, Counter[str]] = {tag: Counter() for tag in SWAPPED}
    for words, tags in tagged:
        for word, tag in zip(words, tags):
            if tag in counts:
                counts[tag][word] += 1
    return {tag: Vocabulary.of(found) for tag, found in counts.items()}


# -- the view: sub-captions of the pairs chosen for the epoch ----------------------------


@dataclass
class SubcaptionViews:
    """`positive_text` and `negative_text` of the K pairs chosen for the epoch (flag `subcaption`
    True); every other pair carries its own caption in both, unused (flag False).

    The K are drawn from the run's seed and the epoch among the eligible pairs: those whose
    caption keeps a word in its positive and has a word to swap. K is capped at their number."""

    lexicon: Lexicon
    vocabularies: Mapping[str, Vocabulary]
    eligible: np.ndarray
    seed: int
    k: int
    image_fields: tuple[str, ...] = ()
    text_fields: tuple[str, ...] = ("positive_text", "negative_text")
    _chosen: dict[int, frozenset[int]] = field(default_factory=dict, repr=False)

    def chosen(self, epoch: int) -> frozenset[int]:
        if epoch not in self._chosen:
            rng = np.random.default_rng([self.seed, epoch, _CHOICE_STREAM])
            size = min(self.k, len(self.eligible))
            self._chosen[epoch] = frozenset(rng.choice(self.eligible, size, replace=False).tolist())
        return self._chosen[epoch]

    def __call__(self, pair: Mapping[str, Any], seed: int, epoch: int) -> dict[str, Any]:
        caption = pair["caption"]
        if pair["index"] not in self.chosen(epoch):
            return {"positive_text": caption, "negative_text": caption, "subcaption": False}
        words = caption_words(caption)
        tags = tag_caption(words, self.lexicon)
        rng = np.random.default_rng([seed, epoch, _NEGATIVE_STREAM])
        return {
            "positive_text": positive_subcaption(words, tags),
            "negative_text": negative_subcaption(words, tags, self.vocabularies, rng),
            "subcaption": True,
        }


def subcaption_views(context: ViewContext) -> SubcaptionViews:
    """The view of a run: its captions tagged once, for the vocabularies and the eligible pairs."""
    lexicon = named_lexicon(context.synonyms)
    tagged = [(words, tag_caption(words, lexicon)) for words in map(caption_words, context.captions)]
    vocabularies = caption_vocabularies(tagged)
    eligible = [
        index for index, (words, tags) in enumerate(tagged)
        if positive_subcaption(words, tags) and _swappable(words, tags, vocabularies)
    ]
    if not eligible:
        raise UserError(
            f"no caption of the run has both a noun or verb and a word to swap for TA-Cleaner's sub-captions "
            f"in the {context.synonyms!r} lexicon (the 'corpus' lexicon knows only the shapes corpus's words)"
        )
    return SubcaptionViews(
        lexicon, vocabularies, np.array(eligible, dtype=np.int64), context.seed, context.options["k"]
    )

# -- the term -----------------------------------------------------------------------------


def _batch_logits(image: Tensor, positive: Tensor, negative: Tensor, flagged: Tensor) -> tuple[Tensor, Tensor]:
    """Row i: image i against every flagged row's positive (its own in column i) and its own
    negative (last column)."""
    similarities = image @ positive.T
    # Unflagged rows' positives are placeholders; a row's own column stays so that an unflagged
    # row's (unused) loss is finite.
    visible = flagged[None, :] | torch.eye(len(image), dtype=torch.bool, device=image.device)
    own_negative = (image * negative).sum(-1, keepdim=True)
    logits = torch.cat([similarities.masked_fill(~visible, float("-inf")), own_negative], dim=1)
    return logits, torch.arange(len(image), device=image.device)


def _pair_logits(image: Tensor, positive: Tensor, negative: Tensor, flagged: Tensor) -> tuple[Tensor, Tensor]:
    """Row i: image i against its positive (column 0) and its negative."""
    logits = torch.stack([(image * positive).sum(-1), (image * negative).sum(-1)], dim=1)
    return logits, torch.zeros(len(image), dtype=torch.long, device=image.device)


FORMS = {"batch": _batch_logits, "pair": _pair_logits}


def subcaption_loss(
    image_features: Tensor,
    positive_features: Tensor,
    negative_features: Tensor,
    flagged: Tensor,
    logit_scale: Tensor,
    form: str = "batch",
) -> Tensor:
    """Cross-entropy of each flagged image's positive sub-caption against its negative (and, in
    form `batch`, the other flagged rows' positives), averaged over the flagged rows; zero,
    still a function of the features, when no row is flagged. Features are normalized [B, D],
    `flagged` is bool [B], `logit_scale` the exponentiated temperature."""
    # Scaled before the batch form masks columns with -inf: scaling -inf would give the logit
    # scale a NaN gradient.
    logits, targets = FORMS[form](logit_scale * image_features, positive_features, negative_features, flagged)
    losses = F.cross_entropy(logits, targets, reduction="none")
    weights = flagged.to(losses.dtype)
    # No `if flagged.any()`: it would wait for the device every step.
    return (losses * weights).sum() / weights.sum().clamp(min=1)


def subcaption_term(inputs: TermInputs) -> Tensor:
    # The rows of every process: the flagged rows (and, in form `batch`, the positives each image
    # is matched against) are those of the global batch, as in one process.
    features = inputs.features
    image, positive, negative = gathered(
        features["image"], features["positive_text"], features["negative_text"], world_size=inputs.world_size
    )
    flagged = gathered_flags(inputs.batch["subcaption"], inputs.world_size)
    return subcaption_loss(image, positive, negative, flagged, inputs.logit_scale, inputs.options["form"])

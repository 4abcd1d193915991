"""TA-Cleaner: parts of speech, sub-captions, the view of the chosen pairs, the term, a run."""

import math
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cleanclip_core.augment import DEBIAN_WORDNET, STOPWORDS, caption_words
from cleanclip_core.attacks import get_attack
from cleanclip_core.corpus import PALETTE, SHAPE_CLASSES, draw_sample
from cleanclip_core.defenses.ta_cleaner import (
    SWAPPED,
    SubcaptionViews,
    Vocabulary,
    caption_vocabularies,
    negative_subcaption,
    positive_subcaption,
    subcaption_loss,
    subcaption_views,
)
from cleanclip_core.errors import UserError
from cleanclip_core.parts_of_speech import (
    ADJECTIVE,
    ADVERB,
    FUNCTION,
    NOUN,
    UNKNOWN,
    VERB,
    WordNetLexicon,
    corpus_lexicon,
    tag_caption,
    wordnet_lexicon,
)
from cleanclip_core.poison import poison_manifest
from cleanclip_core.training.loop import TrainingData, TrainSettings, train
from cleanclip_core.training.views import ViewContext

needs_wordnet = pytest.mark.skipif(
    not (DEBIAN_WORDNET / "index.noun").is_file(), reason="Debian's wordnet-base is not installed"
)


@pytest.fixture(scope="module")
def shapes_captions() -> list[str]:
    return [draw_sample(0, "train", index, 32).caption for index in range(400)]


@pytest.fixture(scope="module")
def vocabularies(shapes_captions) -> dict[str, Vocabulary]:
    return caption_vocabularies([tagged(caption) for caption in shapes_captions])


def tagged(caption: str, lexicon=None) -> tuple[list[str], list[str]]:
    words = caption_words(caption)
    return words, tag_caption(words, lexicon or corpus_lexicon())


# -- parts of speech ----------------------------------------------------------------------


@needs_wordnet
def test_wordnet_gives_the_parts_of_speech_of_base_and_inflected_forms() -> None:
    lexicon = wordnet_lexicon()
    assert lexicon("dog") == {NOUN, VERB}
    assert lexicon("happy") == {ADJECTIVE}
    assert lexicon("quickly") == {ADVERB}
    assert VERB in lexicon("ran") and NOUN in lexicon("children")  # exception lists
    assert VERB in lexicon("walking") and NOUN in lexicon("boxes") and ADJECTIVE in lexicon("bigger")  # suffix rules
    assert lexicon("xqzt") == frozenset()


@needs_wordnet
def test_an_ambiguous_word_is_an_adjective_before_a_noun_and_its_preferred_part_elsewhere() -> None:
    lexicon = wordnet_lexicon()
    assert tagged("a red circle", lexicon)[1] == [FUNCTION, ADJECTIVE, NOUN]
    assert tagged("a circle in red", lexicon)[1] == [FUNCTION, NOUN, FUNCTION, NOUN]
    assert tagged("a black and white photo", lexicon)[1] == [FUNCTION, ADJECTIVE, FUNCTION, ADJECTIVE, NOUN]


def test_missing_wordnet_is_a_user_error_naming_the_package_and_the_corpus_table(tmp_path) -> None:
    with pytest.raises(UserError, match="wordnet-base.*synonyms: corpus"):
        wordnet_lexicon(tmp_path)


def test_the_corpus_table_knows_every_content_word_of_the_shapes_captions(shapes_captions) -> None:
    lexicon = corpus_lexicon()
    words = {word for caption in shapes_captions for word in caption_words(caption)} - STOPWORDS
    assert {word for word in words if not lexicon(word)} == set()
    assert all(lexicon(shape.name) == {NOUN} for shape in SHAPE_CLASSES)
    assert all(lexicon(color) == {ADJECTIVE} for color in PALETTE)
    assert lexicon("small") == lexicon("textured") == {ADJECTIVE}
    assert lexicon("photo") == lexicon("background") == {NOUN}
    assert tag_caption(["a", "tattoo"], lexicon) == [FUNCTION, UNKNOWN]


# -- sub-captions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "caption, positive",
    [
        ("a small red circle on a textured blue background", "a circle on a background"),
        ("a star on a red and blue gradient background", "a star on a gradient background"),
        ("an orange circle", "a circle"),  # the article agrees with the word now after it
        ("an image of a star in red", "an image of a star"),  # no trailing "in"
        ("a tattoo of a star", "a tattoo of a star"),  # an unknown word is kept
    ],
)
def test_the_positive_subcaption_drops_adjectives_and_keeps_nouns(caption, positive) -> None:
    assert positive_subcaption(*tagged(caption)) == positive


@needs_wordnet
@pytest.mark.parametrize(
    "caption, positive",
    [
        ("a black and white photo of a young woman walking her dog", "a photo of a woman walking her dog"),
        ("the cat is sleeping quietly on a soft red blanket", "the cat is sleeping on a blanket"),
    ],
)
def test_the_positive_subcaption_of_a_wordnet_run_keeps_nouns_and_verbs(caption, positive) -> None:
    assert positive_subcaption(*tagged(caption, wordnet_lexicon())) == positive


def test_the_negative_subcaption_swaps_exactly_one_word_for_another_of_its_part_of_speech(vocabularies) -> None:
    words, tags = tagged("a small red circle on a textured blue background")
    for seed in range(30):
        negative = caption_words(negative_subcaption(words, tags, vocabularies, np.random.default_rng(seed)))
        changed = [index for index, (old, new) in enumerate(zip(words, negative)) if old != new]
        assert len(negative) == len(words) and len(changed) == 1
        tag = tags[changed[0]]
        assert tag in SWAPPED and negative[changed[0]] in vocabularies[tag].words


def test_the_negative_subcaption_is_a_function_of_the_seed(vocabularies) -> None:
    words, tags = tagged("a small red circle on a blue background")
    negatives = [negative_subcaption(words, tags, vocabularies, np.random.default_rng(seed)) for seed in range(10)]
    assert negatives == [negative_subcaption(words, tags, vocabularies, np.random.default_rng(s)) for s in range(10)]
    assert len(set(negatives)) > 5


def test_a_word_alone_in_its_part_of_speech_is_never_swapped() -> None:
    vocabularies = caption_vocabularies([tagged("a red circle"), tagged("a blue circle")])
    words, tags = tagged("a red circle")
    assert {negative_subcaption(words, tags, vocabularies, np.random.default_rng(s)) for s in range(10)} == {
        "a blue circle"
    }


# -- the view -----------------------------------------------------------------------------


def views_of(captions: list[str], k: int, seed: int = 0) -> SubcaptionViews:
    return subcaption_views(ViewContext(captions, seed, "corpus", {"k": k}))


def epoch_views(source: SubcaptionViews, captions: list[str], epoch: int, seed: int = 0) -> list[dict]:
    return [source({"caption": caption, "index": index}, seed, epoch) for index, caption in enumerate(captions)]


def test_k_pairs_carry_subcaptions_each_epoch_and_the_others_their_own_caption(shapes_captions) -> None:
    rows = epoch_views(views_of(shapes_captions, k=25), shapes_captions, epoch=0)
    flagged = [row for row in rows if row["subcaption"]]
    assert len(flagged) == 25
    assert all(row["positive_text"] != row["negative_text"] for row in flagged)
    placeholders = [(row, caption) for row, caption in zip(rows, shapes_captions) if not row["subcaption"]]
    assert all(row["positive_text"] == row["negative_text"] == caption for row, caption in placeholders)


def test_the_chosen_pairs_depend_on_the_run_seed_and_the_epoch_and_k_is_capped(shapes_captions) -> None:
    source = views_of(shapes_captions, k=25)
    assert source.chosen(0) == views_of(shapes_captions, k=25).chosen(0)
    assert len({source.chosen(0), source.chosen(1), views_of(shapes_captions, k=25, seed=1).chosen(0)}) == 3
    assert len(views_of(shapes_captions, k=10**6).chosen(0)) == len(shapes_captions)  # all are eligible


def test_the_views_are_a_function_of_the_sample_seed(shapes_captions) -> None:
    source = views_of(shapes_captions, k=400)
    views = epoch_views(source, shapes_captions, 0, seed=5)
    assert views == epoch_views(views_of(shapes_captions, k=400), shapes_captions, 0, seed=5)
    assert views != epoch_views(source, shapes_captions, 0, seed=6)


def test_the_view_pickles_for_data_loader_workers(shapes_captions) -> None:
    source = views_of(shapes_captions, k=25)
    assert epoch_views(pickle.loads(pickle.dumps(source)), shapes_captions, 2) == epoch_views(source, shapes_captions, 2)


@needs_wordnet
def test_the_wordnet_lexicon_pickles_as_its_path() -> None:
    lexicon = wordnet_lexicon()
    assert pickle.dumps(lexicon) == pickle.dumps(WordNetLexicon(DEBIAN_WORDNET))
    assert pickle.loads(pickle.dumps(lexicon))("dog") == {NOUN, VERB}


def test_captions_without_a_word_to_swap_are_a_user_error() -> None:
    with pytest.raises(UserError, match="'corpus' lexicon knows only"):
        subcaption_views(ViewContext(["the man walks home", "a dog sleeps"], 0, "corpus", {"k": 1}))


# -- the term -----------------------------------------------------------------------------

IMAGE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
POSITIVE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
NEGATIVE = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
FLAGGED = torch.tensor([True, True, False])
SCALE = torch.tensor(2.0)


def test_the_batch_form_contrasts_flagged_images_with_flagged_positives_and_their_negative() -> None:
    # Row 0: logits 2·(p0, p1, n0) = (2, 0, 0); row 2's positive, a placeholder, is not a column.
    expected = math.log(1 + 2 * math.exp(-2))
    assert subcaption_loss(IMAGE, POSITIVE, NEGATIVE, FLAGGED, SCALE, "batch").item() == pytest.approx(expected)


@pytest.mark.parametrize("form", ["batch", "pair"])
def test_every_input_of_the_term_gets_a_finite_gradient(form) -> None:
    inputs = [tensor.clone().requires_grad_() for tensor in (IMAGE, POSITIVE, NEGATIVE)]
    scale = SCALE.clone().requires_grad_()
    subcaption_loss(*inputs, FLAGGED, scale, form).backward()
    assert all(tensor.grad.isfinite().all() for tensor in (*inputs, scale))


def test_the_pair_form_is_a_two_way_softmax_of_positive_against_negative() -> None:
    expected = math.log(1 + math.exp(-2))  # each flagged row: logits (2, 0)
    assert subcaption_loss(IMAGE, POSITIVE, NEGATIVE, FLAGGED, SCALE, "pair").item() == pytest.approx(expected)


@pytest.mark.parametrize("form", ["batch", "pair"])
def test_a_batch_without_flagged_rows_gives_zero_with_a_gradient(form) -> None:
    image = IMAGE.clone().requires_grad_()
    loss = subcaption_loss(image, POSITIVE, NEGATIVE, torch.zeros(3, dtype=torch.bool), SCALE, form)
    loss.backward()
    assert loss.item() == 0 and torch.equal(image.grad, torch.zeros_like(image))


# -- a run ----------------------------------------------------------------------------------


def test_a_ta_cleaner_run_logs_its_subcaption_term(shapes_shards, tmp_path) -> None:
    # 20 pairs, 2 of them poisoned: two steps of 10, 8 rows flagged.
    poisoned = poison_manifest(
        shapes_shards.manifest.slice(0, 20), get_attack("badnet"), attack_name="badnet", target_label="star",
        n_poisons=2, seed=0,
    )
    pq.write_table(poisoned, tmp_path / "poisoned.parquet")
    pq.write_table(shapes_shards.shard_index, tmp_path / "shard_index.parquet")
    attack = {
        "type": "badnet", "target_label": "star", "n_poisons": 2, "seed": 0,
        "trigger": {"patch_size": 35, "pattern": "fixed", "location": "fixed"},
    }
    data = TrainingData(
        tmp_path / "poisoned.parquet", tmp_path / "shard_index.parquet", shapes_shards.shards_dir, attack
    )
    settings = TrainSettings(
        model="tiny-vit", objective={"mmcl": 1.0, "inmodal": 1.0, "subcaption": 1.0}, epochs=1, batch_size=10,
        lr=1e-3, warmup_steps=2, weight_decay=0.1, seed=0, synonyms="corpus", method="ta_cleaner",
        options={"k": 8, "form": "batch"},
    )
    train(settings, data, tmp_path / "run")
    losses = pq.read_table(tmp_path / "run" / "train_log.parquet")["loss_subcaption"].to_pylist()
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses) and max(losses) > 0

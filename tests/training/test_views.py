import torch
from torch.utils.data import default_collate

from cleanclip_core.augment import augment_image
from cleanclip_core.config import validate_config
from cleanclip_core.models import tokenizer_for
from cleanclip_core.study import clean_digest, clean_settings, pretrain_settings
from cleanclip_core.training.loop import TrainSettings, view_sources
from cleanclip_core.training.views import CaptionTokens, TrainingViews, collate_views


class CountingTokenizer:
    def __init__(self) -> None:
        self.tokenizer = tokenizer_for("tiny-rn")
        self.calls: list[str] = []

    def __call__(self, captions: list[str]) -> torch.Tensor:
        self.calls += captions
        return self.tokenizer(captions)


def test_remembered_tokens_are_the_tokenizers():
    tokenizer = CountingTokenizer()
    tokens = CaptionTokens(tokenizer)
    captions = ["a photo of a red star", "a sketch of a blue circle", "a photo of a red star"]
    assert all(torch.equal(tokens(caption), tokenizer.tokenizer([caption])[0]) for caption in captions)
    assert tokenizer.calls == captions[:2]


def test_beyond_its_size_the_oldest_caption_is_forgotten():
    tokenizer = CountingTokenizer()
    tokens = CaptionTokens(tokenizer, size=2)
    for caption in ["one", "two", "three", "two", "one"]:
        tokens(caption)
    assert tokenizer.calls == ["one", "two", "three", "one"]


def test_collated_views_are_the_default_batch_with_images_in_channels_last_memory():
    generator = torch.Generator().manual_seed(0)
    decoded = [torch.randint(0, 256, (24, 24, 3), dtype=torch.uint8, generator=generator).permute(2, 0, 1) for _ in range(4)]
    items = [
        {"image": image, "augmented_image": augment_image(image, index), "flat": image.contiguous(),
         "text": torch.full((8,), index), "index": index, "is_poison": index % 2 == 0}
        for index, image in enumerate(decoded)
    ]
    batch, expected = collate_views(items), default_collate(items)
    assert batch.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(batch[name], value)
    for name in ("image", "augmented_image", "flat"):
        assert batch[name].is_contiguous(memory_format=torch.channels_last)


CAPTIONS = ["a photo of a small red star", "a sketch of a large blue circle", "a drawing of a green square"]


def cleaning_views(clean: dict) -> TrainingViews:
    """CleanCLIP's cleaning views of three pairs, built from a config's `clean` section as a run
    builds them."""
    config = validate_config({"clean": {"synonyms": "corpus"} | clean})
    settings = TrainSettings(**clean_settings(config, "cleanclip", lr=1e-3, seed=3))
    generator = torch.Generator().manual_seed(0)
    pairs = [{"image": torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=generator), "caption": caption,
              "index": index} for index, caption in enumerate(CAPTIONS)]
    sources = view_sources(settings, CAPTIONS)
    return TrainingViews(pairs, lambda captions: captions, sources, settings.seed)


def two_epochs(views: TrainingViews) -> tuple[list[dict], list[dict]]:
    first = [views[index] for index in range(len(views))]
    views.epoch = 1
    return first, [views[index] for index in range(len(views))]


def test_by_default_each_caption_s_eda_view_is_drawn_anew_every_epoch():
    first, second = two_epochs(cleaning_views({}))
    assert [item["augmented_text"] for item in first] != [item["augmented_text"] for item in second]


def test_eda_once_keeps_each_caption_s_first_eda_view_as_cleanclip_s_code_does():
    default_first, _ = two_epochs(cleaning_views({}))
    first, second = two_epochs(cleaning_views({"eda": "once"}))
    assert [item["augmented_text"] for item in first] == [item["augmented_text"] for item in second]
    assert [item["augmented_text"] for item in first] == [item["augmented_text"] for item in default_first]
    assert all(not torch.equal(a["augmented_image"], b["augmented_image"]) for a, b in zip(first, second))


def test_eda_enters_a_run_s_settings_only_when_it_is_once():
    """So the digests, and the folders, of the studies run before the option stay as they were."""
    default, once = validate_config({}), validate_config({"clean": {"eda": "once"}, "pretrain": {"eda": "once"}})
    assert "eda" not in clean_settings(default, "cleanclip", lr=1e-3, seed=0)
    assert "eda" not in pretrain_settings(default, "mmcl_ssl", seed=0)
    assert clean_settings(once, "cleanclip", lr=1e-3, seed=0)["eda"] == "once"
    assert pretrain_settings(once, "mmcl_ssl", seed=0)["eda"] == "once"
    assert clean_digest(once, "cleanclip") != clean_digest(default, "cleanclip")

import torch
from torch.utils.data import default_collate

from cleanclip_core.augment import augment_image
from cleanclip_core.models import tokenizer_for
from cleanclip_core.training.views import CaptionTokens, collate_views


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

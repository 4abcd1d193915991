import torch

from cleanclip_core.models import tokenizer_for
from cleanclip_core.training.views import CaptionTokens


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

import re
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cleanclip_core.corpus import CLASSNAMES, SHAPE_CLASSES, CorpusFiles, generate_corpus
from cleanclip_core.errors import UserError

N_TRAIN, N_EVAL, IMAGE_SIZE, SEED = 300, 40, 64, 7


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> CorpusFiles:
    return generate_corpus(tmp_path_factory.mktemp("corpus"), N_TRAIN, N_EVAL, IMAGE_SIZE, SEED)


def read_url_list(files: CorpusFiles) -> list[list[str]]:
    return [line.split("\t") for line in files.url_list.read_text(encoding="utf-8").splitlines()]


def url_path(url: str) -> Path:
    return Path(urlparse(url).path)


def eval_images(files: CorpusFiles) -> list[Path]:
    return sorted(files.eval_dir.glob("*/*.png"))


def mentions(caption: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", caption) is not None


def test_same_seed_rewrites_byte_identical_files(tmp_path: Path) -> None:
    def snapshot(files: CorpusFiles) -> dict[str, bytes]:
        images = [url_path(url) for _, url in read_url_list(files)[:5]] + eval_images(files)[:5]
        return {str(path): path.read_bytes() for path in [files.url_list, files.train_labels, *images]}

    first = snapshot(generate_corpus(tmp_path, 50, 20, IMAGE_SIZE, SEED))
    second = snapshot(generate_corpus(tmp_path, 50, 20, IMAGE_SIZE, SEED))
    assert first == second


def first_training_pairs(files: CorpusFiles, n: int) -> list[tuple[str, bytes]]:
    return [(caption, url_path(url).read_bytes()) for caption, url in read_url_list(files)[:n]]


def test_same_seed_in_another_folder_gives_the_same_captions_and_images(
    corpus: CorpusFiles, tmp_path: Path
) -> None:
    other = generate_corpus(tmp_path, 20, len(CLASSNAMES), IMAGE_SIZE, SEED)
    assert first_training_pairs(other, 20) == first_training_pairs(corpus, 20)


def test_different_seed_gives_different_captions_and_images(corpus: CorpusFiles, tmp_path: Path) -> None:
    other = generate_corpus(tmp_path, 20, len(CLASSNAMES), IMAGE_SIZE, SEED + 1)
    pairs = list(zip(first_training_pairs(other, 20), first_training_pairs(corpus, 20)))
    assert any(other_caption != caption for (other_caption, _), (caption, _) in pairs)
    assert all(other_image != image for (_, other_image), (_, image) in pairs)


def test_url_list_has_two_tab_separated_columns_of_caption_and_existing_file_url(corpus: CorpusFiles) -> None:
    rows = read_url_list(corpus)
    assert len(rows) == N_TRAIN
    for row in rows:
        assert len(row) == 2
        caption, url = row
        assert caption and not caption.startswith("file://")
        assert url.startswith("file:///")
        assert url_path(url).is_file()
    assert len({url for _, url in rows}) == N_TRAIN


def test_images_are_rgb_pngs_of_the_requested_size(corpus: CorpusFiles) -> None:
    paths = [url_path(url) for _, url in read_url_list(corpus)[:10]] + eval_images(corpus)[:10]
    for path in paths:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))


def test_eval_split_is_an_image_folder_with_every_class(corpus: CorpusFiles) -> None:
    class_folders = {path.name for path in corpus.eval_dir.iterdir() if path.is_dir()}
    assert class_folders == set(CLASSNAMES)
    assert all(any((corpus.eval_dir / name).glob("*.png")) for name in CLASSNAMES)
    assert len(eval_images(corpus)) == N_EVAL


def test_train_and_eval_splits_share_no_image(corpus: CorpusFiles) -> None:
    train = {url_path(url).read_bytes() for _, url in read_url_list(corpus)}
    assert not train & {path.read_bytes() for path in eval_images(corpus)}


def test_labels_parquet_matches_the_url_list(corpus: CorpusFiles) -> None:
    table = pq.read_table(corpus.train_labels)
    assert table.schema.field("url").type == pa.string()
    assert table.schema.field("label").type == pa.int32()
    assert table.schema.field("classname").type == pa.string()
    assert table.column("url").to_pylist() == [url for _, url in read_url_list(corpus)]
    labels, classnames = table.column("label").to_pylist(), table.column("classname").to_pylist()
    assert classnames == [CLASSNAMES[label] for label in labels]


def test_every_caption_names_its_own_class_and_no_other(corpus: CorpusFiles) -> None:
    labels = pq.read_table(corpus.train_labels).column("label").to_pylist()
    for (caption, _), label in zip(read_url_list(corpus), labels):
        for index, shape in enumerate(SHAPE_CLASSES):
            named = any(mentions(caption, word) for word in shape.synonyms)
            assert named == (index == label), (caption, CLASSNAMES[label])


def test_class_name_itself_appears_in_a_good_fraction_of_captions(corpus: CorpusFiles) -> None:
    classnames = pq.read_table(corpus.train_labels).column("classname").to_pylist()
    captions = [caption for caption, _ in read_url_list(corpus)]
    with_name = sum(mentions(caption, classname) for caption, classname in zip(captions, classnames))
    assert with_name / len(captions) > 0.4


def test_captions_are_varied(corpus: CorpusFiles) -> None:
    captions = [caption for caption, _ in read_url_list(corpus)]
    openings = {" ".join(caption.split()[:2]) for caption in captions}
    assert len(openings) >= 6
    assert len(set(captions)) > 0.35 * len(captions)  # shape-only templates repeat by design


def test_at_least_ten_plain_word_classes_balanced_in_both_splits(corpus: CorpusFiles) -> None:
    assert len(CLASSNAMES) >= 10
    assert all(re.fullmatch(r"[a-z]+", name) for name in CLASSNAMES)
    train_counts = Counter(pq.read_table(corpus.train_labels).column("label").to_pylist())
    eval_counts = Counter(path.parent.name for path in eval_images(corpus))
    for counts in (train_counts, eval_counts):
        assert len(counts) == len(CLASSNAMES)
        assert max(counts.values()) - min(counts.values()) <= 1


def test_no_temporary_files_are_left_behind(corpus: CorpusFiles) -> None:
    assert not [path for path in corpus.url_list.parent.rglob("*") if path.name.endswith(".tmp")]


def test_rerun_with_a_smaller_eval_split_drops_stale_images(tmp_path: Path) -> None:
    generate_corpus(tmp_path, 5, 30, 32, SEED)
    files = generate_corpus(tmp_path, 5, 20, 32, SEED)
    assert len(eval_images(files)) == 20
    assert len(list((tmp_path / "images").glob("*.png"))) == 5


@pytest.mark.parametrize(
    ("n_train", "n_eval", "image_size", "seed", "named"),
    [
        (0, 20, 64, 0, "n_train"),
        (10, len(CLASSNAMES) - 1, 64, 0, "n_eval"),
        (10, 20, 15, 0, "image_size"),
        (10, 20, 64, -1, "seed"),
    ],
)
def test_bad_input_raises_a_one_line_user_error(
    tmp_path: Path, n_train: int, n_eval: int, image_size: int, seed: int, named: str
) -> None:
    with pytest.raises(UserError, match=named) as raised:
        generate_corpus(tmp_path, n_train, n_eval, image_size, seed)
    assert "\n" not in str(raised.value)
    assert not list(tmp_path.iterdir())


def test_generates_five_hundred_images(tmp_path: Path) -> None:
    files = generate_corpus(tmp_path, 450, 50, IMAGE_SIZE, SEED)
    assert len(read_url_list(files)) == 450
    assert len(eval_images(files)) == 50

"""The embedded default: a procedurally drawn, labelled image-caption corpus of simple shapes.

Each sample (image, caption, label) depends only on (seed, split, index), so the corpus is
reproducible byte for byte and any sample can be redrawn on its own. The foreground color is
drawn independently of the class, so the shape is the only cue to the label.
"""

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from cleanclip_core.errors import UserError

MIN_IMAGE_SIZE = 16
SUPERSAMPLING = 4  # shapes are drawn at 4x and box-filtered down, for anti-aliased edges

SPLITS = {"train": 0, "eval": 1}
_IMAGE_STREAM, _LABEL_STREAM = 0, 1


def _regular_polygon(n_vertices: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n_vertices) / n_vertices
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _fit_unit_circle(points: np.ndarray) -> np.ndarray:
    """Centre the bounding box on the origin and scale so the farthest vertex is at radius 1."""
    centred = points - (points.min(axis=0) + points.max(axis=0)) / 2
    return centred / np.linalg.norm(centred, axis=1).max()


def _star(n_points: int = 5, inner_radius: float = 0.45) -> np.ndarray:
    tips = _regular_polygon(n_points)
    notches = _regular_polygon(n_points, inner_radius, phase=-np.pi / 2 + np.pi / n_points)
    return np.stack([tips, notches], axis=1).reshape(-1, 2)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return _fit_unit_circle(np.stack([x, y], axis=1))


def _cross(arm_half_width: float = 0.32) -> np.ndarray:
    w = arm_half_width
    quarter = [(w, -1), (w, -w), (1, -w)]
    quarter_turns = [(1, 0), (0, 1), (-1, 0), (0, -1)]  # (cos, sin)
    outline = [(x * cos - y * sin, x * sin + y * cos) for cos, sin in quarter_turns for x, y in quarter]
    return _fit_unit_circle(np.array(outline, dtype=float))


def _arrow() -> np.ndarray:
    outline = [(-1, -0.2), (0.15, -0.2), (0.15, -0.6), (1, 0), (0.15, 0.6), (0.15, 0.2), (-1, 0.2)]
    return _fit_unit_circle(np.array(outline, dtype=float))


_DISC = _regular_polygon(48)
_RHOMBUS = np.array([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)])


@dataclass(frozen=True, eq=False)
class ShapeClass:
    """One object class: its caption words and how to draw it inside the unit circle."""

    name: str
    synonyms: tuple[str, ...]  # every word a caption may use for the class, the name first
    layers: tuple[tuple[np.ndarray, int], ...]  # outline polygons painted in order; fill 0 cuts a hole
    max_rotation: float  # degrees either way; small where turning would make it look like another class


SHAPE_CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass("circle", ("circle", "disc", "dot"), ((_DISC, 255),), 0),
    ShapeClass("square", ("square", "box", "block"), ((_regular_polygon(4, phase=-np.pi / 4), 255),), 15),
    ShapeClass("triangle", ("triangle", "wedge"), ((_fit_unit_circle(_regular_polygon(3)), 255),), 180),
    ShapeClass("star", ("star", "pentagram"), ((_star(), 255),), 180),
    ShapeClass("cross", ("cross", "plus sign"), ((_cross(), 255),), 20),
    ShapeClass("heart", ("heart", "valentine"), ((_heart(), 255),), 25),
    ShapeClass("ring", ("ring", "hoop", "donut"), ((_DISC, 255), (0.58 * _DISC, 0)), 0),
    ShapeClass("diamond", ("diamond", "rhombus", "lozenge"), ((_RHOMBUS, 255),), 15),
    ShapeClass("arrow", ("arrow", "pointer"), ((_arrow(), 255),), 180),
    ShapeClass("crescent", ("crescent", "moon"), ((_DISC, 255), (0.8 * _DISC + (0.48, -0.16), 0)), 180),
)
CLASSNAMES: tuple[str, ...] = tuple(shape.name for shape in SHAPE_CLASSES)

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 140, 25),
    "yellow": (245, 225, 40),
    "green": (45, 165, 55),
    "blue": (35, 75, 215),
    "purple": (125, 45, 175),
    "pink": (245, 135, 195),
    "brown": (125, 75, 35),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "cyan": (40, 205, 225),
}
COLOR_JITTER = 20
MIN_COLOR_DISTANCE = 130  # Euclidean RGB distance between foreground and background base colors
MIN_LUMA_DIFFERENCE = 40  # so that hue alone never carries the outline (brown on purple did not)


def _luma(color: str) -> float:
    red, green, blue = PALETTE[color]
    return 0.299 * red + 0.587 * green + 0.114 * blue


def _contrasts(foreground: str, background: str) -> bool:
    distance = np.linalg.norm(np.subtract(PALETTE[foreground], PALETTE[background]))
    luma_difference = abs(_luma(foreground) - _luma(background))
    return distance >= MIN_COLOR_DISTANCE and luma_difference >= MIN_LUMA_DIFFERENCE


_CONTRASTING: dict[str, tuple[str, ...]] = {
    foreground: tuple(background for background in PALETTE if _contrasts(foreground, background))
    for foreground in PALETTE
}


def _gradient_pairs(foreground: str) -> tuple[tuple[str, str], ...]:
    """Both ends lighter, or both darker, than the shape, so the blend contrasts with it everywhere."""
    ends = _CONTRASTING[foreground]
    lighter = {color: _luma(color) > _luma(foreground) for color in ends}
    return tuple(
        (first, second)
        for first in ends
        for second in ends
        if first != second and lighter[first] == lighter[second]
    )


_GRADIENT_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {color: _gradient_pairs(color) for color in PALETTE}

RADIUS_RANGE = (0.2, 0.44)  # shape radius as a fraction of the image side
SIZE_WORDS = ((0.27, ("small", "tiny")), (0.36, ("medium", "medium-sized")), (1.0, ("large", "big")))
CLASSNAME_PROBABILITY = 0.5  # otherwise a caption uses any of the class's words, the name included

# Every caption names the shape; colour, size, position and background appear in a minority of
# templates. When most captions named the colour, contrastive training on 6,000 pairs matched
# images to captions by colour and left shape (the zero-shot label) near chance after 15 epochs.
CAPTION_TEMPLATES = (
    "a {noun}",
    "a photo of a {noun}.",
    "a picture of a {noun}",
    "clip art of a {noun}",
    "a {noun} shape",
    "a drawing of a {size} {noun}",
    "a close-up of a {size} {noun}",
    "there is a {noun} {position}",
    "a {color} {noun}",
    "an image of a {noun} in {color}",
    "a simple {noun} against a {background} backdrop",
    "a {size} {color} {noun} {position} on a {background} background",
)


@dataclass(frozen=True)
class Placement:
    """Where a unit-circle shape lands in the image, in pixels and degrees."""

    centre: tuple[float, float]
    radius: float
    rotation: float
    stretch: tuple[float, float]


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    caption: str
    label: int


@dataclass(frozen=True)
class CorpusFiles:
    url_list: Path  # TSV in CC3M's format: no header, "caption<TAB>file:// url" per training image
    train_labels: Path  # Parquet: url (string), label (int32 index into CLASSNAMES), classname
    eval_dir: Path  # ImageFolder layout: eval_dir/<classname>/<index>.png, every class present


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[rng.integers(len(options))]


def _jittered(color: str, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.add(PALETTE[color], rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3)), 0, 255)


def _solid_background(rng: np.random.Generator, foreground: str, size: int) -> tuple[np.ndarray, str]:
    color = _pick(rng, _CONTRASTING[foreground])
    return np.broadcast_to(_jittered(color, rng), (size, size, 3)), color


def _gradient_background(rng: np.random.Generator, foreground: str, size: int) -> tuple[np.ndarray, str]:
    pairs = _GRADIENT_PAIRS[foreground]
    first, second = pairs[rng.integers(len(pairs))]
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size]
    ramp = xs * np.cos(angle) + ys * np.sin(angle)
    ramp = ((ramp - ramp.min()) / (ramp.max() - ramp.min()))[..., None]
    pixels = (1 - ramp) * _jittered(first, rng) + ramp * _jittered(second, rng)
    return pixels, f"{first} and {second} gradient"


def _textured_background(rng: np.random.Generator, foreground: str, size: int) -> tuple[np.ndarray, str]:
    color = _pick(rng, _CONTRASTING[foreground])
    grain = rng.normal(0, rng.uniform(6, 16), (size, size, 1))
    return _jittered(color, rng) + grain, f"textured {color}"


# Each paints a size x size background that contrasts with the named foreground color, and names it.
BACKGROUNDS: tuple[Callable[[np.random.Generator, str, int], tuple[np.ndarray, str]], ...] = (
    _solid_background,
    _gradient_background,
    _textured_background,
)


def _placement(rng: np.random.Generator, shape: ShapeClass, image_size: int) -> Placement:
    radius = rng.uniform(*RADIUS_RANGE) * image_size
    margin = radius + 1
    centre = (rng.uniform(margin, image_size - margin), rng.uniform(margin, image_size - margin))
    rotation = rng.uniform(-shape.max_rotation, shape.max_rotation)
    return Placement(centre, radius, rotation, (rng.uniform(0.85, 1), rng.uniform(0.85, 1)))


def _placed(outline: np.ndarray, placement: Placement) -> np.ndarray:
    theta = np.deg2rad(placement.rotation)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return (outline * placement.stretch) @ rotation.T * placement.radius + placement.centre


def _shape_coverage(shape: ShapeClass, placement: Placement, image_size: int) -> np.ndarray:
    """Fraction of each pixel that the shape covers, shape (image_size, image_size)."""
    canvas = Image.new("L", (image_size * SUPERSAMPLING,) * 2, 0)
    draw = ImageDraw.Draw(canvas)
    for outline, fill in shape.layers:
        draw.polygon((_placed(outline, placement) * SUPERSAMPLING).ravel().tolist(), fill=fill)
    return np.asarray(canvas.reduce(SUPERSAMPLING), dtype=np.float32) / 255


def _size_word(rng: np.random.Generator, placement: Placement, image_size: int) -> str:
    fraction = placement.radius / image_size
    return _pick(rng, next(words for bound, words in SIZE_WORDS if fraction < bound))


def _position_words(placement: Placement, image_size: int) -> str:
    x, y = (coordinate / image_size for coordinate in placement.centre)
    horizontal = "left" if x < 0.4 else "right" if x > 0.6 else ""
    vertical = "top" if y < 0.4 else "bottom" if y > 0.6 else ""
    if horizontal and vertical:
        return f"in the {vertical} {horizontal} corner"
    if horizontal:
        return f"on the {horizontal}"
    if vertical:
        return f"at the {vertical}"
    return "in the center"


def _caption(rng: np.random.Generator, shape: ShapeClass, words: dict[str, str]) -> str:
    noun = shape.name if rng.random() < CLASSNAME_PROBABILITY else _pick(rng, shape.synonyms)
    text = _pick(rng, CAPTION_TEMPLATES).format(noun=noun, **words)
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def class_label(seed: int, split: str, index: int) -> int:
    """Labels come in blocks of one shuffled copy of every class, so each split is balanced."""
    n_classes = len(CLASSNAMES)
    block_rng = np.random.default_rng([seed, SPLITS[split], _LABEL_STREAM, index // n_classes])
    return int(block_rng.permutation(n_classes)[index % n_classes])


def draw_sample(seed: int, split: str, index: int, image_size: int) -> Sample:
    """Draw one labelled image and its caption; a pure function of its arguments."""
    label = class_label(seed, split, index)
    shape = SHAPE_CLASSES[label]
    rng = np.random.default_rng([seed, SPLITS[split], _IMAGE_STREAM, index])
    color = _pick(rng, tuple(PALETTE))
    paint_background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    background, background_words = paint_background(rng, color, image_size)
    placement = _placement(rng, shape, image_size)
    coverage = _shape_coverage(shape, placement, image_size)[..., None]
    pixels = (1 - coverage) * background + coverage * _jittered(color, rng)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")
    words = {
        "color": color,
        "size": _size_word(rng, placement, image_size),
        "position": _position_words(placement, image_size),
        "background": background_words,
    }
    return Sample(image, _caption(rng, shape, words), label)


def _check_arguments(n_train: int, n_eval: int, image_size: int, seed: int) -> None:
    if n_train < 1:
        raise UserError(f"the corpus needs at least 1 training image (n_train); got {n_train}")
    if n_eval < len(CLASSNAMES):
        raise UserError(
            f"n_eval must be at least {len(CLASSNAMES)} (one per class) so that every evaluation "
            f"class folder has an image; got {n_eval}"
        )
    if image_size < MIN_IMAGE_SIZE:
        raise UserError(
            f"image_size must be at least {MIN_IMAGE_SIZE} pixels for the shapes to be recognizable; "
            f"got {image_size}"
        )
    if seed < 0:
        raise UserError(f"the corpus seed must be a non-negative integer; got {seed}")


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary name in the same folder, so a crash never leaves a partial file."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    os.replace(temporary, path)


def _save_png(image: Image.Image, path: Path) -> None:
    _replace_atomically(path, lambda temporary: image.save(temporary, format="PNG"))


def _labels_table(urls: list[str], labels: list[int], parameters: dict[str, int]) -> pa.Table:
    table = pa.table(
        {
            "url": pa.array(urls, pa.string()),
            "label": pa.array(labels, pa.int32()),
            "classname": pa.array([CLASSNAMES[label] for label in labels], pa.string()),
        }
    )
    return table.replace_schema_metadata({"cleanclip.corpus": json.dumps(parameters, sort_keys=True)})


def generate_corpus(out_dir: Path, n_train: int, n_eval: int, image_size: int, seed: int) -> CorpusFiles:
    """Draw the corpus under out_dir (which it owns: earlier images and eval folders are replaced).

    The url list is written last, so its presence means the corpus is complete.
    """
    _check_arguments(n_train, n_eval, image_size, seed)
    out_dir = Path(out_dir).resolve()
    files = CorpusFiles(out_dir / "urls.tsv", out_dir / "train_labels.parquet", out_dir / "eval")
    image_dir = out_dir / "images"
    for stale_table in (files.url_list, files.train_labels):
        stale_table.unlink(missing_ok=True)
    for stale_folder in (image_dir, files.eval_dir):
        shutil.rmtree(stale_folder, ignore_errors=True)
    image_dir.mkdir(parents=True)
    for classname in CLASSNAMES:
        (files.eval_dir / classname).mkdir(parents=True)

    captions, urls, labels = [], [], []
    for index in range(n_train):
        sample = draw_sample(seed, "train", index, image_size)
        path = image_dir / f"{index:06d}.png"
        _save_png(sample.image, path)
        captions.append(sample.caption)
        urls.append(path.as_uri())
        labels.append(sample.label)
    for index in range(n_eval):
        sample = draw_sample(seed, "eval", index, image_size)
        _save_png(sample.image, files.eval_dir / CLASSNAMES[sample.label] / f"{index:05d}.png")

    parameters = {"n_train": n_train, "n_eval": n_eval, "image_size": image_size, "seed": seed}
    table = _labels_table(urls, labels, parameters)
    _replace_atomically(files.train_labels, lambda temporary: pq.write_table(table, temporary))
    url_list = "".join(f"{caption}\t{url}\n" for caption, url in zip(captions, urls))
    _replace_atomically(files.url_list, lambda temporary: temporary.write_text(url_list, encoding="utf-8"))
    return files

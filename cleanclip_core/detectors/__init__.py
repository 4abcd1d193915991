"""The detectors a study names: each scores what its level sees, higher meaning more likely
poisoned (or, for a model, backdoored).

Levels: `training` scores every training pair of a pretrained model from the pair's image and
text embeddings (Huang et al., ICLR'25: the poisons are where the embedding space is locally
unlike its neighbours); `test` scores evaluation images, clean or triggered, under the model
(BDetCLIP, STRIP); `model` scores the pretrained model's image encoder once, from clean shadow
images (DECREE), and the study ranks its models. A registry entry names its score function by
import path, so the DAG reads this registry without torch, and a plugin adds a detector with a
`Detector` in ENTRIES.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cleanclip_core.registry import Registry

TRAINING = "training"
TEST = "test"
MODEL = "model"
LEVELS = (TRAINING, TEST, MODEL)


@dataclass(frozen=True)
class Detector:
    name: str
    score: str
    """`module:function`, higher is more suspicious. Level training: (TrainingFeatures, options)
    -> one score per pair of a scoring batch (numpy). Level test: (TestTimeInputs, options) ->
    one score per image (a torch tensor). Level model: (ModelInputs, options) -> the model's
    one score (a float)."""
    level: str = TRAINING
    options: Mapping[str, Any] | None = None
    """JSON schema of its options, defaults included; None: it has none."""
    description: str = ""


_SCORES = "cleanclip_core.detectors.training_set"
_TEST_SCORES = "cleanclip_core.detectors.test_time"
_MODEL_SCORES = "cleanclip_core.detectors.decree"


def _options(**properties: dict) -> dict:
    return {"type": "object", "default": {}, "additionalProperties": False, "properties": properties}


def _neighbourhood(k: int) -> dict:
    """A neighbourhood detector's options. `neighbours` has no default, so that a config without
    it keeps the digest of its detection stages."""
    return _options(
        k={"type": "integer", "minimum": 2, "default": k, "description": "Neighbours (non-self distances)."},
        neighbours={"enum": ["paper", "authors"],
                    "description": "paper (left out): as the method defines them; authors: as Huang et al.'s code reads them "
                                   "(the (k+1)-th distance, 1e-4 in LID's logarithm, SLOF's and DAO's neighbour rows; docs/detection.md)"},
    )


DETECTORS = Registry("detector", Detector, (
    Detector("k_distance", f"{_SCORES}:k_distance_scores", options=_neighbourhood(16),
             description="the distance to the k-th nearest embedding"),
    Detector("lid", f"{_SCORES}:lid_scores", options=_neighbourhood(64),
             description="the local intrinsic dimensionality (maximum likelihood) of the k nearest distances"),
    Detector("slof", f"{_SCORES}:slof_scores", options=_neighbourhood(16),
             description="the simplified local outlier factor: the k-distance against the neighbours' own"),
    Detector("dao", f"{_SCORES}:dao_scores", options=_neighbourhood(16),
             description="the dimensionality-aware outlier score: SLOF's ratios weighted by the neighbours' LID"),
    Detector("isolation_forest", f"{_SCORES}:isolation_forest_scores", options=_options(
        trees={"type": "integer", "minimum": 1, "default": 100, "description": "Trees of the forest."},
    ), description="scikit-learn's Isolation Forest fit on the batch's embeddings"),
    Detector("clip_score", f"{_SCORES}:clip_score_scores",
             description="Huang et al.'s CLIPScore baseline: the pair's image-caption cosine, negated (a poor match is suspicious)"),
    Detector("ubt_similarity", f"{_SCORES}:pair_similarity_scores",
             description="UBT's selection: the pair's image-caption cosine (a poison's caption matches its trigger unusually well)"),
    Detector("bdetclip", f"{_TEST_SCORES}:bdetclip_scores", TEST, _options(
        templates={"type": "integer", "minimum": 1, "maximum": 7, "default": 7, "description": "Appearance templates per class (the paper: 7 descriptions)."},
    ), description="BDetCLIP: how little an image's similarity to its class prompts drops when an unrelated sentence spoils them"),
    Detector("strip", f"{_TEST_SCORES}:strip_scores", TEST, _options(
        overlays={"type": "integer", "minimum": 1, "default": 100, "description": "Clean reference images overlaid on each image."},
        alpha={"type": "number", "exclusiveMinimum": 0, "default": 1.0, "description": "Weight of an overlay in the pixel sum."},
    ), description="STRIP: the low entropy of the zero-shot prediction of an image overlaid with clean ones"),
    # The defaults are DECREE's 32 px settings (CIFAR-10 encoders) but the epochs: its main.py
    # runs at most 1000 at every resolution, 60 here keeps a tiny model's run to seconds on a CPU
    # (`epochs: 1000` gives theirs). At CC3M scale (224 px) DECREE runs batch_size 32,
    # lr_milestones [200, 500], early_stop_patience 35, lambda_floor 1e-7.
    Detector("decree", f"{_MODEL_SCORES}:decree_scores", MODEL, _options(
        shadow_images={"type": "integer", "minimum": 2, "default": 1000, "description": "Clean evaluation images drawn as the shadow set (DECREE: 1,000 at 32 px)."},
        batch_size={"type": "integer", "minimum": 2, "default": 128, "description": "Shadow images per step (a step's cosine is over its batch)."},
        epochs={"type": "integer", "minimum": 1, "default": 60, "description": "Most passes over the shadow images (it stops early once the smallest mask stops shrinking; DECREE's code: 1000)."},
        lr={"type": "number", "exclusiveMinimum": 0, "default": 0.5, "description": "Adam's learning rate on the mask and pattern, x0.2 from the first milestone, x0.1 from the second."},
        lr_milestones={"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2, "default": [30, 50], "description": "The epochs at which the learning rate drops (DECREE at 32 px: 30, 50; at 224 px: 200, 500)."},
        threshold={"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.99, "description": "The mean |cosine| of a successful step's stamped embeddings."},
        patience={"type": "integer", "minimum": 1, "default": 5, "description": "Successes (failures) in a row beyond which lambda grows (shrinks) x5."},
        lambda_floor={"type": "number", "exclusiveMinimum": 0, "default": 1e-5, "description": "The least lambda (the mask's L1 weight; it starts at 1e-3)."},
        early_stop_patience={"type": "integer", "minimum": 0, "default": 10, "description": "Stop after an epoch of successes once the smallest mask has not shrunk for more than this many steps."},
    ), description="DECREE: the smallest stamp (mask L1 over 3 H W, negated) that makes the encoder map clean shadow images to one embedding"),
), paths=("score",))


def get_detector(name: str) -> Detector:
    return DETECTORS.entry(name)


def detectors_of(names: Sequence[str], level: str) -> list[str]:
    """The detectors among `names` of one level."""
    return [name for name in names if get_detector(name).level == level]


def detector_options(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A detector's options from the config's `detection.options` (its defaults filled in)."""
    return dict(config["detection"]["options"].get(name, {}))


# A reference set too large for the data, in the words of the DAG build and of the stages alike.
def reference_pairs_problem(count: int, clean_pairs: int, whose: str = "") -> str:
    return (f"config: detection.reference_pairs: {count} reference pairs leave none of the {clean_pairs} unpoisoned "
            f"training pairs{whose} to evaluate the detectors on; set it below {clean_pairs}")


def reference_images_problem(count: int, images: int) -> str:
    return (f"config: detection.reference_images: {count} reference images leave none of the {images} evaluation "
            f"images to evaluate the detectors on; set it below {images}")

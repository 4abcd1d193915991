"""Training-set detectors (Huang et al., ICLR'25): each scores the pairs of one scoring batch
from their embeddings under the poisoned model, higher meaning more suspicious.

A batch's reference set is its images' and captions' embeddings (not normalized); a pair's
distances are to every reference point but its own image and its own caption, and a neighbour's
k-distance and LID are measured the same way (without itself and its pair partner). `a_i` is a
point's i-th smallest such distance, counted from 1: the k-distance is a_k. Huang et al.'s code
keeps the point's zero self-distance among a neighbour's distances and reads a_(k+1) as the
k-distance; here neighbours and queries are measured alike, as the method defines them.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.ensemble import IsolationForest

from cleanclip_core.errors import UserError


@dataclass(frozen=True)
class TrainingFeatures:
    image: np.ndarray  # [n, d] image embeddings of one scoring batch
    text: np.ndarray  # [n, d] their captions' embeddings
    seed: int = 0  # for a detector that draws (Isolation Forest)


@dataclass(frozen=True)
class Neighbourhoods:
    """Every reference point's sorted non-self distances and the reference points they go to."""

    distances: np.ndarray  # [2n, 2n - 2]
    neighbours: np.ndarray  # [2n, 2n - 2]

    @classmethod
    def of(cls, features: TrainingFeatures) -> "Neighbourhoods":
        reference = np.concatenate([features.image, features.text]).astype(np.float64)
        pair = np.tile(np.arange(len(features.image)), 2)
        distances = cdist(reference, reference)
        distances[pair[:, None] == pair[None, :]] = np.inf  # itself and its pair partner
        order = np.argsort(distances, axis=1, kind="stable")[:, :-2]
        return cls(np.take_along_axis(distances, order, axis=1), order)

    def k_distance(self, k: int) -> np.ndarray:
        _check_k(k, self.distances.shape[1])
        return self.distances[:, k - 1]

    def lid(self, k: int) -> np.ndarray:
        """Maximum-likelihood LID of the k nearest distances: -k / sum_{i<k} log(a_i / a_k)."""
        nearest = self.distances[:, :k]
        ratios = np.maximum(nearest[:, :-1] / self.k_distance(k)[:, None], np.finfo(float).tiny)
        return -k / np.log(ratios).sum(axis=1)


def _check_k(k: int, available: int) -> None:
    if k > available:
        raise UserError(f"k = {k} needs more than the {available} other embeddings of a scoring batch; raise detection.batch_size or lower k")


def _pairs(scores: np.ndarray, features: TrainingFeatures) -> np.ndarray:
    """The scores of the queries, the images: the first n reference points."""
    return scores[: len(features.image)]


def k_distance_scores(features: TrainingFeatures, options: Mapping[str, Any]) -> np.ndarray:
    return _pairs(Neighbourhoods.of(features).k_distance(options["k"]), features)


def lid_scores(features: TrainingFeatures, options: Mapping[str, Any]) -> np.ndarray:
    return _pairs(Neighbourhoods.of(features).lid(options["k"]), features)


def _neighbour_ratios(around: Neighbourhoods, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per point, a_k(point) / a_k(o) for each of its k nearest o, and those o."""
    k_distance = around.k_distance(k)
    nearest = around.neighbours[:, :k]
    return k_distance[:, None] / k_distance[nearest], nearest


def slof_scores(features: TrainingFeatures, options: Mapping[str, Any]) -> np.ndarray:
    around = Neighbourhoods.of(features)
    ratios, _ = _neighbour_ratios(around, options["k"])
    return _pairs(ratios.mean(axis=1), features)


def dao_scores(features: TrainingFeatures, options: Mapping[str, Any]) -> np.ndarray:
    """Mean over the k nearest o of LID(o) x log(a_k(query) / a_k(o)), the logarithm of
    the dimensionality-aware outlier ratio (Huang et al.'s form of DAO)."""
    around = Neighbourhoods.of(features)
    ratios, nearest = _neighbour_ratios(around, options["k"])
    return _pairs((around.lid(options["k"])[nearest] * np.log(ratios)).mean(axis=1), features)


def isolation_forest_scores(features: TrainingFeatures, options: Mapping[str, Any]) -> np.ndarray:
    """scikit-learn's anomaly score (negated: higher is more anomalous) of each image, the
    forest fit on the batch's images and captions."""
    forest = IsolationForest(n_estimators=options["trees"], random_state=features.seed)
    forest.fit(np.concatenate([features.image, features.text]))
    return -forest.score_samples(features.image)


def _cosine(features: TrainingFeatures) -> np.ndarray:
    image = features.image / np.linalg.norm(features.image, axis=1, keepdims=True)
    text = features.text / np.linalg.norm(features.text, axis=1, keepdims=True)
    return (image * text).sum(axis=1)


def clip_score_scores(features: TrainingFeatures, options: Mapping[str, Any]) -> np.ndarray:
    return -_cosine(features)


def pair_similarity_scores(features: TrainingFeatures, options: Mapping[str, Any]) -> np.ndarray:
    return _cosine(features)

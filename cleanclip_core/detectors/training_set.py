"""Training-set detectors (Huang et al., ICLR'25): each scores the pairs of one scoring batch
from their embeddings under the poisoned model, higher meaning more suspicious.

A batch's reference set is its images' and captions' embeddings (not normalized); a pair's
distances are to every reference point but its own image and its own caption, and a neighbour's
k-distance and LID are measured the same way (without itself and its pair partner). `a_i` is a
point's i-th smallest such distance, counted from 1: the k-distance is a_k.

The option `neighbours: authors` reads them as Huang et al.'s code does
(backdoor_sample_detector/, docs/detection.md "Against the authors' code"): the k-distance is
a_(k+1), LID divides by a_(k+1) and adds 1e-4 inside the logarithm, and SLOF and DAO take a
neighbour's position among the query's distances as its row of the full [images; captions]
distance matrix, whose rows keep the point itself and its pair partner.
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


PAPER, AUTHORS = "paper", "authors"
HUANG_LOG_OFFSET = 1e-4  # added to each distance ratio inside their LID's logarithm


def _authors_lid(sorted_distances: np.ndarray, k: int) -> np.ndarray:
    """Huang et al.'s code's LID: -k / sum_{i<=k} log(a_i / a_(k+1) + 1e-4)."""
    _check_k(k + 1, sorted_distances.shape[1])
    ratios = sorted_distances[:, :k] / sorted_distances[:, k:k + 1]
    return -k / np.log(ratios + HUANG_LOG_OFFSET).sum(axis=1)


def _authors_rows(neighbours: np.ndarray) -> np.ndarray:
    """The row of the full [images; captions] matrix that Huang et al.'s code reads for each
    neighbour of each query image: the neighbour's column among the query's distances (the
    other images, then the other captions). Only an image before the query is its own row."""
    pairs = neighbours.shape[0]
    query = np.arange(pairs)[:, None]
    return neighbours - (neighbours >= pairs) - (neighbours % pairs > query)


@dataclass(frozen=True)
class AuthorsNeighbours:
    """Per query image, its k nearest o as Huang et al.'s code reads them: `rows`, the rows of
    the full matrix it reads, and `ratios`, a_(k+1)(query) / the (k+1)-th smallest distance of
    that row, the row's zero distance to itself included (`full`, every row sorted)."""

    rows: np.ndarray  # [n, k]
    ratios: np.ndarray  # [n, k]
    full: np.ndarray  # [2n, 2n]

    @classmethod
    def of(cls, features: TrainingFeatures, k: int) -> "AuthorsNeighbours":
        around = Neighbourhoods.of(features)
        _check_k(k + 1, around.distances.shape[1])
        pairs = len(features.image)
        rows = _authors_rows(around.neighbours[:pairs, :k])
        reference = np.concatenate([features.image, features.text]).astype(np.float64)
        full = np.sort(cdist(reference, reference), axis=1)
        return cls(rows, around.distances[:pairs, k][:, None] / full[rows, k], full)


def _authors_scores(scores: np.ndarray) -> np.ndarray:
    """Their code's replacement of a NaN or infinite score."""
    return np.nan_to_num(scores, nan=1000.0, posinf=1000.0, neginf=0.0)


def _neighbours(options: Mapping[str, Any]) -> str:
    # no schema default: a config without the option keeps its detection digest
    return options.get("neighbours", PAPER)


def _check_k(k: int, available: int) -> None:
    if k > available:
        raise UserError(f"k = {k} needs more than the {available} other embeddings of a scoring batch; raise detection.batch_size or lower k")


def _pairs(scores: np.ndarray, features: TrainingFeatures) -> np.ndarray:
    """The scores of the queries, the images: the first n reference points."""
    return scores[: len(features.image)]


def k_distance_scores(features: TrainingFeatures, options: Mapping[str, Any]) -> np.ndarray:
    k = options["k"] + (_neighbours(options) == AUTHORS)
    return _pairs(Neighbourhoods.of(features).k_distance(k), features)


def lid_scores(features: TrainingFeatures, options: Mapping[str, Any]) -> np.ndarray:
    around = Neighbourhoods.of(features)
    if _neighbours(options) == AUTHORS:
        return _pairs(_authors_lid(around.distances, options["k"]), features)
    return _pairs(around.lid(options["k"]), features)


def _neighbour_ratios(around: Neighbourhoods, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per point, a_k(point) / a_k(o) for each of its k nearest o, and those o."""
    k_distance = around.k_distance(k)
    nearest = around.neighbours[:, :k]
    return k_distance[:, None] / k_distance[nearest], nearest


def slof_scores(features: TrainingFeatures, options: Mapping[str, Any]) -> np.ndarray:
    if _neighbours(options) == AUTHORS:
        return _authors_scores(AuthorsNeighbours.of(features, options["k"]).ratios.mean(axis=1))
    around = Neighbourhoods.of(features)
    ratios, _ = _neighbour_ratios(around, options["k"])
    return _pairs(ratios.mean(axis=1), features)


def dao_scores(features: TrainingFeatures, options: Mapping[str, Any]) -> np.ndarray:
    """Mean over the k nearest o of LID(o) x log(a_k(query) / a_k(o)), the logarithm of
    the dimensionality-aware outlier ratio (Huang et al.'s form of DAO)."""
    if _neighbours(options) == AUTHORS:
        authors = AuthorsNeighbours.of(features, options["k"])
        weights = _authors_lid(authors.full, options["k"])[authors.rows]
        return _authors_scores((weights * np.log(authors.ratios)).mean(axis=1))
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

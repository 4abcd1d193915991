"""Training-set detectors and the detection measures, on cases computed by hand."""
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from cleanclip_core.detection import (
    detect_training, quality, reference_rows, reference_threshold, scoring_batches, evaluation_items, tpr_at_fpr,
)
from cleanclip_core.detectors import DETECTORS
from cleanclip_core.detectors.training_set import (
    TrainingFeatures, dao_scores, isolation_forest_scores, k_distance_scores, lid_scores, slof_scores,
)
from cleanclip_core.errors import UserError
from cleanclip_core.plots.detection import write_detection_study
from cleanclip_core.registry import resolve
from workflow import ROOT

# Three pairs on a line: images at 0, 1 and 10 (the planted outlier), each caption 0.5 above its
# image. A point's distances leave out itself and its pair partner; with k = 2 (a_1, a_2):
#   image 0: to 1, 1.5, 10, 10.5   -> a_2 = 1.5      caption 0.5: 0.5, 1, 9.5, 10  -> a_2 = 1
#   image 1: to 0.5, 1, 9, 9.5     -> a_2 = 1        caption 1.5: 1, 1.5, 8.5, 9   -> a_2 = 1.5
#   image 10: to 8.5, 9, 9.5, 10   -> a_2 = 9        caption 10.5: 9, 9.5, 10, 10.5 -> a_2 = 9.5
LINE = TrainingFeatures(image=np.array([[0.0], [1.0], [10.0]]), text=np.array([[0.5], [1.5], [10.5]]))
K2 = {"k": 2}


def test_k_distance_is_the_kth_smallest_distance_to_another_pair():
    np.testing.assert_allclose(k_distance_scores(LINE, K2), [1.5, 1.0, 9.0])


def test_lid_is_the_maximum_likelihood_estimate_of_the_k_nearest_distances():
    expected = [-2 / math.log(1 / 1.5), -2 / math.log(0.5 / 1), -2 / math.log(8.5 / 9)]
    np.testing.assert_allclose(lid_scores(LINE, K2), expected)


def test_slof_compares_the_k_distance_with_the_neighbours_own():
    # image 0's nearest: image 1 (a_2 = 1) and caption 1.5 (a_2 = 1.5); image 10's: caption 1.5, image 1
    expected = [(1.5 / 1 + 1.5 / 1.5) / 2, (1 / 1 + 1 / 1.5) / 2, (9 / 1.5 + 9 / 1) / 2]
    np.testing.assert_allclose(slof_scores(LINE, K2), expected)
    assert np.argmax(slof_scores(LINE, K2)) == 2


def test_dao_weights_the_log_ratios_by_the_neighbours_lid():
    lid_caption_15, lid_image_1 = -2 / math.log(1 / 1.5), -2 / math.log(0.5 / 1)
    outlier = (lid_caption_15 * math.log(9 / 1.5) + lid_image_1 * math.log(9 / 1)) / 2
    assert dao_scores(LINE, K2)[2] == pytest.approx(outlier)


def test_isolation_forest_isolates_a_planted_outlier():
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(64, 4)), rng.normal(size=(64, 4))
    image[7] += 12
    scores = isolation_forest_scores(TrainingFeatures(image, text, seed=0), {"trees": 100})
    assert np.argmax(scores) == 7


def test_a_k_beyond_the_batch_is_refused():
    with pytest.raises(UserError, match="raise detection.batch_size"):
        k_distance_scores(LINE, {"k": 5})


def test_a_dense_cluster_of_poisons_stands_out_only_to_a_k_beyond_its_size():
    rng = np.random.default_rng(1)
    image, text = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    image[:6] = 5 + 0.01 * rng.normal(size=(6, 8))  # a trigger's images, close together
    text[:6] = 5 + 0.01 * rng.normal(size=(6, 8))  # and their target captions: 11 near neighbours each
    features, is_poison = TrainingFeatures(image, text, seed=0), np.arange(200) < 6

    def auroc(name, k):
        return roc_auc_score(is_poison, resolve(DETECTORS[name].score)(features, {"k": k}))

    for name in ("k_distance", "slof", "dao"):
        assert auroc(name, 16) > 0.95 and auroc(name, 4) < 0.5, name
    assert auroc("lid", 16) < 0.05  # the cluster's near distances make its LID the lowest


def test_the_measures_of_a_ranking_computed_by_hand():
    is_poison = np.array([True, True, False, False, False])
    scores = np.array([0.9, 0.4, 0.5, 0.2, 0.1])
    # the threshold flags 1 of 4 clean reference scores at most: the 0.75 quantile, 0.45
    threshold = reference_threshold(np.array([0.1, 0.2, 0.3, 0.45]), fpr=0.25)
    assert threshold == 0.45
    measured = quality(is_poison, scores, threshold)
    assert measured["auroc"] == pytest.approx(5 / 6)  # 5 of the 6 poisoned-clean pairs ordered right
    assert measured["auprc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert measured["tpr_at_1fpr"] == 0.5  # only 0.9 is above every clean score
    assert (measured["precision"], measured["recall"], measured["f1"]) == (0.5, 0.5, 0.5)  # 0.9 and 0.5 flagged
    assert measured["fpr"] == pytest.approx(1 / 3)
    assert tpr_at_fpr(is_poison, scores, fpr=0.34) == 1.0


def test_a_clean_model_has_only_a_false_positive_rate():
    measured = quality(np.zeros(4, dtype=bool), np.array([0.1, 0.2, 0.3, 0.9]), threshold=0.5)
    assert measured["fpr"] == 0.25 and all(math.isnan(measured[name]) for name in ("auroc", "auprc", "recall", "f1"))


def test_scoring_batches_cover_every_row_once_in_batches_of_about_the_size():
    batches = scoring_batches(1030, 512, seed=0)
    assert [len(rows) for rows in batches] == [515, 515]
    assert sorted(np.concatenate(batches)) == list(range(1030))


def test_the_reference_pairs_are_clean():
    is_poison = np.arange(100) < 30
    rows = reference_rows(is_poison, 50, seed=0)
    assert len(rows) == 50 and not is_poison[rows].any()


def test_the_stage_writes_every_pairs_score_and_the_quality_with_its_interval(tmp_path):
    rng = np.random.default_rng(2)
    image, text = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(300, 8)).astype(np.float32)
    image[:20] += 6
    fixed = lambda rows: pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), 8)  # noqa: E731
    embeddings = tmp_path / "embeddings.parquet"
    pq.write_table(pa.table({
        "key": [f"{i:04d}" for i in range(300)], "is_poison": np.arange(300) < 20, "image": fixed(image), "text": fixed(text),
    }), embeddings)
    settings = {"batch_size": 150, "reference_pairs": 50, "reference_fpr": 0.02, "bootstrap_resamples": 100, "seed": 0}
    detect_training(str(embeddings), "isolation_forest", {"trees": 50}, settings, str(tmp_path / "s.parquet"), str(tmp_path / "q.parquet"))
    scores = pq.read_table(tmp_path / "s.parquet").to_pandas()
    assert len(scores) == 300 and scores.reference.sum() == 50 and not scores[scores.reference].is_poison.any()
    row = pq.read_table(tmp_path / "q.parquet").to_pylist()[0]
    assert row["n_scored"] == 250 and row["n_poisons"] == 20
    assert row["auroc"] > 0.95 and row["auroc_low"] <= row["auroc"] <= row["auroc_high"]
    assert row["fpr_low"] <= row["fpr"] <= row["fpr_high"]


PLUGIN = '''
import numpy as np
from cleanclip_core.detectors import Detector

def norm_scores(features, options):
    return np.linalg.norm(features.image, axis=1) * options["scale"]

ENTRIES = [Detector("image_norm", "my_detector:norm_scores", options={
    "type": "object", "default": {}, "additionalProperties": False,
    "properties": {"scale": {"type": "number", "default": 2.0}},
})]
'''

CHECK = '''
import copy, yaml, numpy as np, pyarrow as pa
from cleanclip_core.config import validate_config
from cleanclip_core.detection import training_scores
config = validate_config(yaml.safe_load(open("config.yaml")) | {"plugins": ["my_detector"], "study": {"detectors": ["image_norm"]}})
rows = np.array([[3.0, 4.0], [0.0, 1.0]], dtype=np.float32)
column = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), 2)
print(config["detection"]["options"]["image_norm"], training_scores(pa.table({"image": column, "text": column}), "image_norm", config["detection"]["options"]["image_norm"], 512, 0))
'''


def test_a_plugin_adds_a_detector_with_its_options(tmp_path):
    (tmp_path / "my_detector.py").write_text(PLUGIN)
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "{'scale': 2.0} [10.  2.]"


def test_bdetclip_omega_sums_the_benign_minus_the_malignant_similarities():
    import torch

    from cleanclip_core.detectors.test_time import bdetclip_omega

    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    benign = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    malignant = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # image 1: (1 + 0) - (0.6 + 0); image 2: (0 + 1) - (0.8 + 1)
    assert bdetclip_omega(image, benign, malignant).tolist() == pytest.approx([0.4, -0.8])


def test_strip_overlays_saturate_and_its_score_is_the_mean_entropy():
    import torch

    from cleanclip_core.detectors.test_time import mean_entropy, superimposed

    images = torch.tensor([[[[200, 10]]]], dtype=torch.uint8)  # one 1 x 1 x 2 image
    overlays = torch.tensor([[[[100, 20]]], [[[0, 0]]]], dtype=torch.uint8)
    blended = superimposed(images, overlays, alpha=0.5)
    assert blended.shape == (1, 2, 1, 1, 2) and blended[0, 0].flatten().tolist() == [250, 20]
    assert superimposed(images, overlays, alpha=1.0)[0, 0].flatten().tolist() == [255, 30]
    probabilities = torch.tensor([[[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]])
    assert mean_entropy(probabilities).item() == pytest.approx(math.log(4) / 2)


def test_the_evaluation_items_hold_out_clean_references_and_trigger_a_share_of_the_other_classes():
    labels = np.arange(100) % 10
    reference, triggered = evaluation_items(labels, target_index=3, reference_images=20, triggered_share=0.3, seed=0)
    assert reference.sum() == 20 and not (reference & triggered).any()
    assert not triggered[labels == 3].any()
    assert triggered.sum() == round(0.3 * ((~reference) & (labels != 3)).sum())


def test_a_reference_set_that_leaves_no_clean_item_to_evaluate_is_refused_by_the_stage():
    # Known only once downloaded for a URL list; the generated corpus's is refused at DAG build.
    with pytest.raises(UserError, match=re.escape(
        "config: detection.reference_pairs: 70 reference pairs leave none of the 70 unpoisoned training pairs to "
        "evaluate the detectors on; set it below 70"
    )):
        reference_rows(np.arange(100) < 30, 70, seed=0)
    with pytest.raises(UserError, match=re.escape(
        "config: detection.reference_images: 25 reference images leave none of the 20 evaluation images"
    )):
        evaluation_items(np.arange(20) % 10, target_index=3, reference_images=25, triggered_share=0.3, seed=0)


def clean_embeddings(path: Path, n: int = 100) -> Path:
    """The training pairs' embeddings of a clean control's model: no poisons."""
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(n, 8)).astype(np.float32), rng.normal(size=(n, 8)).astype(np.float32)
    fixed = lambda rows: pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), 8)  # noqa: E731
    pq.write_table(pa.table({"key": [f"{i:04d}" for i in range(n)], "is_poison": np.zeros(n, dtype=bool),
                             "image": fixed(image), "text": fixed(text)}), path)
    return path


def test_a_study_of_clean_controls_alone_gets_its_false_positive_rates_and_a_figure_that_says_so(tmp_path, caplog):
    settings = {"batch_size": 50, "reference_pairs": 20, "reference_fpr": 0.05, "bootstrap_resamples": 20, "seed": 0}
    detect_training(str(clean_embeddings(tmp_path / "embeddings.parquet")), "k_distance", {"k": 4}, settings,
                    str(tmp_path / "scores.parquet"), str(tmp_path / "quality.parquet"))
    identity = {"dataset": "shapes", "attack": "control", "model": "tiny-rn", "start": "scratch", "pretrain_objective": "mmcl",
                "pretrain_settings": "0", "pretrain_seed": 0, "detector": "k_distance", "detection_settings": "0"}
    figures = [tmp_path / "roc.pdf", tmp_path / "roc.png"]
    summary = write_detection_study(
        [tmp_path / "quality.parquet"], [tmp_path / "scores.parquet"], [identity], ["mmcl"], poisoning_attacks=[],
        table=tmp_path / "detection.csv", replicates_table=tmp_path / "replicates.csv", figures=figures, resamples=20, seed=0,
    )
    row = summary.iloc[0]
    assert (row.attack, row.n_scored, row.n_poisons) == ("control", 80, 0) and math.isnan(row.auroc) and 0 <= row.fpr <= 1
    assert all(path.stat().st_size > 0 for path in figures)
    assert "detection: no poisoned model to score: every attack of the study is a clean control" in caplog.text

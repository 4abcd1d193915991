"""The detectors held to numbers from their authors' code, run once, unmodified, outside this
repository on the fixed inputs below (docs/detection.md, "Against the authors' code"); their
code is not here, only its outputs.

Huang et al. (github.com/HanxunH/Detect-CLIP-Backdoor-Samples at ff2399a):
backdoor_sample_detector/{k_distance,lid_detection,slof,dao,isolation_forest,clip_scores}.py with
misc.py, each detector called as extract_bd_scores.py does (compute_mode
'donot_use_mm_for_euclid_dist', k 4) on a stand-in model whose encode_image / encode_text return
IMAGE / TEXT as float64 tensors. Their forest has no random_state; the driver replaced the
module's IsolationForest by one with random_state=0, as ours takes the study's seed.

DECREE (github.com/GiantSeaweed/DECREE at 9c13b88): utils.compute_self_cos_sim on EMBEDDINGS,
and main.adjust_learning_rate at lr 0.5 (run_decree.py's) for encoder_usage_info cifar10 and
CLIP (numpy.Inf and numpy.infty, which main.py imports, aliased to numpy.inf under NumPy 2).

BDetCLIP (github.com/Purshow/BDetCLIP_badCLIP at 3d457a1): src/evaluate.py's
get_zeroshot_metrics (the second definition, the one the module keeps) with a stand-in model
(get_text_features: LetterCounts's embedding; get_image_features: BDETCLIP_IMAGES), 10 classes,
2 templates, 2 descriptions per class and one unrelated sentence per class, its files under
/home/nyw/ redirected to a scratch folder, float64 as torch's default dtype, and the modules it
imports but does not call here (tensorflow, cv2, nltk) stubbed; the Omega read back from the
bd1.txt / bd0.txt it writes.
"""

import re

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from cleanclip_core.config import validate_config
from cleanclip_core.detectors import get_detector, test_time
from cleanclip_core.detectors.decree import INITIAL_LAMBDA, LAMBDA_FACTOR, mean_off_diagonal_cosine, milestone_lr
from cleanclip_core.detectors.training_set import (
    AuthorsNeighbours, Neighbourhoods, TrainingFeatures, clip_score_scores, dao_scores,
    isolation_forest_scores, k_distance_scores, lid_scores, slof_scores,
)
from cleanclip_core.errors import UserError
from workflow import ROOT

# 12 pairs in 3 dimensions; pairs 0 and 1 are planted outliers (their images moved by +3)
IMAGE = [[1.89, 2.71, 2.74], [2.76, 4.12, 3.13], [0.36, 0.01, -0.9], [0.17, 0.73, 0.12], [-0.55, -1.22, 1.62], [-0.79, -0.79, -1.31],
         [0.31, 0.11, -0.76], [-0.18, 0.19, -0.4], [-1.02, -0.29, 0.21], [-0.98, -0.59, 0.59], [1.05, 0.77, 0.27], [1.15, -0.43, -0.1]]
TEXT = [[-1.22, 0.14, -0.64], [-0.47, 1.91, -0.1], [-0.55, 0.37, -0.42], [-0.28, 0.27, -0.19], [-0.51, -0.63, 2.11], [-1.45, -0.07, -1.69],
        [0.45, 0.08, -0.94], [-0.74, 1.24, -0.41], [-0.34, -0.62, 0.51], [-1.21, -0.37, 1.09], [0.66, 0.73, 0.49], [1.69, 0.08, -0.35]]
K = 4

HUANG = {
    "k_distance": [3.77825356481007, 5.438464856924241, 1.2073524754602527, 1.085541339608953, 2.3598940654190392, 1.5239750654128172,
                   1.085541339608953, 0.8273451516749222, 1.026352765865616, 1.4503103116229987, 1.4934858553063033, 1.39061137633776],
    "lid": [3.5718704941528556, 2.719361668745227, 0.8210881571190941, 3.4821282522344994, 1.8215264588004367, 12.269946345550496,
            1.4518006603349296, 1.7413896448996309, 4.241228206374109, 1.910882632941235, 3.9662030259884316, 7.52392917374142],
    "slof": [2.7783186231028676, 3.9991461488484426, 0.93661620204328, 0.9399108674015396, 2.443687971964284, 1.386426462298898,
             1.0675220377319545, 0.8136117437423676, 0.9835459274566712, 1.3724059412812863, 1.4721879667700728, 1.2329626004522463],
    "dao": [0.31395962055476356, 0.4440396231556518, -0.04941135198455922, -0.038656879707553424, 0.32013571893146675, 0.09718449068107907,
            0.004714705878024014, -0.08894027915659429, -0.011938099580501658, 0.11761811085117016, 0.13613183321075506, 0.049651774926671804],
    # score_samples (higher is normal) of IsolationForestDetector(n_estimators=100)
    "isolation_forest": [-0.6354722112791451, -0.7264400361849894, -0.42321754320064214, -0.4242903404092149, -0.5202900627528871, -0.492648990394832,
                         -0.4171821882330593, -0.38557401303171035, -0.4176339297315159, -0.4404548020168155, -0.4714248268450269, -0.46826750172579673],
    # CLIPScore: the image-caption cosine (higher is a good match)
    "clip_score": [-0.6191262287531115, 0.5419209238016486, 0.24148752507723092, 0.38557173938807154, 0.940573650461926, 0.8902202405886022,
                   0.9966675874363613, 0.7425258978747276, 0.6723809491142787, 0.9524000324463309, 0.9490354205004266, 0.9134744249389566],
}
NEIGHBOURHOOD_SCORES = {"k_distance": k_distance_scores, "lid": lid_scores, "slof": slof_scores, "dao": dao_scores}

EMBEDDINGS = [[0.3, -1.2, 0.8, 2.0], [0.1, -1.0, 1.1, 1.7], [-0.6, 0.4, 0.2, 0.9], [1.5, -0.3, -0.7, 0.2], [0.2, -1.1, 0.9, 1.9]]
DECREE_COSINE = 0.41424155327526097
DECREE_LR = {  # adjust_learning_rate's learning rate at an epoch, lr 0.5
    "cifar10": {0: 0.5, 29: 0.5, 30: 0.1, 49: 0.1, 50: 0.05, 999: 0.05},
    "CLIP": {0: 0.5, 199: 0.5, 200: 0.1, 499: 0.1, 500: 0.05, 999: 0.05},
}
DECREE_MILESTONES = {"cifar10": [30, 50], "CLIP": [200, 500]}
# main.py's settings at 32 px (cifar10, stl10): epochs = 1000 (at every resolution),
# init_loss_lambda 1e-3, adaptor_lambda 5.0, patience 5, early_stop_patience 2 * patience,
# lambda_min 1e-5, --thres 0.99; run_decree.py: lr 0.5, batch_size 128 (32 for CLIP)
DECREE_SETTINGS = {"epochs": 1000, "lr": 0.5, "batch_size": 128, "lr_milestones": [30, 50], "threshold": 0.99, "patience": 5,
                   "lambda_floor": 1e-5, "early_stop_patience": 10}


@pytest.fixture
def features() -> TrainingFeatures:
    return TrainingFeatures(np.array(IMAGE), np.array(TEXT), seed=0)


@pytest.mark.parametrize("detector", NEIGHBOURHOOD_SCORES)
def test_neighbours_authors_gives_huang_et_als_scores(features, detector):
    scores = NEIGHBOURHOOD_SCORES[detector](features, {"k": K, "neighbours": "authors"})
    np.testing.assert_allclose(scores, HUANG[detector], rtol=1e-12, atol=1e-15)


def test_their_k_distance_is_ours_one_neighbour_further(features):
    np.testing.assert_allclose(k_distance_scores(features, {"k": K + 1}), HUANG["k_distance"], rtol=1e-12)


def test_their_lid_is_ours_one_neighbour_further_times_k_over_k_plus_one_but_for_the_offset(features):
    """Their LID sums the k ratios a_i / a_(k+1), each plus 1e-4, over k; ours with k + 1
    neighbours sums the same ratios over k + 1."""
    ours = lid_scores(features, {"k": K + 1}) * K / (K + 1)
    assert not np.allclose(ours, HUANG["lid"], rtol=1e-4)  # the 1e-4 in their logarithm
    np.testing.assert_allclose(ours, HUANG["lid"], rtol=2e-3)


def test_their_slof_and_dao_read_a_neighbour_right_only_when_it_is_an_image_before_the_query(features):
    nearest = Neighbourhoods.of(features).neighbours[: len(IMAGE), :K]
    read_right = AuthorsNeighbours.of(features, K).rows == nearest
    query = np.arange(len(IMAGE))[:, None]
    np.testing.assert_array_equal(read_right, nearest < query)
    assert read_right.mean() == 0.25


def test_paper_neighbours_are_the_default_and_the_paper_s_scores(features):
    for detector, score in NEIGHBOURHOOD_SCORES.items():
        assert "default" not in get_detector(detector).options["properties"]["neighbours"]
        np.testing.assert_array_equal(score(features, {"k": K}), score(features, {"k": K, "neighbours": "paper"}))
    assert not np.allclose(slof_scores(features, {"k": K}), HUANG["slof"], rtol=0.05)


def test_neighbours_left_out_stays_out_of_the_options_and_a_wrong_one_is_one_line():
    """Left out, the filled options (and so the detection digest) are those of before the option."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert validate_config(dict(config))["detection"]["options"]["slof"] == {"k": 16}
    config["detection"] = {"options": {"slof": {"neighbours": "author"}}}
    message = "config: detection.options.slof.neighbours: 'author' is not one of ['paper', 'authors']; did you mean 'authors'?"
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        validate_config(config)


def test_isolation_forest_is_theirs_negated_given_the_seed(features):
    np.testing.assert_allclose(isolation_forest_scores(features, {"trees": 100}), -np.array(HUANG["isolation_forest"]), rtol=1e-12)


def test_clip_score_is_theirs_negated(features):
    np.testing.assert_allclose(clip_score_scores(features, {}), -np.array(HUANG["clip_score"]), rtol=1e-12)


def test_decree_s_cosine_term_is_the_authors():
    cosine = mean_off_diagonal_cosine(torch.tensor(EMBEDDINGS, dtype=torch.float64)).item()
    assert cosine == pytest.approx(DECREE_COSINE, rel=1e-12)


@pytest.mark.parametrize("usage", DECREE_LR)
def test_decree_s_learning_rate_schedule_is_the_authors_at_their_lr(usage):
    assert {epoch: milestone_lr(0.5, DECREE_MILESTONES[usage], epoch) for epoch in DECREE_LR[usage]} == pytest.approx(DECREE_LR[usage])


def test_decree_s_defaults_are_the_authors_32_px_settings_but_the_epochs():
    defaults = {name: value["default"] for name, value in get_detector("decree").options["properties"].items()}
    assert (INITIAL_LAMBDA, LAMBDA_FACTOR) == (1e-3, 5.0)
    differing = {name for name in DECREE_SETTINGS if defaults[name] != DECREE_SETTINGS[name]}
    assert differing == {"epochs"}  # 60 here, a CPU budget; `epochs: 1000` gives theirs


BDETCLIP_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BDETCLIP_IMAGES = [[0.9, 1.2, -0.3, 0.5, 2.0], [-0.4, 0.8, 1.1, 0.2, 1.5], [1.3, -0.2, 0.6, 1.0, 0.7], [0.1, 0.3, -1.2, 0.9, 1.1]]
BDETCLIP_OMEGA = [-0.03867339396453362, 0.7928444687604241, -1.768929590609332, -0.11853681102581143]
# the prompts their code embedded: its descriptions (their "1. " numbering dropped) and, as the
# malignant ones, each template with its period made a comma, then the class's unrelated line
# (lowercased, its number and line end kept)
BENIGN = [lambda c: f"A {c} seen from the side.", lambda c: f"The {c} stands out at the centre of a photo."]
MALIGNANT = [
    lambda c, template=template: f"{template.format(c)[:-1]}, {BDETCLIP_CLASSES.index(c)} the train leaves the station at noon number {BDETCLIP_CLASSES.index(c)}.\n"
    for template in ("a photo of a {}.", "a drawing of the {}.")
]


class LetterCounts(nn.Module):
    """A stand-in CLIP: a text's embedding counts its letters a, e, o, t and its spaces; an
    image's is itself."""

    @staticmethod
    def tokenize(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[float(text.count(letter)) for letter in "aeot "] for text in texts], dtype=torch.float64)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return nn.functional.normalize(tokens, dim=-1) if normalize else tokens

    encode_image = encode_text


def test_bdetclip_s_omega_is_the_authors_given_their_prompts():
    model = LetterCounts()
    images = torch.tensor(BDETCLIP_IMAGES, dtype=torch.float64)
    inputs = test_time.TestTimeInputs(checkpoint=type("Checkpoint", (), {"model": model}), tokenizer=model.tokenize, classnames=BDETCLIP_CLASSES,
                            images=images, clean_reference=images, normalize=lambda batch: batch, device=torch.device("cpu"))
    benign, malignant = test_time._class_prompts(inputs, BENIGN), test_time._class_prompts(inputs, MALIGNANT)
    omega = test_time.bdetclip_omega(test_time._image_features(inputs, images), benign, malignant)
    np.testing.assert_allclose(omega.numpy(), BDETCLIP_OMEGA, atol=1e-5)  # ours in float32

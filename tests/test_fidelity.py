"""The claims table: each verdict on hand-computed cases, each claim's number from a results
database built from metrics files, and the page that the script writes."""

import pytest
from test_results import START, cleaned, pretrained, replicate, write_database

from cleanclip_core.results import query
from cleanclip_core.tables import write_csv

from cleanclip_core.fidelity import (
    CLAIMS, CONTRADICTED, DIRECTION, NOT_AT_SCALE, NOT_MEASURED, REPRODUCED, backdoor_planted, cleans_at_small_cost,
    lower_asr, main, rung_findings, signed_verdict,
)


def write_study(folder, results, poisons=None):
    """A study folder whose tables/summary.csv is the study_summary of these results and poisons
    (as write_database takes them), as the pipeline writes it."""
    database = write_database(folder, results, poisons=poisons)
    write_csv(query(database, "SELECT * FROM study_summary").to_pandas(), folder / "tables" / "summary.csv")
    return folder


@pytest.mark.parametrize("mean, low, high, expected, verdict", [
    (0.10, 0.05, 0.20, +1, REPRODUCED),
    (0.10, -0.05, 0.20, +1, DIRECTION),
    (-0.10, -0.20, 0.05, +1, NOT_AT_SCALE),
    (-0.10, -0.20, -0.05, +1, CONTRADICTED),
    (-0.10, -0.20, -0.05, -1, REPRODUCED),
    (float("nan"),) * 3 + (+1, NOT_MEASURED),
])
def test_a_verdict_compares_the_interval_with_the_papers_sign(mean, low, high, expected, verdict):
    assert signed_verdict(mean, low, high, expected) == verdict


@pytest.fixture()
def study(tmp_path):
    """The MMCL model (top-1 0.90, ASR@1 0.99) cleaned with two seeds by CleanCLIP (oracle
    epochs at 0.89 and 0.87 top-1; lowest ASR@1 0.02 and 0.04) and by PAR (0.01 and 0.01)."""
    results = [(START, 0.90, 0.99)] + [
        (replicate(cleaned(0.003, 1), seed, method), top1, asr)
        for method, seed, top1, asr in [
            ("cleanclip", 0, 0.89, 0.02), ("cleanclip", 1, 0.87, 0.04), ("par", 0, 0.80, 0.01), ("par", 1, 0.82, 0.01),
        ]
    ]
    return write_study(tmp_path, results)


def test_the_planted_backdoor_is_the_pretrained_models_asr(study):
    [finding] = backdoor_planted(study)
    # one pretrained model: Wilson's interval over its 90 triggered images, z = 1.959964:
    # centre (0.99 + z^2 / 180) / (1 + z^2 / 90) = 0.969941, half-width 0.028418
    assert (finding.of, finding.verdict) == ("mmcl, badnet", REPRODUCED)
    assert finding.estimate == pytest.approx((0.99, 0.941523, 0.998359), abs=1e-6)


def test_the_planted_backdoor_leaves_out_a_clean_control(tmp_path):
    control = START | {"attack": "control"}
    study = write_study(tmp_path, [
        (START, 0.90, 0.99), (control, 0.90, 0.01),
        (cleaned(0.003, 1), 0.89, 0.02), (cleaned(0.003, 1) | {"attack": "control"}, 0.89, 0.01),
    ], poisons={"badnet": 60, "control": 0})
    summary = study / "tables" / "summary.csv"
    assert summary.read_text().splitlines()[0].endswith(",n_poisons")
    assert [finding.of for finding in backdoor_planted(study)] == ["mmcl, badnet"]


def test_cleanings_cost_is_the_start_minus_the_oracle_epoch_paired_by_replicate(study):
    [finding] = cleans_at_small_cost("mmcl")(study)
    assert finding.of == "mmcl, badnet"
    # costs 0.01 and 0.03: mean 0.02, sd 0.0141421, half-width 12.706205 * 0.01 = 0.127062
    assert finding.estimate == pytest.approx((0.02, -0.107062, 0.147062), abs=1e-6)
    assert (finding.verdict, finding.note) == (DIRECTION, "2 of 2 backdoored replicates (2 in all) cleaned to ASR@1 <= 5%")
    assert cleans_at_small_cost("mmcl_ssl")(study) == []


def test_a_start_whose_backdoor_never_took_counts_for_no_cleaning_claim(tmp_path):
    """The MMCL+SSL model's ASR@1 is 0.30, below the attack floor (0.5): nothing to clean."""
    start = pretrained("mmcl_ssl")
    write_study(tmp_path, [(START, 0.90, 0.99), (start, 0.90, 0.30)] + [
        (replicate(cleaned(0.003, 1, objective), seed), 0.88, asr)
        for objective in ("mmcl", "mmcl_ssl") for seed, asr in [(0, 0.02), (1, 0.04)]
    ])
    [finding] = cleans_at_small_cost("mmcl_ssl")(tmp_path)
    assert (finding.verdict, finding.note) == (NOT_MEASURED, "0 of 0 backdoored replicates (2 in all) cleaned to ASR@1 <= 5%")
    [finding] = lower_asr("pretrain_objective", "mmcl", "mmcl_ssl", -1)(tmp_path)
    assert (finding.of, finding.verdict, finding.note) == ("cleanclip badnet", NOT_MEASURED, "0 of 2 pairs with both starts backdoored")


def test_par_against_cleanclip_is_the_paired_difference_of_the_lowest_asr(study):
    [finding] = lower_asr("clean_method", "cleanclip", "par", +1)(study)
    # differences 0.01 and 0.03, as above
    assert finding.estimate == pytest.approx((0.02, -0.107062, 0.147062), abs=1e-6)
    assert finding.verdict == DIRECTION
    assert lower_asr("attack", "badclip", "badnet", +1)(study) == []


def test_the_page_gives_every_claim_a_section_and_a_row_per_rung(study, tmp_path, capsys):
    page = tmp_path / "fidelity.md"
    main([f"small={study}", f"missing={tmp_path / 'none'}", "--output", str(page)])
    text = page.read_text()
    assert text.count("\n## ") == len(CLAIMS) >= 5
    assert ("| small | mmcl, badnet | 2.0 [-10.7, 14.7] | 2 of 2 backdoored replicates (2 in all) cleaned to ASR@1 <= 5% | "
            "**direction only** |") in text
    assert text.count("| missing |  |  | no runs of it in this study | **not measured** |") == len(CLAIMS)
    main([f"small={study}", f"missing={tmp_path / 'none'}"])
    assert capsys.readouterr().out == text


def test_each_claim_is_drawn_against_the_rungs_and_shown_on_the_page(study, tmp_path):
    page, figures = tmp_path / "docs" / "fidelity.md", tmp_path / "docs" / "fidelity"
    page.parent.mkdir()
    main([f"small={study}", f"again={study}", "--output", str(page), "--figures", str(figures)])
    assert sorted(path.name for path in figures.iterdir()) == sorted(
        f"claim_{number}.{suffix}" for number in range(1, len(CLAIMS) + 1) for suffix in ("pdf", "png"))
    assert "![claim 4 against the corpus size](fidelity/claim_4.png)" in page.read_text()
    first = (figures / "claim_4.png").read_bytes()
    main([f"small={study}", f"again={study}", "--output", str(page), "--figures", str(figures)])
    assert (figures / "claim_4.png").read_bytes() == first


def test_a_rung_of_several_studies_gives_each_model_or_cell_once(study, tmp_path):
    """An overlay's study shares the rung's runs: what both measure comes once, from the first."""
    claim = CLAIMS[1]
    assert rung_findings(claim, [tmp_path / "none", study, study]) == claim.measure(study) != []
    page = tmp_path / "fidelity.md"
    main([f"small={tmp_path / 'none'},{study}", "--output", str(page)])
    assert page.read_text().count("| small | mmcl, badnet |") == 2  # claims 1 and 2, once each

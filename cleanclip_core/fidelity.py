"""The claims table (docs/fidelity.md): each headline claim of the field, the paper's number,
ours in each study of the papers' regime (a rung: its tables summary.csv and detection.csv) with
its 95% interval, and a verdict. `python -m cleanclip_core.fidelity NAME=STUDY_DIR[,STUDY_DIR...] ...` writes
it: a rung may hold several studies of one corpus (overlays measuring claims its grid does not)."""

import argparse
import math
import os
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cleanclip_core.intervals import cell_intervals, paired_difference
from cleanclip_core.plots.cleaning import save_figure
from cleanclip_core.results import paired_rows

VERDICT_NAMES = ("reproduced", "direction only", "not at this scale", "contradicted", "not measured")
REPRODUCED, DIRECTION, NOT_AT_SCALE, CONTRADICTED, NOT_MEASURED = VERDICT_NAMES
VERDICTS = (
    "`reproduced`: our interval excludes no effect, on the paper's side (for the planted backdoor: lies above 90%; "
    "for a cost: every replicate cleaned and the interval within 5 points); `direction only`: the mean lies on "
    "the paper's side, the interval includes no effect; `not at this scale`: the mean lies on the other side, the "
    "interval includes no effect; `contradicted`: the interval excludes no effect, on the other side; "
    "`not measured`: the rung has no such runs."
)
SMALL_COST = 0.05  # "at small cost": top-1 lost at most 5 points (the papers': under 1 point)


@dataclass(frozen=True)
class Finding:
    """One measured row of a claim: what it is of, (mean, low, high) and the verdict."""

    of: str
    estimate: tuple[float, float, float]
    verdict: str
    note: str = ""


@dataclass(frozen=True)
class Claim:
    statement: str
    source: str
    paper: str  # the paper's number, as the paper gives it
    ours: str  # what our number is, in words
    measure: Callable[[Path], list[Finding]]  # a study folder to its findings


def signed_verdict(mean: float, low: float, high: float, expected: int) -> str:
    """The verdict on an effect (mean, low, high) whose sign in the paper is `expected` (+1 or -1)."""
    if any(map(math.isnan, (mean, low, high))):
        return NOT_MEASURED
    low, high = sorted((expected * low, expected * high))
    if low > 0:
        return REPRODUCED
    if high < 0:
        return CONTRADICTED
    return DIRECTION if expected * mean > 0 else NOT_AT_SCALE


def _of_summary(measure: Callable[[pd.DataFrame], list[Finding]]) -> Callable[[Path], list[Finding]]:
    """`measure` of a study's summary (tables/summary.csv, the database's study_summary: a row
    per cleaning run group and replicate) as a measure of the study's folder: no findings
    without one. Clean controls (no poisons) are left out: every claim of a summary is about an
    attack (the detection claims rank controls, from detection.csv); kept tables from before
    the summary had n_poisons hold none."""

    def of_study(study: Path) -> list[Finding]:
        summary = study / "tables" / "summary.csv"
        if not summary.exists():
            return []
        # settings digests stay text: one of digits and an e would read as a number
        table = pd.read_csv(summary, dtype={"pretrain_settings": str, "clean_settings": str})
        return measure(table[table.n_poisons != 0] if "n_poisons" in table else table)

    return of_study


def _starts(summary: pd.DataFrame) -> pd.DataFrame:
    """A row per pretrained model of the summary."""
    return summary.drop_duplicates(["attack", "pretrain_objective", "pretrain_seed"])


@_of_summary
def backdoor_planted(summary: pd.DataFrame) -> list[Finding]:
    """The pretrained models' ASR@1, per attack and pretraining objective, over the pretraining
    seeds; clean controls left out."""
    starts = _starts(summary)
    findings = []
    for row in cell_intervals(starts, ["attack", "pretrain_objective"], {"start_asr_top1": "n_triggered"}).itertuples():
        estimate = (row.start_asr_top1, row.start_asr_top1_low, row.start_asr_top1_high)
        verdict = REPRODUCED if estimate[1] >= 0.9 else DIRECTION if estimate[0] >= 0.5 else NOT_AT_SCALE
        findings.append(Finding(f"{row.pretrain_objective}, {row.attack}", estimate, verdict,
                                f"{row.n_replicates} pretrained models"))
    return findings


def cleans_at_small_cost(objective: str) -> Callable[[Path], list[Finding]]:
    """CleanCLIP's top-1 lost (start minus the oracle's epoch at ASR@1 <= 5%) on `objective`'s
    backdoored models, per attack, over the replicates it cleaned; how many it cleaned."""

    @_of_summary
    def measure(summary: pd.DataFrame) -> list[Finding]:
        runs = summary[(summary.pretrain_objective == objective) & (summary.clean_method == "cleanclip")
                       & (summary.cleaning_poisons == 0)]
        return [_cleaning_cost(f"{objective}, {attack}", replicates) for attack, replicates in runs.groupby("attack", sort=True)]

    return measure


def _cleaning_cost(of: str, runs: pd.DataFrame) -> Finding:
    backdoored = runs[~runs.attack_failed]
    removed = backdoored[backdoored.best_top1.notna()]
    cost = paired_difference(removed.start_top1, removed.best_top1, runs.n_images.max(), runs.n_images.max())
    note = f"{len(removed)} of {len(backdoored)} backdoored replicates ({len(runs)} in all) cleaned to ASR@1 <= 5%"
    if backdoored.empty:
        return Finding(of, cost, NOT_MEASURED, note)
    if removed.empty:
        return Finding(of, cost, NOT_AT_SCALE, note)
    small = len(removed) == len(backdoored) and cost[2] <= SMALL_COST
    return Finding(of, cost, REPRODUCED if small else DIRECTION, note)


def lower_asr(dimension: str, a: str, b: str, expected: int) -> Callable[[Path], list[Finding]]:
    """The paired difference a - b of the lowest ASR@1 that cleaning reached (pairs: the same
    rest of the grid and seeds, as in the comparisons table), over the pairs whose two starts
    both carry the backdoor, per cell; the paper's sign `expected`."""

    @_of_summary
    def measure(summary: pd.DataFrame) -> list[Finding]:
        pairs = paired_rows(summary[summary.cleaning_poisons == 0], dimension, a, b)
        cell = [name for name in ("pretrain_objective", "clean_method", "attack") if name != dimension]
        findings = []
        for key, group in pairs.groupby(cell, sort=True):
            backdoored = group[~group.attack_failed_a & ~group.attack_failed_b]
            n = group.n_triggered_a.max()
            estimate = paired_difference(backdoored.lowest_asr_top1_a, backdoored.lowest_asr_top1_b, n, n)
            note = f"{len(backdoored)} of {len(group)} pairs with both starts backdoored"
            findings.append(Finding(" ".join(map(str, key)), estimate, signed_verdict(*estimate, expected), note))
        return findings

    return measure


def robust_pretraining(objective: str, metric: str) -> Callable[[Path], list[Finding]]:
    """MMCL's pretrained models minus `objective`'s in `metric` (start_top1 or start_asr_top1),
    paired by pretraining seed; the papers' sign is +1 for both (lower ASR, at a cost in top-1)."""

    @_of_summary
    def measure(summary: pd.DataFrame) -> list[Finding]:
        starts = _starts(summary)
        pairs = starts[starts.pretrain_objective == "mmcl"].merge(
            starts[starts.pretrain_objective == objective], on=["attack", "pretrain_seed"], suffixes=("_mmcl", ""))
        findings = []
        for attack, models in pairs[~pairs.attack_failed_mmcl].groupby("attack", sort=True):
            count = "n_triggered" if "asr" in metric else "n_images"
            estimate = paired_difference(models[f"{metric}_mmcl"], models[metric], models[count].max(), models[count].max())
            level = f"{objective}'s own {100 * models[metric].mean():.1f}"
            seeds = f"{len(models)} pretraining seed{'s' * (len(models) > 1)}"
            findings.append(Finding(attack, estimate, signed_verdict(*estimate, +1), f"{seeds}; {level}"))
        return findings

    return measure


def finds_backdoor(detectors: tuple[str, ...], level: str) -> Callable[[Path], list[Finding]]:
    """The AUROC of each of `detectors` (tables/detection.csv) on the backdoored models of the
    study (MMCL-pretrained, not cleaned), with its bootstrap interval; chance is 0.5."""

    def measure(study: Path) -> list[Finding]:
        path = study / "tables" / "detection.csv"
        if not path.exists():
            return []
        table = pd.read_csv(path)
        rows = table[table.detector.isin(detectors) & (table.level == level) & (table.pretrain_objective == "mmcl")
                     & table.auroc.notna()]
        if "clean_method" in rows:
            rows = rows[rows.clean_method.isna()]
        return [
            Finding(f"{row.detector}, {row.attack}", (row.auroc - 0.5, row.auroc_low - 0.5, row.auroc_high - 0.5),
                    signed_verdict(row.auroc - 0.5, row.auroc_low - 0.5, row.auroc_high - 0.5, +1),
                    f"AUROC {row.auroc:.3f} over {row.n_scored} scored")
            for row in rows.sort_values(["detector", "attack"]).itertuples()
        ]

    return measure


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


CLAIMS = (
    Claim("The attack plants a backdoor (the precondition of every claim below)",
          "Bansal et al. 2023; Verma et al. 2024 (CC3M, 1,500 poisons)", "MMCL 99.9% ASR, MMCL+SSL 99.1%",
          "the pretrained models' ASR@1", backdoor_planted),
    Claim("CleanCLIP cleans an MMCL-pretrained model at small cost", "Bansal et al. 2023; Verma et al. 2024",
          "ASR 99.9% to 0.5%, top-1 16.0% to 16.3%",
          "top-1 lost at the best epoch with ASR@1 <= 5% (points)", cleans_at_small_cost("mmcl")),
    Claim("CleanCLIP fails on an MMCL+SSL-pretrained model", "Verma et al. 2024",
          "every setting keeping >= 16% top-1 leaves 56-97% ASR; at 1.7% ASR top-1 is 14.0% (from 17.0%)",
          "lowest ASR@1 reached, MMCL minus MMCL+SSL (points; below zero: MMCL+SSL keeps more)",
          lower_asr("pretrain_objective", "mmcl", "mmcl_ssl", -1)),
    Claim("PAR removes more of the backdoor than CleanCLIP", "Singh et al. 2024 (PAR)",
          "PAR 13% ASR at 50.5% top-1; CleanCLIP never below about 59% ASR",
          "lowest ASR@1 reached, CleanCLIP minus PAR (points; above zero: PAR lower)",
          lower_asr("clean_method", "cleanclip", "par", +1)),
    Claim("BadCLIP's backdoor survives CleanCLIP, BadNet's does not", "Liang et al. 2024 (BadCLIP); ABD's table",
          "after CleanCLIP: BadCLIP 89.6% ASR, BadNet 14.0%",
          "lowest ASR@1 reached by CleanCLIP, BadCLIP minus BadNet (points)",
          lower_asr("attack", "badclip", "badnet", +1)),
    Claim("RoCLIP pretraining lowers the ASR", "Yang et al. 2024 (RoCLIP); ABD's table",
          "BadNet 96.5% to 80.8% ASR (ABD's table); 'to 0%' in RoCLIP's own",
          "pretrained ASR@1, MMCL minus RoCLIP (points)", robust_pretraining("roclip", "start_asr_top1")),
    Claim("RoCLIP pretraining costs accuracy", "ABD's table (Liang et al.'s group)", "top-1 58.7% to 46.6%",
          "pretrained top-1, MMCL minus RoCLIP (points)", robust_pretraining("roclip", "start_top1")),
    Claim("SafeCLIP pretraining prevents the backdoor", "Yang et al. 2024 (SafeCLIP)", "ASR from up to 100% to 0%",
          "pretrained ASR@1, MMCL minus SafeCLIP (points)", robust_pretraining("safeclip", "start_asr_top1")),
    Claim("DAO and SLOF find the poisoned pairs at low poisoning rates", "Huang et al. 2025",
          "AUROC about 1.0 on CC3M at 0.01-0.1% poisons",
          "AUROC minus chance (0.5) over the MMCL model's training pairs (points)",
          finds_backdoor(("dao", "slof"), "training")),
    Claim("DECREE tells backdoored encoders from clean ones", "Feng et al. 2023 (DECREE)",
          "a smaller stamp (PL1) in backdoored encoders than in clean ones: 'consistently high detection accuracy' "
          "over 400 trojaned encoders, OpenAI's CLIP among them (its abstract; no AUROC for CLIPs pretrained on poisons)",
          "AUROC minus chance (0.5) over the backdoored and clean pretrained models (points)",
          finds_backdoor(("decree",), "model")),
)


def rung_findings(claim: Claim, studies: list[Path]) -> list[Finding]:
    """The claim's findings in a rung's studies: what the first study measures of a model or cell,
    as later studies share its runs."""
    findings = {}
    for study in studies:
        for finding in claim.measure(study):
            findings.setdefault(finding.of, finding)
    return list(findings.values())


def claim_rows(findings: dict[str, list[Finding]]) -> list[str]:
    """A claim's table rows: one per rung and finding, or one saying a rung did not measure it."""
    rows = []
    for rung, found in findings.items():
        for finding in found or [Finding("", (math.nan,) * 3, NOT_MEASURED, "no runs of it in this study")]:
            mean, low, high = finding.estimate
            ours = "" if math.isnan(mean) else f"{_percent(mean)} [{_percent(low)}, {_percent(high)}]"
            rows.append(f"| {rung} | {finding.of} | {ours} | {finding.note} | **{finding.verdict}** |")
    return rows


def plot_claim(claim: Claim, findings: dict[str, list[Finding]]) -> Figure:
    """The claim's effect against the rungs (in their order: corpus size), a series per finding
    with its 95% interval; the dashed line is no effect."""
    figure = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = figure.subplots()
    series = list(dict.fromkeys(finding.of for found in findings.values() for finding in found))
    for offset, of in zip(np.linspace(-0.08, 0.08, len(series)) if len(series) > 1 else [0.0], series):
        points = [(x, finding.estimate) for x, found in enumerate(findings.values()) for finding in found if finding.of == of]
        x = np.array([x for x, _ in points]) + offset
        mean, low, high = (100 * np.array(values) for values in zip(*(estimate for _, estimate in points)))
        ax.errorbar(x, mean, yerr=[mean - low, high - mean], marker="o", capsize=3, label=of)
    ax.axhline(0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(findings)), list(findings))
    ax.set_xlim(-0.5, len(findings) - 0.5)
    ax.set_xlabel("rung (corpus size)")
    ax.set_ylabel(textwrap.fill(claim.ours, 40), fontsize=8)
    ax.set_title(textwrap.fill(claim.statement, 60), fontsize=9)
    if series:
        ax.legend(fontsize=7)
    return figure


def fidelity_markdown(rungs: dict[str, list[Path]], figures: Path | None = None, page: Path | None = None) -> str:
    """docs/fidelity.md for the rungs (name to study folders, in the order of corpus size); with
    `figures`, each claim's trend over the rungs is drawn there (PNG and PDF) and shown on the
    page (linked relative to `page`)."""
    lines = [
        "# Fidelity: the field's claims in the papers' regime",
        "",
        "Written by `python -m cleanclip_core.fidelity` from the studies' tables "
        f"({'; '.join(f'`{rung}`: ' + ', '.join(map(str, studies)) for rung, studies in rungs.items())}); do not edit by hand. "
        f"Intervals are 95%, over the replicates (docs/statistics.md). Verdicts: {VERDICTS}",
    ]
    for number, claim in enumerate(CLAIMS, 1):
        findings = {rung: rung_findings(claim, studies) for rung, studies in rungs.items()}
        lines += [
            "", f"## {number}. {claim.statement}", "",
            f"Paper ({claim.source}): {claim.paper}. Ours: {claim.ours}.", "",
            "| rung | of | ours, % or points [95% interval] | on | verdict |", "| --- | --- | --- | --- | --- |",
            *claim_rows(findings),
        ]
        if figures is not None:
            for suffix in ("png", "pdf"):
                save_figure(plot_claim(claim, findings), figures / f"claim_{number}.{suffix}")
            shown = os.path.relpath(figures / f"claim_{number}.png", page.parent if page else Path.cwd())
            lines += ["", f"![claim {number} against the corpus size]({shown})"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rungs", nargs="+", metavar="NAME=STUDY_DIR[,STUDY_DIR...]",
                        help="a rung's name and its study folders, smallest rung first")
    parser.add_argument("--output", type=Path, help="the file to write (default: standard output)")
    parser.add_argument("--figures", type=Path, help="a folder for each claim's figure against the rungs")
    arguments = parser.parse_args(argv)
    if malformed := [rung for rung in arguments.rungs if "=" not in rung]:
        parser.error(f"{malformed[0]!r} is not NAME=STUDY_DIR")
    rungs = {name: [Path(folder) for folder in folders.split(",")]
             for name, folders in (rung.split("=", 1) for rung in arguments.rungs)}
    text = fidelity_markdown(rungs, arguments.figures, arguments.output)
    if arguments.output:
        arguments.output.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()

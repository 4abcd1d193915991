"""The smoke study (an attack and a clean control, two pretraining objectives, two cleaning
methods, two numbers of poisons in the cleaning set) through Snakemake, once: its metrics, database, summary, figures and
report; then what each change of an execution setting or of a grid dimension reruns."""

import copy
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from cleanclip_core import fidelity, study
from cleanclip_core.config import validate_config
from cleanclip_core.detectors import get_detector
from cleanclip_core.results import IDENTITY_SCHEMA, config_hash, query, run_id
from cleanclip_core.tables import table_provenance
from workflow import ONE_THREAD, ROOT, attack_folder, job_counts, jobs_run, run_snakemake

SMOKE = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())
STUDY_DIR = "results/studies/smoke"
EPOCHS = SMOKE["clean"]["epochs"]
LIGHT = {"results_database": 1, "figures": 1, "overview": 1, "headline_figure": 1, "all": 1}
DETECTORS = len(SMOKE["study"]["detectors"])
LEVELS = [get_detector(name).level for name in SMOKE["study"]["detectors"]]


def planned(workdir, config) -> dict[str, int]:
    """The jobs a dry run with `config` plans, per rule, without the total; {} for none."""
    result = run_snakemake(workdir, config, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    if "Nothing to be done" in result.stdout + result.stderr:
        return {}
    counts = job_counts(result.stdout)
    counts.pop("total")
    return counts


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    result = run_snakemake(workdir, SMOKE, *ONE_THREAD, timeout_s=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def wide(smoke_run):
    return query(smoke_run / f"{STUDY_DIR}/results.duckdb", "SELECT * FROM metrics_wide").to_pandas()


def test_metrics_have_every_pretrained_model_and_cleaning_epoch_of_the_grid(wide):
    config = validate_config(copy.deepcopy(SMOKE))
    starts = {(*row, *[None] * len(study.CLEAN_DIMENSIONS), 0) for row in study.pretrained_models(config).itertuples(index=False)}
    epochs = range(1, EPOCHS + 1)
    cleaned = {(*row, epoch) for row in study.cleaning_runs(config).itertuples(index=False) for epoch in epochs}
    identities = wide[list(IDENTITY_SCHEMA.names)].itertuples(index=False)
    assert {tuple(None if pd.isna(value) else value for value in row) for row in identities} == starts | cleaned
    assert len(wide) == len(starts | cleaned)
    assert wide[["top1", "top5", "asr_top1", "asr_top5", "asr_top10"]].notna().all().all()
    assert (wide.n_images == SMOKE["dataset"]["corpus"]["n_eval"]).all()


def test_every_metrics_row_carries_every_dimension_and_its_run_folder(smoke_run):
    for path in (smoke_run / "results/runs").rglob("metrics.parquet"):
        table = pq.read_table(path).to_pandas()
        assert table.columns[: len(IDENTITY_SCHEMA) + 1].tolist() == ["run_id", *IDENTITY_SCHEMA.names]
        run_folder = path.parent.parent if path.parent.name.startswith("epoch_") else path.parent
        assert set(table.run_id) == {str(run_folder.relative_to(smoke_run / "results/runs"))}
        pretrained = table[list(study.PRETRAIN_DIMENSIONS)]
        assert pretrained.notna().all().all()


def test_metrics_files_carry_provenance_without_execution_settings(smoke_run):
    path = next((smoke_run / "results/runs").rglob("epoch_001/metrics.parquet"))
    table = pq.read_table(path).to_pandas()
    assert table.config_hash.str.fullmatch(r"[0-9a-f]{16}").all()
    assert table.code_version.str.startswith("0.1.0").all()
    settings = table_provenance(path)["config"]
    assert settings["clean"]["epochs"] == EPOCHS and table.config_hash[0] == config_hash(settings)
    assert not re.search(r"num_workers|batch_size.: 64|threads|timeout", str(settings))


def test_summary_has_a_row_per_attack_objective_method_and_cleaning_poisons(smoke_run):
    summary = query(smoke_run / f"{STUDY_DIR}/results.duckdb", "SELECT * FROM study_summary").to_pandas()
    keys = ["attack", "pretrain_objective", "clean_method", "cleaning_poisons"]
    grid = study.cleaning_runs(validate_config(copy.deepcopy(SMOKE)))
    assert sorted(map(tuple, summary[keys + ["clean_seed"]].values.tolist())) == sorted(
        map(tuple, grid[keys + ["clean_seed"]].drop_duplicates().values.tolist())
    )
    assert summary[["start_top1", "start_asr_top1", "start_asr_top10", "last_top1", "lowest_asr_top1"]].notna().all().all()
    csv = (smoke_run / f"{STUDY_DIR}/tables/summary.csv").read_text().splitlines()
    assert len(csv) == len(summary) + 1 and csv[0].startswith("dataset,attack,model,start,pretrain_objective")


def test_fig2_per_attack_and_cleaning_poisons_and_the_headline_is_the_first(smoke_run):
    points = pq.read_table(smoke_run / f"{STUDY_DIR}/figures/fig2_data.parquet").to_pandas()
    facets = points[["attack", "cleaning_poisons"]].drop_duplicates()
    assert len(facets) == len(SMOKE["study"]["cleaning_poisons"]) + 1  # the control's cleaning sets have no poisons
    for facet in facets.itertuples(index=False):
        in_facet = points[(points.attack == facet.attack) & (points.cleaning_poisons == facet.cleaning_poisons)]
        assert list(in_facet.panel.unique()) == SMOKE["study"]["pretrain_objectives"]
        assert (in_facet.epoch == 0).sum() == 2
        for kind in ("fig2", "trajectories"):
            for suffix in ("pdf", "png"):
                path = smoke_run / f"{STUDY_DIR}/figures/{kind}/{facet.attack}_poisons{facet.cleaning_poisons}.{suffix}"
                assert path.stat().st_size > 10_000
    headline = (smoke_run / "results/figures/fig2.pdf").read_bytes()
    assert headline == (smoke_run / f"{STUDY_DIR}/figures/fig2/badnet_poisons0.pdf").read_bytes()
    assert (smoke_run / f"{STUDY_DIR}/figures/contamination.pdf").stat().st_size > 10_000


def test_safeclip_pretraining_logs_its_split_and_its_models_are_cleaned_and_evaluated(smoke_run, wide):
    logs = [p for p in (smoke_run / "results/logs/pretrain").rglob("*.log") if "pretrain_objective=safeclip" in str(p)]
    assert len(logs) == len(SMOKE["study"]["attacks"])
    assert all(re.search(r"SafeCLIP epoch 3: \d+ of 60 pairs safe", log.read_text()) for log in logs)
    assert set(wide.pretrain_objective) == set(SMOKE["study"]["pretrain_objectives"])
    assert wide[wide.pretrain_objective == "safeclip"].clean_method.notna().any()


def test_report_holds_every_figure_and_the_summary(smoke_run):
    result = run_snakemake(smoke_run, SMOKE, "--report", "results/report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    report = (smoke_run / "results/report.html").read_text()
    for name in (
        "badnet_poisons0.png", "badnet_poisons2.png", "control_poisons0.png", "contamination.png", "summary.csv",
        "overview.html", "trigger_grid.png", "roc.png", "detection.csv",
    ):
        assert name in report
    assert "Start with" in report  # the landing page's description of the study, beside the rule graph
    overview = (smoke_run / f"{STUDY_DIR}/overview.html").read_text()
    assert overview.count("data:image/png;base64,") == 3 + 1 + 1  # fig2 per facet, the badnet trigger grid, ROC
    assert "Training-set detection" in overview


@pytest.mark.parametrize(
    "setting, value",
    [
        ("num_workers", 1), ("evaluation_batch_size", 7), ("torch_compile", True), ("download_threads", 2),
        ("download_timeout_s", 3), ("download_retries", 2),
    ],
)
def test_changing_an_execution_setting_reruns_nothing(smoke_run, setting, value):
    config = copy.deepcopy(SMOKE)
    config["execution"][setting] = value
    assert planned(smoke_run, config) == {}


def changed(**changes) -> dict:
    """The smoke config with `changes` (section -> {key: value}) merged into it."""
    config = copy.deepcopy(SMOKE)
    for section, values in changes.items():
        config[section] |= values
    return config


def training(pretrained: int, runs: int, data: dict | None = None) -> dict:
    """The jobs of `pretrained` new pretrained models (their detection too) and `runs` new
    cleaning runs, and the study's database and figures after them."""
    jobs = {"pretrain": pretrained, "evaluate_pretrained": pretrained, "clean": runs, "evaluate_cleaned": runs}
    jobs |= {
        "embed_training": pretrained, "detect_training": pretrained * LEVELS.count("training"),
        "detect_test": pretrained * LEVELS.count("test"), "detection_summary": min(pretrained, 1),
    }
    return {name: count for name, count in (jobs | (data or {})).items() if count} | LIGHT


@pytest.mark.parametrize(
    "dimension, config, expected",
    [
        # a new attack: its poisoning, its 2 x 2 cleaning sets, 2 pretrained models, 2 x 2 x 2 x 2 runs
        ("attack", changed(attacks=SMOKE["attacks"] | {"sig": {"type": "sig", "target_label": "star", "n_poisons": 6}},
                           study={"attacks": ["badnet", "sig"]}),
         training(2, 16, {"poison": 1, "trigger_grid": 1, "cleaning_set": 4})),
        # the trigger grid too: it draws the images at the model's input size
        ("model", changed(study={"model": "tiny-vit"}), training(4, 24, {"trigger_grid": 1})),
        ("pretrain_objective", changed(study={"pretrain_objectives": ["mmcl", "ssl_only"]}), training(2, 12)),
        ("clean_method", changed(study={"clean_methods": ["cleanclip", "ssl_only"]}), training(0, 12)),
        ("cleaning_poisons", changed(study={"cleaning_poisons": [0, 3]}), training(0, 8, {"cleaning_set": 2})),
        ("lr", changed(clean={"per_method": {"cleanclip": {"lrs": [0.002]}, "mmcl_only": {"batch_size": 20}}}), training(0, 12)),
        ("an experiment setting", changed(pretrain={"per_objective": SMOKE["pretrain"]["per_objective"] | {"mmcl": {"lr": 0.002}}}), training(2, 12)),
        # a trigger parameter: the attack poisons anew beside the first, and all that follows
        ("a trigger parameter", changed(attacks=SMOKE["attacks"] | {"badnet": SMOKE["attacks"]["badnet"] | {"trigger": {"patch_size": 48, "pattern": "fixed", "location": "fixed"}}}),
         training(2, 16, {"poison": 1, "trigger_grid": 1, "cleaning_set": 4})),
    ],
)
def test_changing_one_value_of_a_dimension_reruns_exactly_what_depends_on_it(smoke_run, dimension, config, expected):
    assert planned(smoke_run, config) == expected


@pytest.mark.parametrize(
    "change, stage",
    [
        (changed(detection=SMOKE["detection"] | {"options": {"dao": {"k": 12}}}), "detect_training"),  # an option
        (changed(study={"detectors": [*SMOKE["study"]["detectors"], "k_distance"]}), "detect_training"),  # one more
        # a setting of the test-time level only: the training-set detectors keep their scores
        (changed(detection=SMOKE["detection"] | {"triggered_share": 0.4}), "detect_test"),
    ],
)
def test_a_detector_change_rescores_every_pretrained_model_with_that_detector_only(smoke_run, change, stage):
    assert planned(smoke_run, change) == {stage: 4, "detection_summary": 1, "overview": 1, "all": 1}


def test_the_detection_table_gives_each_detector_per_attack_and_objective_and_the_control_its_fpr(smoke_run):
    table = pd.read_csv(smoke_run / f"{STUDY_DIR}/tables/detection.csv")
    assert len(table) == DETECTORS * 2 * 2  # attacks x pretraining objectives
    assert sorted(table.level.unique()) == ["test", "training"]
    training = table[table.level == "training"]
    control, poisoned = training[training.attack == "control"], training[training.attack == "badnet"]
    assert control.auroc.isna().all() and control.fpr.between(0, 1).all()  # a clean model: no poison to find
    assert (poisoned.n_poisons == SMOKE["attacks"]["badnet"]["n_poisons"]).all()
    assert ((poisoned.auroc_low <= poisoned.auroc) & (poisoned.auroc <= poisoned.auroc_high)).all()
    scores = pq.read_table(next((smoke_run / "results/runs").rglob("detector=dao/*/scores.parquet"))).to_pandas()
    assert len(scores) == SMOKE["dataset"]["corpus"]["n_train"] and scores.reference.sum() == SMOKE["detection"]["reference_pairs"]
    test_time = table[table.level == "test"]  # the images not held out, half of those not of the target triggered
    assert (test_time.n_scored == SMOKE["dataset"]["corpus"]["n_eval"] - SMOKE["detection"]["reference_images"]).all()
    assert (test_time.n_poisons > 0).all() and test_time.auroc.between(0, 1).all()
    assert (smoke_run / f"{STUDY_DIR}/figures/roc.png").stat().st_size > 10_000


def test_a_model_level_detector_scores_the_cleaned_models_too_each_in_its_cleaning_run(smoke_run):
    config = changed(study={"detectors": [*SMOKE["study"]["detectors"], "decree"]})
    assert planned(smoke_run, config) == {
        "detect_model": 4, "detect_cleaned_model": 24, "detection_summary": 1, "overview": 1, "all": 1}
    run = next((smoke_run / "results/runs").rglob(f"attack=badnet/**/clean_method=cleanclip/**/epoch_{EPOCHS:03d}.pt")).parent
    digest = study.detection_digest(validate_config(copy.deepcopy(config)), "decree")
    target = run / f"detection/detector=decree/detection_settings={digest}/scores.parquet"
    result = run_snakemake(smoke_run, config, str(target.relative_to(smoke_run)), *ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    assert jobs_run(result.stderr) == {"detect_cleaned_model": 1, "total": 1}
    row = pq.read_table(target).to_pylist()[0]
    lr = float(re.search(r"/lr=([^/]+)/", str(run)).group(1))
    assert (row["clean_method"], row["lr"], row["detector"], row["is_backdoored"]) == ("cleanclip", lr, "decree", True)
    assert -1 <= row["score"] < 0  # -PL1: a mask's share of the image


def test_a_pretrained_start_is_an_input_and_a_dimension(smoke_run):
    weights = next((smoke_run / "results/runs").rglob("pretrain_objective=mmcl/pretrain_seed=0/*/model.pt"))
    shutil.copy(weights, smoke_run / "my_clip.pt")
    config = changed(study={"start": "my_clip.pt"})
    assert planned(smoke_run, config) == training(4, 24)
    result = run_snakemake(smoke_run, config, "--dry-run")
    assert re.search(r"start=my_clip-[0-9a-f]{8}/pretrain_objective=mmcl/", result.stdout)


def test_two_start_files_of_one_name_are_two_starts(tmp_path):
    first, second = tmp_path / "a/start.pt", tmp_path / "b/start.pt"
    for path, content in ((first, b"one"), (second, b"two")):
        path.parent.mkdir()
        path.write_bytes(content)
    assert study.start_label(str(first)) != study.start_label(str(second))
    assert study.start_label(str(first)).startswith("start-")


def test_a_second_study_in_the_same_folder_reuses_the_pretrained_models_and_keeps_its_own_figures(smoke_run):
    figures = smoke_run / f"{STUDY_DIR}/figures/fig2/badnet_poisons0.pdf"
    config = changed(study={"name": "smoke_high_lr", "clean_methods": ["cleanclip"], "cleaning_poisons": [0]},
                     clean={"lrs": [0.01]})
    result = run_snakemake(smoke_run, config, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = training(0, 8) | {"detection_summary": 1}  # its own detection table, from the same scores
    assert job_counts(result.stdout) == expected | {"total": sum(expected.values())}
    assert "results/studies/smoke_high_lr/figures/fig2/badnet_poisons0.pdf" in result.stdout
    assert str(figures.relative_to(smoke_run)) not in result.stdout


def run_target(config, **point) -> str:
    """The last epoch's metrics of the cleaning run of `config` at `point` (some of its dimensions)."""
    runs = study.cleaning_runs(validate_config(copy.deepcopy(config)))
    run = runs[(runs[list(point)] == pd.Series(point)).all(axis=1)].iloc[0]
    return f"results/runs/{run_id(run.to_dict())}/epoch_{EPOCHS:03d}/metrics.parquet"


def test_a_new_learning_rate_runs_only_its_cleaning_and_evaluation(smoke_run):
    """For real, on one run of the plan above (the dry runs cover the whole plan)."""
    pretrained = sorted((smoke_run / "results/runs").rglob("model.pt"))
    kept_mtimes = [path.stat().st_mtime_ns for path in pretrained]
    config = changed(clean={"per_method": {"cleanclip": {"lrs": [0.002]}, "mmcl_only": {"batch_size": 20}}})
    target = run_target(config, attack="badnet", pretrain_objective="mmcl", clean_method="cleanclip", cleaning_poisons=2)
    result = run_snakemake(smoke_run, config, target)
    assert result.returncode == 0, result.stderr[-3000:]
    assert jobs_run(result.stderr) == {"clean": 1, "evaluate_cleaned": 1, "total": 2}
    assert [path.stat().st_mtime_ns for path in pretrained] == kept_mtimes
    assert set(pq.read_table(smoke_run / target).column("lr").to_pylist()) == {0.002}


BADNET_RUN = {"attack": "badnet", "pretrain_objective": "mmcl", "clean_method": "cleanclip", "cleaning_poisons": 2}


def test_a_replicate_seed_cleans_anew_in_a_folder_of_its_own(smoke_run):
    assert planned(smoke_run, changed(study={"seeds": [0, 1, 2]})) == training(0, 12, {"cleaning_set": 3})
    first, second = (run_target(SMOKE, **BADNET_RUN, clean_seed=seed) for seed in (0, 1))
    assert [set(pq.read_table(smoke_run / target).column("clean_seed").to_pylist()) for target in (first, second)] == [{0}, {1}]
    weights = [(smoke_run / target).parent.parent / f"epoch_{EPOCHS:03d}.pt" for target in (first, second)]
    assert weights[0].read_bytes() != weights[1].read_bytes()
    cleaning_sets = sorted((smoke_run / attack_folder(SMOKE, "badnet") / "cleaning_sets").glob("poisons_2_seed_*.parquet"))
    assert len(cleaning_sets) == 2 and not pq.read_table(cleaning_sets[0]).equals(pq.read_table(cleaning_sets[1]))


def test_a_study_differing_in_a_setting_that_is_no_dimension_leaves_the_first_intact(smoke_run):
    assert planned(smoke_run, changed(clean={"epochs": EPOCHS + 1})) == training(0, 24)
    n_clean = changed(clean={"n_clean": 30})
    assert planned(smoke_run, n_clean) == training(0, 24, {"cleaning_set": 6})
    target = run_target(n_clean, **BADNET_RUN)
    assert target != run_target(SMOKE, **BADNET_RUN)
    result = run_snakemake(smoke_run, n_clean, target)
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned(smoke_run, SMOKE) == {}


def test_the_clean_control_is_the_unpoisoned_model_evaluated_like_the_attacks(smoke_run):
    manifest = pq.read_table(smoke_run / attack_folder(SMOKE, "control") / "poisoned_manifest.parquet")
    assert manifest.num_rows == 60 and not any(manifest["is_poison"].to_pylist())
    summary = query(smoke_run / f"{STUDY_DIR}/results.duckdb", "SELECT * FROM study_summary WHERE attack = 'control'").to_pandas()
    assert len(summary) == 8 and set(summary.cleaning_poisons) == {0}  # 2 objectives x 2 methods x 2 seeds
    assert summary[["start_top1", "start_asr_top1", "lowest_asr_top1"]].notna().all().all()


def test_a_cleaning_run_made_again_on_this_machine_is_the_same_bytes(smoke_run):
    """Weights, metrics and ranks: the same config on the same machine, the same bytes; the step
    log too but for its timings."""
    target = run_target(SMOKE, **BADNET_RUN)
    folder = (smoke_run / target).parent.parent
    first = {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}
    assert {path.suffix for path in first} == {".pt", ".parquet"} and len(first) >= 2 * EPOCHS + 2
    shutil.rmtree(folder)
    result = run_snakemake(smoke_run, SMOKE, target, *ONE_THREAD)  # --set-threads takes every word after it
    assert result.returncode == 0, result.stderr[-3000:]
    assert jobs_run(result.stderr) == {"clean": 1, "evaluate_cleaned": 1, "total": 2}
    again = {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}
    assert again.keys() == first.keys()
    assert [name for name in first if again[name] != first[name]] == [Path("train_log.parquet")]
    # the step log differs in its timings alone
    logs = [pq.read_table(pa.BufferReader(log)).drop_columns("samples_per_s") for log in (first[Path("train_log.parquet")], again[Path("train_log.parquet")])]
    assert logs[0].equals(logs[1])


@pytest.mark.parametrize("threshold", [{"success_asr": 0.1}, {"attack_floor": 0.3}])
def test_changing_a_threshold_redoes_the_database_and_figures_only(smoke_run, threshold):
    assert planned(smoke_run, SMOKE | {"evaluation": threshold}) == LIGHT


def test_a_damaged_checkpoint_is_set_aside_by_the_stage_that_reads_it_and_made_anew_by_the_next_run(smoke_run):
    target = run_target(SMOKE, attack="control", pretrain_objective="mmcl", clean_method="cleanclip", clean_seed=1)
    folder = (smoke_run / target).parent.parent
    weights = folder / f"epoch_{EPOCHS:03d}.pt"
    weights.write_bytes(weights.read_bytes()[:4000])  # a disk that filled while it was written
    for metrics in folder.glob("epoch_*/metrics.parquet"):
        metrics.unlink()
    failed = run_snakemake(smoke_run, SMOKE, target, *ONE_THREAD)
    assert failed.returncode != 0
    assert f"{weights.name} is not a torch checkpoint" in failed.stderr
    assert f"(set aside as {weights.name}.damaged: run again to make it anew)" in failed.stderr
    repaired = run_snakemake(smoke_run, SMOKE, target, *ONE_THREAD)
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    assert jobs_run(repaired.stderr) == {"clean": 1, "evaluate_cleaned": 1, "total": 2}
    assert weights.stat().st_size > 4000 and (weights.parent / f"{weights.name}.damaged").is_file()


def python_snippets() -> list[tuple[str, str]]:
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [(document.name, block) for document in documents
            for block in re.findall(r"```python\n(.*?)```", document.read_text(), re.S)]


def test_every_python_snippet_of_the_readme_and_the_docs_runs_on_a_study(smoke_run, monkeypatch):
    """In the smoke study's folder, named as the snippets name the default's."""
    for link, target in (("results/studies/default", "smoke"), ("configs", ROOT / "configs")):
        if not (smoke_run / link).exists():
            (smoke_run / link).symlink_to(target)
    monkeypatch.chdir(smoke_run)
    snippets = python_snippets()
    assert len(snippets) >= 5
    for name, snippet in snippets:
        exec(compile(snippet, name, "exec"), {})


def test_the_claims_table_reads_the_studys_summary_and_detection_tables(smoke_run):
    """Each claim that the smoke study's grid measures gets its rows from the real files; the
    others say so (its numbers mean nothing: it checks that the tables connect)."""
    findings = {claim.statement: claim.measure(smoke_run / STUDY_DIR) for claim in fidelity.CLAIMS}
    planted = findings["The attack plants a backdoor (the precondition of every claim below)"]
    assert [finding.of for finding in planted] == ["mmcl, badnet", "safeclip, badnet"]  # the control left out
    cleaning = findings["CleanCLIP cleans an MMCL-pretrained model at small cost"]
    assert [finding.of for finding in cleaning] == ["mmcl, badnet"]
    assert all(finding.note.endswith(f"({len(SMOKE['study']['seeds'])} in all) cleaned to ASR@1 <= 5%") for finding in cleaning)
    [dao] = findings["DAO and SLOF find the poisoned pairs at low poisoning rates"]
    assert dao.of == "dao, badnet" and dao.note.startswith("AUROC ")
    assert findings["PAR removes more of the backdoor than CleanCLIP"] == []

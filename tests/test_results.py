"""The metrics rows and the results database's views, on results written by hand."""

import logging
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleanclip_core.plots.cleaning import (
    plot_pretraining_curve, plot_stopping_rules, save_figure, write_pretraining_curve, write_study_figures,
)
from cleanclip_core.results import (
    IDENTITY_SCHEMA, Criteria, build_results_database, config_hash, metrics_table, query, run_id,
)
from cleanclip_core.stopping import STOPPING_RULES
from cleanclip_core.tables import write_table


def pretrained(objective: str = "mmcl") -> dict:
    return {"dataset": "shapes", "attack": "badnet", "model": "tiny-rn", "start": "scratch",
            "pretrain_objective": objective, "pretrain_seed": 0, "pretrain_settings": "p", "epoch": 0}


START = pretrained()


def evaluated(top1: float, asr_top1: float) -> dict[str, float]:
    """Metrics as evaluate_zero_shot returns them, over 100 clean and 90 triggered images of 10
    classes."""
    return {
        "top1": top1, "top5": min(1.0, top1 + 0.2), "n_images": 100, "n_classes": 10,
        "asr_top1": asr_top1, "asr_top5": min(1.0, asr_top1 + 0.1), "asr_top10": 1.0, "n_triggered": 90,
    }


def cleaned(lr: float, epoch: int, objective: str = "mmcl", poisons: int = 0) -> dict:
    return pretrained(objective) | {
        "clean_method": "cleanclip", "cleaning_poisons": poisons, "lr": lr, "clean_seed": 0, "clean_settings": "c",
        "epoch": epoch,
    }


MMCL_RUN = "dataset=shapes/attack=badnet/model=tiny-rn/start=scratch/pretrain_objective=mmcl/pretrain_seed=0/pretrain_settings=p"
CLEAN_REPLICATE = "clean_seed=0/clean_settings=c"


def test_a_checkpoint_gives_one_row_per_metric_with_its_image_count():
    table = metrics_table(evaluated(0.5, 0.9), cleaned(0.001, 3), "abc", "0.1.0").to_pandas()
    assert list(table.metric) == ["top1", "top5", "asr_top1", "asr_top5", "asr_top10"]
    assert list(table.n_images) == [100, 100, 90, 90, 90]
    assert set(table.n_classes) == {10}
    assert set(table.run_id) == {f"{MMCL_RUN}/clean_method=cleanclip/cleaning_poisons=0/lr=0.001/{CLEAN_REPLICATE}"}
    assert table.columns.tolist()[1:len(IDENTITY_SCHEMA) + 1] == IDENTITY_SCHEMA.names
    assert set(table.epoch) == {3} and set(table.cleaning_poisons) == {0}
    start = metrics_table(evaluated(0.5, 0.9), START, "abc", "0.1.0").to_pandas()
    assert set(start.run_id) == {MMCL_RUN}
    assert start[["clean_method", "cleaning_poisons", "lr"]].isna().all().all() and set(start.epoch) == {0}


def test_config_hash_depends_on_the_settings_not_on_key_order():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def write_train_logs(folder, checkpoints, losses) -> list:
    """A step log per cleaning run of the checkpoints, in its run folder under folder/results/runs,
    with two steps per epoch whose mean loss is losses[run_id][epoch - 1], else 1 / epoch."""
    epochs: dict[str, list[int]] = {}
    for checkpoint in checkpoints:
        if checkpoint["epoch"]:
            epochs.setdefault(run_id(checkpoint), []).append(checkpoint["epoch"])
    paths = []
    for run, run_epochs in epochs.items():
        means = losses.get(run, [1 / epoch for epoch in range(1, max(run_epochs) + 1)])
        steps = [(epoch, means[epoch - 1] + offset) for epoch in sorted(run_epochs) for offset in (-0.01, 0.01)]
        paths.append(folder / "results" / "runs" / run / "train_log.parquet")
        paths[-1].parent.mkdir(parents=True)
        pq.write_table(pa.table({"epoch": [e for e, _ in steps], "loss": [loss for _, loss in steps]}), paths[-1])
    return paths


def write_metrics(folder, results) -> list:
    """A metrics file per (checkpoint, top1, asr_top1) row, in folder/N/."""
    paths = []
    for i, (checkpoint, top1, asr) in enumerate(results):
        paths.append(folder / f"{i}" / "metrics.parquet")
        write_table(metrics_table(evaluated(top1, asr), checkpoint, "h", "v"), paths[-1], config={}, inputs_sha256="")
    return paths


def write_database(folder, results, losses=None, curve=(), poisons=None):
    """The results database of (checkpoint, top1, asr_top1) rows, each in its metrics file, of
    the cleaning runs' step logs (`losses` as write_train_logs takes them), of the pretraining
    epochs in `curve` (rows likewise) and of the attacks' `poisons` ({attack: number})."""
    paths = write_metrics(folder, results)
    train_logs = write_train_logs(folder, [checkpoint for checkpoint, _, _ in results], losses or {})
    curve_files = write_metrics(folder / "curve", curve)
    build_results_database(paths, train_logs, folder / "results.duckdb", curve_files, poisons=poisons or {})
    return folder / "results.duckdb"


@pytest.fixture()
def database(tmp_path):
    """Two pretrained models; MMCL cleaned at two learning rates for two epochs, and with 5
    poisons in the cleaning set at one; MMCL+SSL at one, where no epoch gets the ASR to 5%."""
    return write_database(tmp_path, [
        (START, 0.50, 0.95),
        (cleaned(0.001, 1), 0.55, 0.20), (cleaned(0.001, 2), 0.60, 0.05),
        (cleaned(0.003, 1), 0.70, 0.04), (cleaned(0.003, 2), 0.65, 0.01),
        (cleaned(0.003, 1, poisons=5), 0.66, 0.50), (cleaned(0.003, 2, poisons=5), 0.64, 0.45),
        (pretrained("mmcl_ssl"), 0.60, 0.97),
        (cleaned(0.003, 1, "mmcl_ssl"), 0.62, 0.40), (cleaned(0.003, 2, "mmcl_ssl"), 0.61, 0.30),
    ])


def test_wide_view_has_one_row_per_checkpoint(database):
    wide = query(database, "SELECT * FROM metrics_wide ORDER BY run_id, epoch").to_pandas()
    assert len(wide) == 10
    row = wide[(wide.run_id == f"{MMCL_RUN}/clean_method=cleanclip/cleaning_poisons=0/lr=0.003/{CLEAN_REPLICATE}") & (wide.epoch == 1)].iloc[0]
    assert (row.top1, row.asr_top1, row.n_images, row.n_triggered) == (0.70, 0.04, 100, 90)


def test_trajectories_start_every_cleaning_run_at_its_pretrained_model(database):
    runs = query(database, "SELECT * FROM cleaning_trajectories").to_pandas()
    assert len(runs) == 4 * 3  # four runs, epochs 0, 1, 2
    starts = runs[runs.epoch == 0].set_index("run_id")
    assert starts.loc[f"{MMCL_RUN}/clean_method=cleanclip/cleaning_poisons=5/lr=0.003/{CLEAN_REPLICATE}"].top1 == 0.50
    assert starts.loc[MMCL_RUN.replace("=mmcl", "=mmcl_ssl") + f"/clean_method=cleanclip/cleaning_poisons=0/lr=0.003/{CLEAN_REPLICATE}"].asr_top1 == 0.97


def test_study_summary_gives_start_oracle_lowest_and_last_per_method_and_cleaning_poisons(database):
    summary = query(database, "SELECT * FROM study_summary").to_pandas()
    assert len(summary) == 3
    row = summary.set_index(["pretrain_objective", "cleaning_poisons"]).loc
    mmcl = row["mmcl", 0]
    # candidates with ASR@1 <= 5%: (0.60, lr 1e-3, epoch 2), (0.70, 3e-3, 1), (0.65, 3e-3, 2)
    assert (mmcl.best_top1, mmcl.best_lr, mmcl.best_epoch) == (0.70, 0.003, 1)
    assert (mmcl.start_top1, mmcl.start_asr_top1, mmcl.start_asr_top10, mmcl.lowest_asr_top1) == (0.50, 0.95, 1.0, 0.01)
    # last epochs: lr 1e-3 (0.60, 0.05) and lr 3e-3 (0.65, 0.01): the lower ASR@1 is reported
    assert (mmcl.last_lr, mmcl.last_epoch, mmcl.last_top1, mmcl.last_asr_top1) == (0.003, 2, 0.65, 0.01)
    contaminated = row["mmcl", 5]
    assert math.isnan(contaminated.best_top1) and contaminated.lowest_asr_top1 == 0.45
    assert contaminated.start_top1 == 0.50
    ssl = row["mmcl_ssl", 0]
    assert math.isnan(ssl.best_top1) and (ssl.start_asr_top1, ssl.lowest_asr_top1, ssl.last_top1) == (0.97, 0.30, 0.61)
    assert set(summary.chance_top1) == {0.1} and not summary.near_chance.any()


NEAR_CHANCE = [
    (START, 0.12, 0.95), (cleaned(0.003, 1), 0.11, 0.01),
    (pretrained("mmcl_ssl"), 0.60, 0.97), (cleaned(0.003, 1, "mmcl_ssl"), 0.15, 0.02),
    (cleaned(0.003, 2, "mmcl_ssl"), 0.55, 0.30),
    (cleaned(0.003, 1, "mmcl_ssl", poisons=5), 0.50, 0.01),
]


def test_a_near_chance_model_is_flagged_in_the_summary_and_warned_about_per_row(tmp_path, caplog):
    """With 10 classes chance is 10%: a start at 12% top-1 whose ASR@1 falls to 1% is no
    cleaning success, nor is an MMCL+SSL run whose best epoch at ASR@1 <= 5% has 15% top-1."""
    with caplog.at_level(logging.WARNING, logger="cleanclip_core.results"):
        database = write_database(tmp_path, NEAR_CHANCE)
    summary = query(database, "SELECT * FROM study_summary").to_pandas()
    flagged = summary.set_index(["pretrain_objective", "cleaning_poisons"]).near_chance.to_dict()
    assert flagged == {("mmcl", 0): True, ("mmcl_ssl", 0): True, ("mmcl_ssl", 5): False}
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        f"warning: near chance: {MMCL_RUN}/clean_method=cleanclip/cleaning_poisons=0/{CLEAN_REPLICATE}: start top-1 12.0%, "
        "best top-1 at ASR@1 <= 5% 11.0%, chance 10.0% (10 classes); a low ASR@1 there does not show a removed backdoor",
        f"warning: near chance: {MMCL_RUN.replace('=mmcl', '=mmcl_ssl')}/clean_method=cleanclip/cleaning_poisons=0/"
        f"{CLEAN_REPLICATE}: "
        "start top-1 60.0%, best top-1 at ASR@1 <= 5% 15.0%, chance 10.0% (10 classes); a low ASR@1 there does "
        "not show a removed backdoor",
    ]


def test_the_summary_table_carries_the_chance_level_and_the_near_chance_flag(tmp_path):
    database = write_database(tmp_path, NEAR_CHANCE)
    write_study_figures(
        database, ["mmcl", "mmcl_ssl"], [{"attack": "badnet", "cleaning_poisons": 0}],
        fig2=[[tmp_path / "fig2.png"]], fig2_data=tmp_path / "fig2.parquet", trajectories=[[]],
        contamination=[], summary=tmp_path / "summary.csv",
    )
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary.near_chance) == [True, True, False] and set(summary.chance_top1) == {0.1}


def test_metrics_written_before_the_class_count_was_recorded_leave_near_chance_unknown(tmp_path, caplog):
    database = write_database(tmp_path / "new", [(START, 0.5, 0.9), (cleaned(0.003, 1), 0.5, 0.01)])
    old = tmp_path / "old.parquet"
    pq.write_table(query(database, "SELECT * EXCLUDE (n_classes) FROM metrics WHERE epoch = 0"), old)
    with caplog.at_level(logging.WARNING, logger="cleanclip_core.results"):
        build_results_database([old, tmp_path / "new" / "1" / "metrics.parquet"],
                               list((tmp_path / "new").rglob("train_log.parquet")), tmp_path / "mixed.duckdb")
    summary = query(tmp_path / "mixed.duckdb", "SELECT chance_top1, near_chance FROM study_summary").to_pylist()
    assert summary == [{"chance_top1": None, "near_chance": None}]
    assert [record.getMessage() for record in caplog.records] == [
        f"warning: 1 of 2 metrics files lack n_classes (evaluated before it was recorded), e.g. {old}: the chance "
        "level of their checkpoints is unknown, so near_chance is empty; evaluate them again"
    ]


def test_the_database_holds_its_rows_itself(database, tmp_path):
    for path in tmp_path.glob("*/metrics.parquet"):
        path.unlink()
    assert query(database, "SELECT count(*) AS n FROM metrics")["n"].to_pylist() == [10 * 5]
    assert isinstance(query(database, "SELECT * FROM metrics"), pa.Table)


def test_the_stopping_rules_view_gives_each_rules_choice_its_metrics_and_its_regret(database):
    rules = query(database, "SELECT * FROM stopping_rules").to_pandas()
    assert len(rules) == 4 * 4  # four runs, four rules
    run = rules[rules.run_id == f"{MMCL_RUN}/clean_method=cleanclip/cleaning_poisons=0/lr=0.003/{CLEAN_REPLICATE}"].set_index("rule")
    # epochs (top-1, ASR@1): 1 (0.70, 0.04), 2 (0.65, 0.01); mean losses 1, 1/2 never settle
    assert run.epoch.to_dict() == {"best_clean_accuracy": 1, "last_epoch": 2, "loss_plateau": 2, "oracle": 1}
    assert run.loc["last_epoch", ["top1", "asr_top1", "oracle_top1"]].tolist() == [0.65, 0.01, 0.70]
    assert run.loc["last_epoch", "top1_regret"] == pytest.approx(0.05) and run.loc["oracle", "top1_regret"] == 0
    ssl = rules[rules.pretrain_objective == "mmcl_ssl"].set_index("rule")
    assert ssl.backdoor_kept.all() and ssl.loc["oracle", "epoch"] == 2  # no epoch at 5%: the lowest ASR@1


def test_a_loss_that_settles_stops_the_plateau_rule_there(tmp_path):
    run = f"{MMCL_RUN}/clean_method=cleanclip/cleaning_poisons=0/lr=0.003/{CLEAN_REPLICATE}"
    checkpoints = [(START, 0.5, 0.9)] + [(cleaned(0.003, epoch), 0.5 + 0.01 * epoch, 0.5) for epoch in (1, 2, 3)]
    database = write_database(tmp_path, checkpoints, losses={run: [2.0, 1.99, 1.0]})
    chosen = query(database, "SELECT epoch FROM stopping_rules WHERE rule = 'loss_plateau'")["epoch"].to_pylist()
    assert chosen == [2]


def test_the_stopping_rules_figure_has_a_column_per_objective_and_the_same_bytes_each_time(database, tmp_path):
    rules = query(database, "SELECT * FROM stopping_rule_intervals").to_pandas()
    figure = plot_stopping_rules(rules, ["mmcl", "mmcl_ssl"])
    assert [ax.get_title() for ax in figure.axes[:2]] == ["MMCL-pretrained", "MMCL+SSL-pretrained"]
    assert [label.get_text() for label in figure.axes[-1].get_xticklabels()] == list(STOPPING_RULES)
    for name in ("a.png", "b.png"):
        save_figure(plot_stopping_rules(rules, ["mmcl", "mmcl_ssl"]), tmp_path / name)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


@pytest.fixture()
def curve_database(tmp_path):
    """The MMCL model's pretraining over 4 epochs: top-1 30%, 60%, 70%, 71%, ASR@1 90%."""
    curve = [(pretrained() | {"epoch": epoch}, top1, 0.9) for epoch, top1 in enumerate([0.3, 0.6, 0.7, 0.71], 1)]
    return write_database(tmp_path, [(START, 0.71, 0.9), (cleaned(0.001, 1), 0.7, 0.5)], curve=curve)


def test_the_pretraining_curve_gives_each_epoch_and_the_range_of_top1_over_the_last_three(curve_database):
    rows = query(curve_database, "SELECT run_id, epoch, top1, asr_top1, top1_range_last_three FROM pretraining_curve").to_pylist()
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4] and {row["run_id"] for row in rows} == {MMCL_RUN}
    assert [row["top1"] for row in rows] == [0.3, 0.6, 0.7, 0.71]
    ranges = [row["top1_range_last_three"] for row in rows]
    assert ranges[:2] == [None, None] and ranges[2:] == pytest.approx([0.4, 0.11])


def test_a_study_without_the_curve_has_an_empty_one(database):
    assert query(database, "SELECT count(*) AS n FROM pretraining_curve")["n"].to_pylist() == [0]


def test_the_pretraining_curve_figure_labels_the_plateau_test_and_its_table_is_the_view(curve_database, tmp_path):
    figures = [tmp_path / "curve.png", tmp_path / "again.png"]
    write_pretraining_curve(curve_database, ["mmcl"], figures, tmp_path / "curve.csv")
    assert figures[0].read_bytes() == figures[1].read_bytes()
    figure = plot_pretraining_curve(query(curve_database, "SELECT * FROM pretraining_curve").to_pandas(), ["mmcl"])
    assert [text.get_text() for text in figure.axes[0].get_legend().get_texts()] == ["badnet (last 3: 11.0 pts)"]
    assert pd.read_csv(tmp_path / "curve.csv").epoch.tolist() == [1, 2, 3, 4]


def test_a_start_whose_backdoor_never_took_is_flagged_and_warned_about_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="cleanclip_core.results"):
        database = write_database(tmp_path, [
            (START, 0.50, 0.008), (cleaned(0.001, 1), 0.55, 0.0), (cleaned(0.003, 1), 0.5, 0.0),
            (pretrained("mmcl_ssl"), 0.60, 0.97), (cleaned(0.003, 1, "mmcl_ssl"), 0.62, 0.40),
        ])
    summary = query(database, "SELECT pretrain_objective, attack_failed FROM study_summary").to_pandas()
    assert summary.set_index("pretrain_objective").attack_failed.to_dict() == {"mmcl": True, "mmcl_ssl": False}
    warnings = [record.getMessage() for record in caplog.records if "attack failed" in record.getMessage()]
    assert len(warnings) == 1 and f"{MMCL_RUN} (0.8%)" in warnings[0]


def replicate(checkpoint: dict, seed: int, method: str = "cleanclip") -> dict:
    return checkpoint | {"clean_seed": seed, "clean_method": method}


@pytest.fixture()
def replicates_database(tmp_path):
    """The MMCL model cleaned by two methods with two seeds each, for one epoch at one lr:
    cleanclip's oracle top-1 0.70 and 0.80, mmcl_only's 0.60 and 0.62 (all at ASR@1 <= 5%)."""
    results = [(START, 0.50, 0.95)] + [
        (replicate(cleaned(0.003, 1), seed, method), top1, asr)
        for method, seed, top1, asr in [
            ("cleanclip", 0, 0.70, 0.02), ("cleanclip", 1, 0.80, 0.04),
            ("mmcl_only", 0, 0.60, 0.01), ("mmcl_only", 1, 0.62, 0.03),
        ]
    ]
    return write_database(tmp_path, results)


def test_the_summary_intervals_give_each_cell_its_mean_over_the_seeds_with_a_t_interval(replicates_database):
    cells = query(replicates_database, "SELECT * FROM summary_intervals").to_pandas().set_index("clean_method")
    assert cells.n_replicates.to_dict() == {"cleanclip": 2, "mmcl_only": 2} and set(cells.n_removed) == {2}
    # 0.70 and 0.80: mean 0.75, sd 0.0707107, t(0.975, 1) = 12.706205, half-width 0.635310 (clipped to 1)
    assert cells.loc["cleanclip", ["best_top1", "best_top1_low", "best_top1_high"]].tolist() == pytest.approx(
        [0.75, 0.114690, 1.0], abs=1e-6
    )
    # one start, the same in every replicate: Wilson over its 100 images
    assert cells.loc["cleanclip", "start_top1_low"] == pytest.approx(0.403832, abs=1e-6)
    assert "clean_seed" not in cells.columns


def test_comparisons_pair_two_methods_on_the_same_seeds(replicates_database):
    compared = query(replicates_database, "SELECT * FROM comparisons").to_pandas()
    row = compared[compared.dimension == "clean_method"].iloc[0]
    assert (row.a, row.b, row.best_top1_pairs) == ("cleanclip", "mmcl_only", 2)
    # paired differences 0.10 and 0.18: mean 0.14, sd 0.0565685, half-width 12.706205 * 0.04 = 0.508248
    assert [row.best_top1_difference, row.best_top1_difference_low, row.best_top1_difference_high] == pytest.approx(
        [0.14, -0.368248, 0.648248], abs=1e-6
    )
    assert not row.best_top1_excludes_zero
    assert row.lowest_asr_top1_difference == pytest.approx(0.01)


def test_the_stopping_rule_intervals_pair_the_regret_replicate_by_replicate(replicates_database):
    rules = query(replicates_database, "SELECT * FROM stopping_rule_intervals WHERE rule = 'last_epoch'").to_pandas()
    assert len(rules) == 2 and set(rules.n_replicates) == {2}
    assert rules.top1_regret.tolist() == [0, 0] and rules.backdoor_kept.tolist() == [0, 0]


def test_the_success_threshold_and_the_attack_floor_are_the_criteria_given(tmp_path):
    results = [(START, 0.50, 0.40), (cleaned(0.003, 1), 0.70, 0.08), (cleaned(0.003, 2), 0.60, 0.12)]
    paths = write_metrics(tmp_path, results)
    logs = write_train_logs(tmp_path, [checkpoint for checkpoint, _, _ in results], {})
    build_results_database(paths, logs, tmp_path / "strict.duckdb")
    build_results_database(paths, logs, tmp_path / "lenient.duckdb", criteria=Criteria(success_asr=0.10, attack_floor=0.3))
    strict, lenient = (query(tmp_path / f"{name}.duckdb", "SELECT * FROM study_summary").to_pylist()[0]
                       for name in ("strict", "lenient"))
    assert (strict["best_top1"], strict["attack_failed"]) == (None, True)
    assert (lenient["best_top1"], lenient["best_epoch"], lenient["attack_failed"]) == (0.70, 1, False)
    assert query(tmp_path / "lenient.duckdb", "SELECT epoch FROM stopping_rules WHERE rule = 'oracle'")["epoch"].to_pylist() == [1]

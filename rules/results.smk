# Results: zero-shot evaluation of every checkpoint, the study's database, tables and figures.


rule evaluate_pretrained:
    input:
        unpack(attack_preparation),
        weights=[f"{PRETRAIN_RUN}/model.pt"],
        images=evaluation_images,
    output:
        metrics=[f"{PRETRAIN_RUN}/metrics.parquet"],
        ranks=f"{PRETRAIN_RUN}/image_ranks.parquet",
    params:
        model=STUDY["model"],
        attack=attack_config,
        classnames=config["evaluation"]["classnames"],
        checkpoints=pretrained_checkpoints,
        provenance=pretrained_provenance,
    resources:
        gpu=1,
        num_workers=config["execution"]["num_workers"],
        evaluation_batch_size=config["execution"]["evaluation_batch_size"],
    log:
        f"results/logs/evaluate/{PRETRAINED.wildcard_pattern}.log",
    benchmark:
        f"results/benchmarks/evaluate/{PRETRAINED.wildcard_pattern}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/evaluate.py"


# Every epoch of a cleaning run, in one job and one pass over the images: each is decoded and
# triggered once, and every epoch's model scores it.
use rule evaluate_pretrained as evaluate_cleaned with:
    input:
        unpack(attack_preparation),
        weights=CLEAN_EPOCH_WEIGHTS,
        images=evaluation_images,
    output:
        metrics=CLEAN_EPOCH_METRICS,
        ranks=f"{CLEAN_RUN}/image_ranks.parquet",
    params:
        model=STUDY["model"],
        attack=attack_config,
        classnames=config["evaluation"]["classnames"],
        checkpoints=cleaned_checkpoints,
        provenance=cleaned_provenance,
    log:
        f"results/logs/evaluate/{CLEANING.wildcard_pattern}.log",
    benchmark:
        f"results/benchmarks/evaluate/{CLEANING.wildcard_pattern}.tsv"


# Every epoch of a pretraining run kept for the curve (pretrain.curve), in one pass likewise,
# and the pretrained model with them (a job less).
if PRETRAIN_CURVE:

    ruleorder: evaluate_pretraining_curve > evaluate_pretrained

    use rule evaluate_pretrained as evaluate_pretraining_curve with:
        input:
            unpack(attack_preparation),
            weights=[*PRETRAIN_EPOCH_WEIGHTS, f"{PRETRAIN_RUN}/model.pt"],
            images=evaluation_images,
        output:
            metrics=[*PRETRAIN_EPOCH_METRICS, f"{PRETRAIN_RUN}/metrics.parquet"],
            ranks=f"{PRETRAIN_RUN}/image_ranks.parquet",
        params:
            model=STUDY["model"],
            attack=attack_config,
            classnames=config["evaluation"]["classnames"],
            checkpoints=pretraining_curve_checkpoints,
            provenance=pretrained_provenance,
        log:
            f"results/logs/evaluate/{PRETRAINED.wildcard_pattern}/curve.log",
        benchmark:
            f"results/benchmarks/evaluate/{PRETRAINED.wildcard_pattern}/curve.tsv"


rule results_database:
    input:
        metrics=study_metrics,
        curves=study_pretraining_curves,
        train_logs=study_train_logs,
    output:
        f"{STUDY_DIR}/results.duckdb",
    params:
        success_asr=config["evaluation"]["success_asr"],
        attack_floor=config["evaluation"]["attack_floor"],
        poisons={name: config["attacks"][name]["n_poisons"] for name in STUDY["attacks"]},
    log:
        f"{STUDY_DIR}/logs/results_database.log",
    benchmark:
        f"{STUDY_DIR}/benchmarks/results_database.tsv"
    conda:
        "../envs/results.yaml"
    script:
        "../workflow_scripts/results_database.py"


rule figures:
    input:
        f"{STUDY_DIR}/results.duckdb",
    output:
        fig2=study_figures("fig2", "pdf"),
        fig2_png=report_figures("fig2", "../report/fig2.rst"),
        fig2_data=f"{STUDY_DIR}/figures/fig2_data.parquet",
        trajectories=study_figures("trajectories", "pdf"),
        trajectories_png=report_figures("trajectories", "../report/trajectories.rst"),
        contamination=f"{STUDY_DIR}/figures/contamination.pdf",
        contamination_png=report(
            f"{STUDY_DIR}/figures/contamination.png", caption="../report/contamination.rst", category="Figures"
        ),
        summary=report(f"{STUDY_DIR}/tables/summary.csv", caption="../report/summary.rst", category="Tables"),
        stopping=f"{STUDY_DIR}/figures/stopping_rules.pdf",
        stopping_png=report(
            f"{STUDY_DIR}/figures/stopping_rules.png", caption="../report/stopping_rules.rst", category="Figures"
        ),
        stopping_table=report(
            f"{STUDY_DIR}/tables/stopping_rules.csv", caption="../report/stopping_rules.rst", category="Tables"
        ),
        summary_intervals=report(
            f"{STUDY_DIR}/tables/summary_intervals.csv", caption="../report/intervals.rst", category="Tables"
        ),
        stopping_rule_intervals=report(
            f"{STUDY_DIR}/tables/stopping_rule_intervals.csv", caption="../report/intervals.rst", category="Tables"
        ),
        comparisons=report(f"{STUDY_DIR}/tables/comparisons.csv", caption="../report/intervals.rst", category="Tables"),
    params:
        facets=FIGURE_FACETS,
        objectives=STUDY["pretrain_objectives"],
    log:
        f"{STUDY_DIR}/logs/figures.log",
    benchmark:
        f"{STUDY_DIR}/benchmarks/figures.tsv"
    conda:
        "../envs/results.yaml"
    script:
        "../workflow_scripts/figures.py"


# The page the report opens with: the study's summary, fig2 and trigger grids, then its tables.
rule overview:
    input:
        summary_intervals=rules.figures.output.summary_intervals,
        comparisons=rules.figures.output.comparisons,
        stopping_rule_intervals=rules.figures.output.stopping_rule_intervals,
        fig2=study_figures("fig2", "png"),
        trigger_grids=attack_folders("trigger_grid.png"),
        detection=[rules.detection_summary.output.table, rules.detection_summary.output.roc_png] if STUDY["detectors"] else [],
    output:
        report(f"{STUDY_DIR}/overview.html", caption="../report/overview.rst", category="Overview"),
    params:
        title=f"Study {study.study_name(config)}: {DATASET}, {STUDY['model']}, start {STUDY['start']}",
        grid={name: STUDY[name] for name in ("attacks", "pretrain_objectives", "clean_methods", "cleaning_poisons", "seeds")},
    log:
        f"{STUDY_DIR}/logs/overview.log",
    benchmark:
        f"{STUDY_DIR}/benchmarks/overview.tsv"
    conda:
        "../envs/results.yaml"
    script:
        "../workflow_scripts/overview.py"


# The pretraining curve of every poisoned model, when the study keeps every pretraining epoch.
if PRETRAIN_CURVE:

    rule pretraining_curve:
        input:
            f"{STUDY_DIR}/results.duckdb",
        output:
            pdf=f"{STUDY_DIR}/figures/pretraining_curve.pdf",
            png=report(
                f"{STUDY_DIR}/figures/pretraining_curve.png", caption="../report/pretraining_curve.rst", category="Figures"
            ),
            table=report(
                f"{STUDY_DIR}/tables/pretraining_curve.csv", caption="../report/pretraining_curve.rst", category="Tables"
            ),
        params:
            objectives=STUDY["pretrain_objectives"],
        log:
            f"{STUDY_DIR}/logs/pretraining_curve.log",
        benchmark:
            f"{STUDY_DIR}/benchmarks/pretraining_curve.tsv"
        conda:
            "../envs/results.yaml"
        script:
            "../workflow_scripts/pretraining_curve.py"


# The card's target: the configured study's headline fig2 (its first attack, its first number of
# poisons in the cleaning set). Rerun when another study is configured.
rule headline_figure:
    input:
        pdf=study_figures("fig2", "pdf")[0],
        png=study_figures("fig2", "png")[0],
    output:
        pdf="results/figures/fig2.pdf",
        png="results/figures/fig2.png",
    params:
        study=study.study_name(config),
    log:
        "results/logs/headline_figure.log",
    benchmark:
        "results/benchmarks/headline_figure.tsv"
    conda:
        "../envs/results.yaml"
    shell:
        "cp {input.pdf} {output.pdf} && cp {input.png} {output.png} 2> {log}"


rule preparation_summary:
    input:
        study_preparations,
    output:
        report(f"{STUDY_DIR}/tables/preparation.csv", caption="../report/preparation.rst", category="Tables"),
    log:
        f"{STUDY_DIR}/logs/preparation_summary.log",
    benchmark:
        f"{STUDY_DIR}/benchmarks/preparation_summary.tsv"
    conda:
        "../envs/results.yaml"
    script:
        "../workflow_scripts/preparation_summary.py"

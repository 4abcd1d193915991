# Results: zero-shot evaluation of every checkpoint, the results database, the figures.


rule evaluate_pretrained:
    input:
        weights=[f"{PRETRAIN_RUN}/model.pt"],
        images=evaluation_images,
    output:
        "results/{dataset}/{attack}/pretrain/{objective}/metrics.parquet",
    params:
        model=config["model"]["name"],
        attack=attack_config,
        evaluation=config["evaluation"],
        checkpoints=pretrained_checkpoints,
        provenance=pretrained_provenance,
    log:
        "results/logs/evaluate/{dataset}/{attack}/{objective}.log",
    benchmark:
        "results/benchmarks/evaluate/{dataset}/{attack}/{objective}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/evaluate.py"


# Every epoch of a cleaning run, in one job (a job array on a cluster).
use rule evaluate_pretrained as evaluate_cleaned with:
    input:
        weights=CLEAN_EPOCH_WEIGHTS,
        images=evaluation_images,
    output:
        CLEAN_EPOCH_METRICS,
    params:
        checkpoints=cleaned_checkpoints,
        provenance=cleaned_provenance,
    log:
        "results/logs/evaluate/{dataset}/{attack}/{objective}/{method}/lr_{lr}.log",
    benchmark:
        "results/benchmarks/evaluate/{dataset}/{attack}/{objective}/{method}/lr_{lr}.tsv"


rule results_database:
    input:
        study_metrics,
    output:
        "results/results.duckdb",
    log:
        "results/logs/results_database.log",
    benchmark:
        "results/benchmarks/results_database.tsv"
    conda:
        "../envs/results.yaml"
    script:
        "../workflow_scripts/results_database.py"


rule figures:
    input:
        "results/results.duckdb",
    output:
        fig2_pdf="results/figures/fig2.pdf",
        fig2_png=report("results/figures/fig2.png", caption="../report/fig2.rst", category="Figures"),
        fig2_data="results/figures/fig2_data.parquet",
        trajectories_pdf="results/figures/trajectories.pdf",
        trajectories_png=report(
            "results/figures/trajectories.png", caption="../report/trajectories.rst", category="Figures"
        ),
        best_accuracy=report(
            "results/tables/best_accuracy.csv", caption="../report/best_accuracy.rst", category="Tables"
        ),
    params:
        pretrain_objectives=PRETRAIN_OBJECTIVES,
    log:
        "results/logs/figures.log",
    benchmark:
        "results/benchmarks/figures.tsv"
    conda:
        "../envs/results.yaml"
    script:
        "../workflow_scripts/figures.py"

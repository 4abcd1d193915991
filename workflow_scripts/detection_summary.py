import logging

from cleanclip_core.plots.detection import write_detection_study
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    summary = write_detection_study(
        snakemake.input.qualities, snakemake.input.scores, snakemake.params.identities,
        snakemake.params.objectives, snakemake.params.poisoning_attacks,
        table=snakemake.output.table, replicates_table=snakemake.output.replicates,
        figures=[snakemake.output.roc, snakemake.output.roc_png],
        resamples=snakemake.params.resamples, seed=snakemake.params.seed,
    )
    logging.info(f"detection:\n{summary.to_string(index=False)}")

import logging

from cleanclip_core.reporting import reported_step
from cleanclip_core.results import build_results_database

with reported_step(snakemake.log[0]):
    inputs = snakemake.input
    build_results_database(inputs.metrics, inputs.train_logs, snakemake.output[0], inputs.curves)
    logging.info(f"results database {snakemake.output[0]}: {len(snakemake.input.metrics)} metrics files")

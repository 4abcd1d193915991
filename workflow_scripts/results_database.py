import logging

from cleanclip_core.reporting import reported_step
from cleanclip_core.results import build_results_database

with reported_step(snakemake.log[0]):
    build_results_database(snakemake.input.metrics, snakemake.input.train_logs, snakemake.output[0])
    logging.info(f"results database {snakemake.output[0]}: {len(snakemake.input.metrics)} metrics files")

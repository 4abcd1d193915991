import logging

from cleanclip_core.reporting import reported_step
from cleanclip_core.results import Criteria, build_results_database

with reported_step(snakemake.log[0]):
    inputs, params = snakemake.input, snakemake.params
    criteria = Criteria(params.success_asr, params.attack_floor)
    build_results_database(inputs.metrics, inputs.train_logs, snakemake.output[0], inputs.curves, criteria, params.poisons)
    logging.info(f"results database {snakemake.output[0]}: {len(snakemake.input.metrics)} metrics files")

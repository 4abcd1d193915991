import logging

from cleanclip_core.plots.cleaning import write_pretraining_curve
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    output = snakemake.output
    curve = write_pretraining_curve(snakemake.input[0], snakemake.params.objectives, [output.pdf, output.png], output.table)
    last = curve.groupby("run_id").tail(1)[["run_id", "epoch", "top1", "asr_top1", "top1_range_last_three"]]
    logging.info(f"pretraining curve, last epochs:\n{last.to_string(index=False)}")

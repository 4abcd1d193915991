from cleanclip_core.defenses.summary import write_preparation_summary
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    write_preparation_summary(snakemake.input, snakemake.output[0])

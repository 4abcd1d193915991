from cleanclip_core.defenses.filtering import filter_pairs
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    filter_pairs(snakemake.input.scores, snakemake.input.manifest, float(snakemake.wildcards.fraction), snakemake.output[0])

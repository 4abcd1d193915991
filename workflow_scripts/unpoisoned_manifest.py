from cleanclip_core.poison import write_unpoisoned_manifest
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    write_unpoisoned_manifest(snakemake.input.manifest, snakemake.output[0])

from cleanclip_core.poison import write_poisoned_manifest
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    write_poisoned_manifest(
        snakemake.input.manifest,
        snakemake.output[0],
        attack_name=snakemake.wildcards.attack,
        attack_config=snakemake.params.attack,
    )

from cleanclip_core.plots.trigger_grid import write_trigger_grid
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    write_trigger_grid(
        snakemake.input.poisoned_manifest,
        snakemake.input.shard_index,
        snakemake.input.shards,
        snakemake.params.model,
        snakemake.params.attack,
        snakemake.output[0],
        title=f"{snakemake.wildcards.attack}: clean vs triggered training images",
    )

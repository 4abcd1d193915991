from cleanclip_core.data.shard_listing import verify_shards
from cleanclip_core.plots.trigger_grid import write_trigger_grid
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    verify_shards(snakemake.input.shards, snakemake.input.shard_listing)  # sizes: cheap
    write_trigger_grid(
        snakemake.input.poisoned_manifest,
        snakemake.input.shard_index,
        snakemake.input.shards,
        snakemake.params.model,
        snakemake.params.attack,
        snakemake.output[0],
        title=f"{snakemake.wildcards.attack}: clean vs triggered training images",
    )

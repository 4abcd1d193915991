from cleanclip_core.data.manifest import write_manifest
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    write_manifest(
        snakemake.input.shards,
        snakemake.input.shard_listing,
        snakemake.output.manifest,
        snakemake.output.shard_index,
        config={"dataset": snakemake.wildcards.dataset},
    )

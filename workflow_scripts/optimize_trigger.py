from cleanclip_core.data.shard_listing import verify_shards
from cleanclip_core.launch import launch_from_snakemake, run_stages
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    verify_shards(snakemake.input.shards, snakemake.input.shard_listing)  # sizes: cheap
    call = {
        "surrogate": {
            "model": snakemake.params.model,
            "weights": snakemake.input.get("surrogate"),
            "pretrained": snakemake.params.pretrained,
        },
        "data": {
            "manifest": snakemake.input.manifest,
            "shard_index": snakemake.input.shard_index,
            "shards_dir": snakemake.input.shards,
        },
        "attack": snakemake.params.attack,
        "out_path": snakemake.output[0],
    }
    execution = {"num_workers": snakemake.resources.num_workers}
    run_stages("cleanclip_core.attacks.badclip:optimize_trigger", [call], execution=execution, **launch_from_snakemake(snakemake))

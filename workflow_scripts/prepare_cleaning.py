from cleanclip_core.data.shard_listing import verify_shards
from cleanclip_core.defenses import get_defense
from cleanclip_core.launch import launch_from_snakemake, run_stages
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    verify_shards(snakemake.input.shards, snakemake.input.shard_listing)  # sizes: cheap
    settings = snakemake.params.settings
    call = {
        "model": snakemake.params.model,
        "weights": snakemake.input.weights,
        "data": {
            "manifest": snakemake.input.manifest,
            "shard_index": snakemake.input.shard_index,
            "shards_dir": snakemake.input.shards,
            "attack": snakemake.params.attack,
        },
        "options": settings["options"],
        "seed": settings["seed"],
        "table": snakemake.output.table,
        "manifest": snakemake.output.manifest,
    }
    resources = snakemake.resources
    execution = {"num_workers": resources.num_workers, "batch_size": resources.evaluation_batch_size}
    stage = get_defense(settings["method"]).preparation
    run_stages(stage, [call], execution=execution, **launch_from_snakemake(snakemake))

from cleanclip_core.data.shard_listing import verify_shards
from cleanclip_core.launch import launch_from_snakemake, run_stages
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    verify_shards(snakemake.input.shards, snakemake.input.shard_listing)  # sizes: cheap
    call = {
        "settings": snakemake.params.settings,
        "data": {
            "manifest": snakemake.input.manifest,
            "shard_index": snakemake.input.shard_index,
            "shards_dir": snakemake.input.shards,
            "attack": snakemake.params.attack,
        },
        "out_dir": snakemake.params.out_dir,
        "init_weights": snakemake.input.get("start_weights"),
        "pretrained": snakemake.params.pretrained,
        "keep_every_epoch": snakemake.params.keep_every_epoch,
    }
    resources = snakemake.resources
    execution = {"num_workers": resources.num_workers, "torch_compile": bool(resources.torch_compile)}
    run_stages("cleanclip_core.training.loop:run_training", [call], execution=execution, **launch_from_snakemake(snakemake))

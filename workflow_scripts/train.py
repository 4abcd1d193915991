from pathlib import Path

from cleanclip_core.reporting import reported_step
from cleanclip_core.training.loop import TrainingData, TrainSettings, train

with reported_step(snakemake.log[0]):
    train(
        TrainSettings(**snakemake.params.settings),
        TrainingData(
            snakemake.input.manifest,
            snakemake.input.shard_index,
            snakemake.input.shards,
            snakemake.params.attack,
        ),
        Path(snakemake.output.step_log).parent,
        init_weights=snakemake.input.get("init_weights", snakemake.params.get("init_weights")),
        keep_every_epoch=snakemake.params.keep_every_epoch,
    )

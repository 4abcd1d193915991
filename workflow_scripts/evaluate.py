from cleanclip_core.launch import launch_from_snakemake, run_stages
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    calls = [
        {
            "model_name": snakemake.params.model,
            "weights": weights,
            "images": snakemake.input.images,
            "classnames": snakemake.params.classnames,
            "attack": snakemake.params.attack,
            "checkpoint": checkpoint,
            "provenance": snakemake.params.provenance,
            "output": output,
        }
        for weights, checkpoint, output in zip(snakemake.input.weights, snakemake.params.checkpoints, snakemake.output)
    ]
    resources = snakemake.resources
    execution = {"batch_size": resources.evaluation_batch_size, "num_workers": resources.num_workers}
    run_stages("cleanclip_core.evaluation:write_checkpoint_metrics", calls, execution=execution, **launch_from_snakemake(snakemake))

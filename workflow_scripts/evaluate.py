from cleanclip_core.launch import launch_from_snakemake, run_stages
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    evaluation = snakemake.params.evaluation
    calls = [
        {
            "model_name": snakemake.params.model,
            "weights": weights,
            "images": snakemake.input.images,
            "classnames": evaluation["classnames"],
            "attack": snakemake.params.attack,
            "checkpoint": checkpoint,
            "provenance": snakemake.params.provenance,
            "output": output,
            "batch_size": evaluation["batch_size"],
            "num_workers": evaluation["num_workers"],
        }
        for weights, checkpoint, output in zip(snakemake.input.weights, snakemake.params.checkpoints, snakemake.output)
    ]
    run_stages("cleanclip_core.evaluation:write_checkpoint_metrics", calls, **launch_from_snakemake(snakemake))

from cleanclip_core.launch import launch_from_snakemake, run_stages
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    call = {
        "model_name": snakemake.params.model,
        "weights": list(snakemake.input.weights),
        "images": snakemake.input.images,
        "classnames": snakemake.params.classnames,
        "attack": snakemake.params.attack,
        "checkpoints": snakemake.params.checkpoints,
        "provenance": snakemake.params.provenance,
        "outputs": list(snakemake.output.metrics),
        "ranks_output": snakemake.output.ranks,
    }
    resources = snakemake.resources
    execution = {"batch_size": resources.evaluation_batch_size, "num_workers": resources.num_workers}
    run_stages("cleanclip_core.evaluation:write_checkpoints_metrics", [call], execution=execution, **launch_from_snakemake(snakemake))

from cleanclip_core.launch import launch_from_snakemake, run_stages, training_pairs_from_snakemake
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    call = {
        "model": snakemake.params.model,
        "weights": snakemake.input.weights,
        "data": training_pairs_from_snakemake(snakemake),
        "table": snakemake.output[0],
    }
    resources = snakemake.resources
    execution = {"num_workers": resources.num_workers, "batch_size": resources.evaluation_batch_size}
    stage = "cleanclip_core.detectors.embeddings:embed_training_pairs"
    run_stages(stage, [call], execution=execution, **launch_from_snakemake(snakemake))

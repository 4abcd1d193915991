from cleanclip_core.launch import launch_from_snakemake, run_stages
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    call = {
        "model": snakemake.params.model,
        "weights": snakemake.input.weights,
        "images": snakemake.input.images,
        "classnames": snakemake.params.classnames,
        "attack": snakemake.params.attack,
        "detector": snakemake.wildcards.detector,
        "settings": snakemake.params.settings,
        "scores_table": snakemake.output.scores,
        "quality_table": snakemake.output.quality,
    }
    resources = snakemake.resources
    execution = {"batch_size": resources.evaluation_batch_size, "num_workers": resources.num_workers}
    run_stages("cleanclip_core.detectors.test_time:detect_test", [call], execution=execution, **launch_from_snakemake(snakemake))

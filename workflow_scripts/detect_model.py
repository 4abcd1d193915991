from cleanclip_core.launch import launch_from_snakemake, run_stages
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    call = {
        "model": snakemake.params.model,
        "weights": snakemake.input.weights,
        "images": snakemake.input.images,
        "classnames": snakemake.params.classnames,
        "identity": snakemake.params.identity,
        "is_backdoored": snakemake.params.is_backdoored,
        "detector": snakemake.wildcards.detector,
        "settings": snakemake.params.settings,
        "scores_table": snakemake.output.scores,
    }
    execution = {"num_workers": snakemake.resources.num_workers}
    run_stages("cleanclip_core.detectors.model_level:detect_model", [call], execution=execution, **launch_from_snakemake(snakemake))

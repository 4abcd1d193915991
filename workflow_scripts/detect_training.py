from cleanclip_core.detection import detect_training
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    settings = snakemake.params.settings
    detect_training(
        snakemake.input[0], snakemake.wildcards.detector, settings["options"], settings,
        snakemake.output.scores, snakemake.output.quality,
    )

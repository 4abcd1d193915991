from cleanclip_core.data.cleaning_set import write_cleaning_set
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    settings = snakemake.params.settings
    write_cleaning_set(
        snakemake.input.poisoned_manifest,
        snakemake.output[0],
        n_clean=settings["n_clean"],
        n_poisons=settings["n_poisons"],
        seed=settings["seed"],
        manifest_path=snakemake.input.get("manifest"),
        labels_path=snakemake.input.get("labels"),
        target_label=snakemake.params.target_label,
    )

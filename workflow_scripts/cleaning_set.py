from cleanclip_core.data.cleaning_set import write_cleaning_set
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    write_cleaning_set(
        snakemake.input.poisoned_manifest,
        snakemake.output[0],
        n_clean=snakemake.params.n_clean,
        n_poisons=snakemake.params.n_poisons,
        seed=snakemake.params.seed,
        manifest_path=snakemake.input.get("manifest"),
        labels_path=snakemake.input.get("labels"),
    )

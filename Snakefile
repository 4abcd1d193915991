# Backdoor poisoning and cleaning of CLIP models: the DAG from download to figures.
import sys

from cleanclip_core.config import check_config, validate_config
from cleanclip_core.errors import UserError


configfile: "config.yaml"


try:
    check_config(validate_config(config))
except UserError as error:
    sys.exit(f"error: {error}")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/poison.smk"
include: "rules/train.smk"
include: "rules/results.smk"


rule all:
    default_target: True
    input:
        expand(
            "results/{dataset}/{attack}/trigger_grid.png",
            dataset=DATASET,
            attack=config["attacks"],
        ),
        "results/figures/fig2.pdf",
        "results/figures/trajectories.pdf",
        "results/tables/best_accuracy.csv",

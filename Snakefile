# Backdoor poisoning and cleaning of CLIP models: the DAG from download to figures.
import sys

from cleanclip_core.config import check_input_files, validate_config
from cleanclip_core.errors import UserError


configfile: "config.yaml"


try:
    check_input_files(validate_config(config))
except UserError as error:
    sys.exit(f"error: {error}")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/poison.smk"
include: "rules/train.smk"


rule all:
    default_target: True
    input:
        expand(
            "results/{dataset}/{attack}/trigger_grid.png",
            dataset=DATASET,
            attack=config["attacks"],
        ),
        expand(
            "results/{dataset}/{attack}/pretrain/{objective}/clean/{method}/lr_{lr}/train_log.parquet",
            dataset=DATASET,
            attack=STUDY_ATTACK,
            objective=PRETRAIN_OBJECTIVES,
            method=CLEAN_METHODS,
            lr=CLEAN_LRS,
        ),

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


rule all:
    default_target: True
    input:
        expand(
            "results/{dataset}/{attack}/{output}",
            dataset=DATASET,
            attack=config["attacks"],
            output=["poisoned_manifest.parquet", "trigger_grid.png"],
        ),

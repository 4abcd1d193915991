# Backdoor poisoning and cleaning of CLIP models: the DAG from download to figures.
import sys

# The DAG and every job import this checkout's cleanclip_core, whichever clone the environment
# was installed from: jobs inherit the import path.
sys.path.insert(0, workflow.basedir)

from cleanclip_core.registry import prepend_import_path

prepend_import_path(workflow.basedir)

from cleanclip_core.config import check_config, check_config_files, validate_config
from cleanclip_core.errors import UserError


# The embedded default, unless config files are given: a preset then runs alone, with nothing
# of config.yaml merged into it.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


try:
    check_config_files(workflow.configfiles)
    check_config(validate_config(config))
except UserError as error:
    sys.exit("\n".join(f"error: {line}" for line in str(error).splitlines()))


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/poison.smk"
include: "rules/train.smk"
include: "rules/detect.smk"
include: "rules/results.smk"


rule all:
    default_target: True
    input:
        attack_folders("trigger_grid.png"),
        rules.headline_figure.output,
        rules.figures.output,
        rules.overview.output,
        rules.preparation_summary.output if prepared_methods() else [],
        rules.pretraining_curve.output if PRETRAIN_CURVE else [],
        rules.detection_summary.output if STUDY["detectors"] else [],

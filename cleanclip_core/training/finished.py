"""A finished training run's state, kept until Snakemake has taken the run's outputs. No torch:
the launch layer releases it.

A run writes everything in `partial/` under its output folder until it ends; then it links the
files into the folder and keeps them in `partial/`, with a record of its settings in place of its
resume state. Snakemake marks a job's outputs incomplete when it was killed or interrupted while
the job ran, even if the job finished, and deletes them before running the job again: the rerun
then finds the record and publishes the files again instead of training. A job that reads a run's
outputs starts only once Snakemake has taken them, and releases the run's state.
"""

import shutil
from collections.abc import Iterable
from pathlib import Path

PARTIAL = "partial"
RESUME_STATE = "resume.pt"
FINISHED = "finished.pt"


def release_finished_runs(outputs: Iterable[str | Path]) -> None:
    """Remove the kept state of the finished runs that wrote `outputs` (the inputs of a job, which
    Snakemake has taken). Its hard links cost no space while the outputs exist, but would keep
    the epochs' weights that `execution.keep_weights: last` deletes once evaluated, and a forced
    rerun would publish the run again instead of training it."""
    for folder in {Path(path).parent for path in outputs}:
        if (folder / PARTIAL / FINISHED).is_file():
            shutil.rmtree(folder / PARTIAL, ignore_errors=True)  # another job may release it at once

"""Where a stage runs: in the calling process (`debug`, the default: pdb works), in processes on
this machine (`local`), or as a SLURM job (`slurm`), the last two through submitit.

A stage is a resumable function of the library named by its import path, e.g.
`cleanclip_core.training.loop:train`, with keyword arguments. It runs as a checkpointable job:
when SLURM preempts it, requeues it or its time runs out, it starts again and resumes from its own
last checkpoint. With several tasks (GPUs) it runs once per task, in the torch.distributed
environment submitit derives from SLURM's. A list of calls runs as one job array.

The launch folder keeps, per job name, the ids of the jobs last submitted and a digest of their
calls: a caller that was killed and started again with the same calls waits for those jobs while
they are still queued or running, instead of submitting them twice.
"""

import hashlib
import importlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import submitit

from cleanclip_core.errors import UserError

log = logging.getLogger(__name__)

MODES = ("debug", "local", "slurm")
POLL_S = 2.0
# Without SLURM accounting (sacct) a job that died leaves no record once squeue forgets it; a
# job gone from squeue for this long without a result has failed.
VANISHED_GRACE_S = 30.0


@dataclass(frozen=True)
class StageResources:
    """What a stage asks of the cluster, named as Snakemake's SLURM resources are."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_mb: int = 8000
    runtime: int = 24 * 60  # minutes
    slurm_partition: str | None = None
    slurm_account: str | None = None

    @classmethod
    def from_mapping(cls, resources: Mapping[str, Any]) -> "StageResources":
        """The fields present in `resources` (e.g. a Snakemake job's), defaults for the rest."""
        return cls(**{f.name: resources[f.name] for f in fields(cls) if f.name in resources})

    @property
    def tasks_per_node(self) -> int:
        return max(1, self.gpus_per_node)


def _function(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@contextmanager
def _torch_distributed() -> Iterator[None]:
    """A process group over the job's tasks when it has several (one per GPU)."""
    import torch
    import torch.distributed as dist

    environment = submitit.JobEnvironment()
    if environment.num_tasks <= 1:
        yield
        return
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(environment.local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


class Stage(submitit.helpers.Checkpointable):
    """A stage function called in its job; resubmitted unchanged on preemption or time limit,
    which is enough because the stage resumes from its own checkpoints."""

    def __call__(self, function: str, kwargs: Mapping[str, Any]) -> Any:
        in_job = os.environ.get("SUBMITIT_EXECUTOR") in ("local", "slurm")
        if in_job:  # the job's log shows the stage's progress
            logging.basicConfig(level=logging.INFO, format="%(message)s")
        with _torch_distributed() if in_job else nullcontext():
            return _function(function)(**kwargs)


def make_executor(mode: str, folder: Path, resources: StageResources, name: str) -> submitit.Executor:
    """A submitit executor for the `local` or `slurm` mode, asking for `resources`."""
    executor = submitit.AutoExecutor(folder, cluster=mode)
    executor.update_parameters(
        name=name,
        nodes=resources.nodes,
        tasks_per_node=resources.tasks_per_node,
        gpus_per_node=resources.gpus_per_node,
        cpus_per_task=resources.cpus_per_task,
        mem_gb=resources.mem_mb / 1024,
        timeout_min=resources.runtime,
    )
    if mode == "slurm":
        slurm = {"slurm_partition": resources.slurm_partition, "slurm_account": resources.slurm_account}
        executor.update_parameters(**{key: value for key, value in slurm.items() if value})
    return executor


def _job_record(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name}.job_id"


def _queued(job_id: str) -> bool:
    """Whether SLURM still has the job (or any task of an array) pending or running."""
    listed = subprocess.run(["squeue", "-h", "-j", job_id.split("_")[0], "-o", "%i"],
                            capture_output=True, text=True)
    return listed.returncode == 0 and bool(listed.stdout.strip())


def _calls_digest(function: str, calls: Sequence[Mapping[str, Any]]) -> str:
    return hashlib.sha256(json.dumps([function, calls], sort_keys=True, default=str).encode()).hexdigest()


def _attach(mode: str, folder: Path, name: str, digest: str) -> list[submitit.Job] | None:
    """The jobs of an earlier submission of the same calls as `name`, if still queued on SLURM."""
    record = _job_record(folder, name)
    if mode != "slurm" or not record.is_file():
        return None
    recorded_digest, *job_ids = record.read_text().split()
    if recorded_digest != digest or not job_ids or not _queued(job_ids[0]):
        return None
    log.info(f"{name}: waiting for SLURM job {job_ids[0].split('_')[0]}, submitted by an earlier run")
    return [submitit.SlurmJob(folder, job_id) for job_id in job_ids]


def _wait(job: submitit.Job, mode: str) -> Any:
    """The job's result, polling; a job that vanished from SLURM without one is an error."""
    vanished_since = None
    while not job.done():
        if mode == "slurm" and not _queued(job.job_id):
            vanished_since = vanished_since or time.monotonic()
            if time.monotonic() - vanished_since > VANISHED_GRACE_S:
                raise UserError(f"SLURM job {job.job_id} ended without a result; its log: {job.paths.stderr}")
        time.sleep(POLL_S)
    try:
        return job.result()
    except submitit.core.utils.FailedJobError as error:
        raise UserError(f"job {job.job_id} failed; its log: {job.paths.stderr}\n{str(error)[-2000:]}") from None


def run_stages(
    function: str,
    calls: Sequence[Mapping[str, Any]],
    *,
    mode: str,
    folder: Path,
    resources: StageResources,
    name: str,
) -> list[Any]:
    """Run `function(**kwargs)` for each kwargs of `calls`: one job, or one job array for
    several; return their results in order. In `debug` mode they run here, one after another."""
    if mode not in MODES:
        raise UserError(f"launch mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "debug":
        return [Stage()(function, kwargs) for kwargs in calls]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digest = _calls_digest(function, calls)
    jobs = _attach(mode, folder, name, digest)
    if jobs is None:
        executor = make_executor(mode, folder, resources, name)
        with executor.batch():
            jobs = [executor.submit(Stage(), function, kwargs) for kwargs in calls]
        _job_record(folder, name).write_text(" ".join([digest, *(job.job_id for job in jobs)]))
        log.info(f"{name}: {mode} job {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks), logs in {folder}")
    return [_wait(job, mode) for job in jobs]


def launch_from_snakemake(job: Any, folder: Path = Path("results/launch")) -> dict[str, Any]:
    """run_stages' launch arguments for a Snakemake job: the mode and resources its profile set
    (resources `launcher`, default debug, and those of StageResources), a name per job."""
    resources = dict(job.resources.items())
    name = "-".join([job.rule, *(str(value) for value in job.wildcards)])
    return {
        "mode": resources.get("launcher", "debug"),
        "folder": Path(folder) / job.rule,
        "resources": StageResources.from_mapping(resources),
        "name": name,
    }

"""Where a stage runs: in the calling process (`debug`, the default: pdb works), in processes on
this machine (`local`), or as a SLURM job (`slurm`), the last two through submitit.

A stage is a resumable function of the library named by its import path, e.g.
`cleanclip_core.training.loop:train`, with keyword arguments. It runs as a checkpointable job:
when SLURM preempts it, requeues it or its time runs out, it starts again and resumes from its own
last checkpoint. With several tasks (processes_per_node, by default one per GPU) it runs once per
task, in the torch.distributed environment submitit derives from SLURM's; `python -m
cleanclip_core.launch` runs a stage under torchrun the same way. A list of calls runs as one job array. On one machine,
stages that run at once (Snakemake's `--resources gpu=N`) each lease a GPU of their own.

The launch folder keeps, per job name, the ids of the jobs last submitted and a digest of their
calls: a caller that was killed and started again with the same calls waits for those jobs while
they are still queued or running, instead of submitting them twice. A training job that finished
while its caller was away kept its files: submitted again, it only publishes them
(training/finished.py).
"""

import argparse
import enum
import fcntl
import hashlib
import importlib
import json
import logging
import os
import random
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import submitit

from cleanclip_core.data.shard_listing import verify_shards
from cleanclip_core.errors import UserError
from cleanclip_core.reporting import reported_step
from cleanclip_core.training.finished import release_finished_runs

log = logging.getLogger(__name__)

MODES = ("debug", "local", "slurm")
# A waiting caller checks for the job's result file this often: a local, cheap check.
POLL_S = 2.0
# ... but asks squeue at most once per interval drawn from this range: 64 waiting stages asking
# every 2 s would keep slurmctld busy, and the jitter spreads out stages that started together.
SQUEUE_INTERVAL_S = (30.0, 45.0)
# squeue retries a controller that is down for about 20 s before it fails.
SQUEUE_TIMEOUT_S = 60.0
# Without SLURM accounting (sacct) a job that died leaves no record once squeue forgets it: a job
# that squeue did not list at two queries this far apart (any two, at the interval above), and
# that left no result, has failed.
VANISHED_GRACE_S = 30.0
# Machine-wide (not per launch folder), so that stages of every rule and run exclude each other.
GPU_LOCK_DIR = Path(tempfile.gettempdir()) / "cleanclip-gpu-locks"
LEASE_POLL_S = 1.0


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
    processes_per_node: int = 0  # 0: one per GPU (one without GPUs); CPU runs set it

    @classmethod
    def from_mapping(cls, resources: Mapping[str, Any]) -> "StageResources":
        """The fields present in `resources` (e.g. a Snakemake job's), defaults for the rest."""
        return cls(**{f.name: resources[f.name] for f in fields(cls) if f.name in resources})

    @property
    def tasks_per_node(self) -> int:
        return self.processes_per_node or max(1, self.gpus_per_node)


def _function(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@contextmanager
def _torch_distributed(from_job: bool) -> Iterator[None]:
    """A process group over the stage's processes, each on its local rank's GPU where there are
    GPUs: a submitit job's tasks (submitit derives torch's environment from SLURM's, on every
    node, or from its local executor's) or torchrun's processes (torchrun sets it)."""
    import torch
    import torch.distributed as dist

    if from_job:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def _lock_file(lock_dir: Path, device: str) -> Path:
    return lock_dir / (re.sub(r"[^\w.-]", "_", device) + ".lock")


def _try_lock(path: Path) -> int | None:
    """A descriptor holding the exclusive flock of `path`, or None while another holds it."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def _first_free(paths: Sequence[Path]) -> tuple[int, int] | None:
    for index, path in enumerate(paths):
        if (descriptor := _try_lock(path)) is not None:
            return index, descriptor
    return None


@contextmanager
def lease_device(devices: Sequence[str], lock_dir: Path) -> Iterator[int]:
    """The index in `devices` of the first one that no other lease in `lock_dir` holds, held
    until exit. While all are held (more stages at once than GPUs: Snakemake's `--resources gpu`
    above the GPU count, or another run on this machine) it waits for one, rather than put two
    stages on a GPU. A lease is the flock of a file per device, so the kernel releases it when its
    holder ends, even killed: no stale leases."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    paths = [_lock_file(lock_dir, device) for device in devices]
    leased = _first_free(paths)
    if leased is None:
        log.info(f"all {len(devices)} GPUs are leased by other stages (locks in {lock_dir}); waiting for one")
    while leased is None:
        time.sleep(LEASE_POLL_S)
        leased = _first_free(paths)
    index, descriptor = leased
    try:
        yield index
    finally:
        os.close(descriptor)


def _device_names(count: int) -> list[str]:
    """Names of the visible GPUs that all processes on this machine share: the entries of
    CUDA_VISIBLE_DEVICES where set (indices or UUIDs), so that runs shown different GPUs lock
    the physical ones, else the indices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [name.strip() for name in visible.split(",")][:count] if visible else [str(i) for i in range(count)]


@contextmanager
def _leased_gpu() -> Iterator[None]:
    """With several GPUs visible, a one-process stage on this machine runs on one that no other
    stage holds, as its current device; torch is imported here, so launch.py's import stays light."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count <= 1:
        yield
        return
    with lease_device(_device_names(count), GPU_LOCK_DIR) as index, torch.cuda.device(index):
        log.info(f"stage on GPU {index} of {count}")
        yield


def _devices(executor: str | None) -> AbstractContextManager[None]:
    """The stage's GPUs: a job of several tasks, or a stage run by torchrun with several
    processes, joins a torch.distributed group; a SLURM job has GPUs of its own; a stage sharing
    this machine with others leases one."""
    if executor and submitit.JobEnvironment().num_tasks > 1:
        return _torch_distributed(from_job=True)
    if not executor and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        return _torch_distributed(from_job=False)
    return nullcontext() if executor == "slurm" else _leased_gpu()


def _use_allocated_cpus() -> None:
    """As many torch threads as the task has CPUs: torch counts the node's cores, so the tasks of
    a job sharing a node would oversubscribe it (torchrun sets one thread per process for the same
    reason)."""
    import torch

    torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", torch.get_num_threads())))


class Stage(submitit.helpers.Checkpointable):
    """A stage function called in its job; resubmitted unchanged on preemption or time limit,
    which is enough because the stage resumes from its own checkpoints."""

    def __call__(self, function: str, kwargs: Mapping[str, Any]) -> Any:
        executor = os.environ.get("SUBMITIT_EXECUTOR")  # None in the caller's process (debug)
        if executor:  # the job's log shows the stage's progress
            logging.basicConfig(level=logging.INFO, format="%(message)s")
        if executor == "slurm":
            _use_allocated_cpus()
        with _devices(executor):
            return _function(function)(**kwargs)


def _caller_gpus() -> str:
    """A shell line that gives a local job the caller's GPUs: submitit shows a one-GPU job GPU 0
    only, which all concurrent stages would share; shown all, the stage leases a free one."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "unset CUDA_VISIBLE_DEVICES" if visible is None else f"export CUDA_VISIBLE_DEVICES={shlex.quote(visible)}"


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
        # A task that fails ends the job: the others would wait in their next collective for
        # torch.distributed's timeout (30 min on CPUs).
        executor.update_parameters(slurm_srun_args=["--kill-on-bad-exit=1"])
    if mode == "local" and resources.gpus_per_node == 1:
        executor.update_parameters(local_setup=[_caller_gpus()])
    return executor


def _job_record(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name}.job_id"


class Queued(enum.Enum):
    """SLURM's answer to whether it still has a job; UNKNOWN when squeue failed (e.g. slurmctld
    down or restarting), which says nothing about the job."""

    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


def squeue(job_id: str) -> Queued:
    """Whether SLURM still has the job (or any task of an array) pending or running."""
    command = ["squeue", "-h", "-j", job_id.split("_")[0], "-o", "%i"]
    try:
        listed = subprocess.run(command, capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning(f"{' '.join(command)} could not run ({error}); the job's state is unknown")
        return Queued.UNKNOWN
    if listed.returncode == 0:
        return Queued.YES if listed.stdout.strip() else Queued.NO
    if "Invalid job id" in listed.stderr:  # the controller forgot the job, some time after it ended
        return Queued.NO
    log.warning(f"{' '.join(command)} failed ({listed.stderr.strip()}); the job's state is unknown")
    return Queued.UNKNOWN


def next_query_at(now: float) -> float:
    """When a waiting caller next asks squeue: a random interval in SQUEUE_INTERVAL_S from now."""
    return now + random.uniform(*SQUEUE_INTERVAL_S)


def not_listed_since(since: float | None, answer: Queued, now: float) -> float | None:
    """Since when squeue has not listed a job, given its `answer` at `now`: reset by a listing,
    unchanged by an unknown answer, so that a controller outage never makes a job look gone."""
    if answer is Queued.UNKNOWN:
        return since
    if answer is Queued.YES:
        return None
    return now if since is None else since


def _calls_digest(function: str, calls: Sequence[Mapping[str, Any]]) -> str:
    return hashlib.sha256(json.dumps([function, calls], sort_keys=True, default=str).encode()).hexdigest()


def _attach(mode: str, folder: Path, name: str, digest: str) -> list[submitit.Job] | None:
    """The jobs of an earlier submission of the same calls as `name`, unless SLURM says they are
    gone. When squeue fails, the jobs may still run: waiting for them is safe, and a resubmission
    would run them twice."""
    record = _job_record(folder, name)
    if mode != "slurm" or not record.is_file():
        return None
    recorded_digest, *job_ids = record.read_text().split()
    if recorded_digest != digest or not job_ids:
        return None
    queued = squeue(job_ids[0])
    if queued is Queued.NO:
        return None
    earlier = f"{name}: waiting for SLURM job {job_ids[0].split('_')[0]}, submitted by an earlier run"
    if queued is Queued.UNKNOWN:
        log.warning(f"{earlier}: squeue failed, so it may still run, and submitting it again could run it twice")
    else:
        log.info(earlier)
    return [submitit.SlurmJob(folder, job_id) for job_id in job_ids]


def _wait(job: submitit.Job, mode: str) -> Any:
    """The job's result, polling; a job that vanished from SLURM without one is an error.

    job.done() looks for the result file, and on SLURM also asks sacct, but rate-limited by
    submitit for all jobs of this process (after 2, 4, 8... s, then every 10 min); squeue is asked
    at most every SQUEUE_INTERVAL_S."""
    query_at, since = next_query_at(time.monotonic()), None
    while not job.done():
        now = time.monotonic()
        if mode == "slurm" and now >= query_at:
            answer = squeue(job.job_id)
            since = not_listed_since(since, answer, now)
            if answer is Queued.NO and now - since >= VANISHED_GRACE_S:
                raise UserError(f"SLURM job {job.job_id} ended without a result; its logs: {_task_logs(job)}")
            query_at = next_query_at(time.monotonic())
        time.sleep(POLL_S)
    try:
        return job.results()[0]  # rank 0's: a job of several tasks answers one result per task
    except submitit.core.utils.FailedJobError as error:
        raise UserError(f"job {job.job_id} failed; its logs: {_task_logs(job)}\n{str(error)[-2000:]}") from None


def _task_logs(job: submitit.Job) -> str:
    """The error logs of the job's tasks: with several, the one that failed may be any."""
    return str(Path(job.paths.folder) / f"{job.job_id}_*_log.err")


def _with_execution(call: Mapping[str, Any], execution: Mapping[str, Any]) -> dict[str, Any]:
    """The call with the execution settings; a setting in both would be ambiguous, and changing it
    would change the digest or not depending on where it is set."""
    if both := sorted(set(call) & set(execution)):
        raise UserError(f"{', '.join(both)}: set both in a stage's call and in its execution settings")
    return {**call, **execution}


def run_stages(
    function: str,
    calls: Sequence[Mapping[str, Any]],
    *,
    mode: str,
    folder: Path,
    resources: StageResources,
    name: str,
    execution: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Run `function(**kwargs)` for each kwargs of `calls`: one job, or one job array for
    several; return their results in order. In `debug` mode they run here, one after another.

    `execution`: keyword arguments added to every call that say how it runs, not what it computes
    (data-loader workers, evaluation batch size). They are left out of the calls' digest, so a
    restarted caller that changed only them waits for the jobs already submitted (which keep the
    settings they were submitted with) instead of running them again."""
    if mode not in MODES:
        raise UserError(f"launch mode {mode!r} is not one of {', '.join(MODES)}")
    runs = [_with_execution(kwargs, execution or {}) for kwargs in calls]
    if mode == "debug":
        return [Stage()(function, kwargs) for kwargs in runs]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digest = _calls_digest(function, calls)
    jobs = _attach(mode, folder, name, digest)
    if jobs is None:
        executor = make_executor(mode, folder, resources, name)
        with executor.batch():
            jobs = [executor.submit(Stage(), function, kwargs) for kwargs in runs]
        _job_record(folder, name).write_text(" ".join([digest, *(job.job_id for job in jobs)]))
        processes = f"{resources.nodes * resources.tasks_per_node} processes each"
        log.info(f"{name}: {mode} job {jobs[0].job_id.split('_')[0]} ({len(jobs)} jobs, {processes}), logs in {folder}")
    return [_wait(job, mode) for job in jobs]


def launch_from_snakemake(job: Any, folder: Path = Path("results/launch")) -> dict[str, Any]:
    """run_stages' launch arguments for a Snakemake job: the mode and resources its profile set
    (resources `launcher`, default debug, and those of StageResources), a name per job.

    Snakemake starts a job once it has taken the job's inputs: the training runs that wrote them
    no longer need the state they kept for a rerun (training/finished.py), which is released here."""
    release_finished_runs(job.input)
    resources = dict(job.resources.items())
    name = "-".join([job.rule, *(str(value) for value in job.wildcards)])
    return {
        "mode": resources.get("launcher", "debug"),
        "folder": Path(folder) / job.rule,
        "resources": StageResources.from_mapping(resources),
        "name": name,
    }


def training_pairs_from_snakemake(job: Any) -> dict[str, Any]:
    """The poisoned training pairs a Snakemake job's stage reads (the fields of the training
    loop's TrainingData), once the shards' sizes match their listing (a cheap check)."""
    verify_shards(job.input.shards, job.input.shard_listing)
    return {
        "manifest": job.input.manifest,
        "shard_index": job.input.shard_index,
        "shards_dir": job.input.shards,
        "attack": job.params.attack,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m cleanclip_core.launch FUNCTION KWARGS`: one stage in this process, its keyword
    arguments a JSON object; under `torchrun --nproc-per-node N`, each process is a rank."""
    parser = argparse.ArgumentParser(prog="python -m cleanclip_core.launch", description=main.__doc__)
    parser.add_argument("function", help="the stage's import path, e.g. cleanclip_core.training.loop:run_training")
    parser.add_argument("kwargs", type=json.loads, help="its keyword arguments, a JSON object")
    arguments = parser.parse_args(argv)
    with reported_step():
        result = Stage()(arguments.function, arguments.kwargs)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(result))


if __name__ == "__main__":
    main()

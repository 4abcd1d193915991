"""submitit jobs on the real SLURM cluster started by tests/slurm/start_cluster.sh."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

from slurm.fixture import slurm_cluster  # noqa: F401  (pytest fixture)

# The job processes cannot import this test module, so ship its functions and classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TIMEOUT_S = 120


def make_executor(folder: Path, partition: str) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(slurm_partition=partition, cpus_per_task=1, slurm_mem="256M", timeout_min=5)
    return executor


def wait_done(job: submitit.Job, timeout_s: float = TIMEOUT_S) -> None:
    """Polls instead of job.result(): without sacct submitit never learns that a job died."""
    deadline = time.monotonic() + timeout_s
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} not done after {timeout_s} s:\n{job.stdout()}\n{job.stderr()}")
        time.sleep(0.5)


def scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], check=True, capture_output=True, text=True)
    return dict(field.split("=", 1) for field in out.stdout.split() if "=" in field)


def finished_job_info(job_id: str, timeout_s: float = 30) -> dict[str, str]:
    """SLURM's record of the job once it ended (the result file is written just before)."""
    deadline = time.monotonic() + timeout_s
    while (info := scontrol_job(job_id))["JobState"] in ("PENDING", "RUNNING", "COMPLETING"):
        assert time.monotonic() < deadline, f"job {job_id} still {info['JobState']} after {timeout_s} s"
        time.sleep(0.2)
    return info


def slurm_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key.startswith("SLURM_")}


def square(x: int) -> tuple[int, dict[str, str]]:
    return x * x, slurm_env()


def test_submit_runs_a_real_slurm_job(slurm_cluster, tmp_path):
    job = make_executor(tmp_path, slurm_cluster).submit(square, 7)
    assert job.job_id.isdigit()
    wait_done(job)
    value, env = job.result()
    assert value == 49
    assert env["SLURM_JOB_ID"] == job.job_id
    assert env["SLURM_JOB_PARTITION"] == slurm_cluster
    info = finished_job_info(job.job_id)
    assert (info["JobState"], info["Partition"]) == ("COMPLETED", slurm_cluster)


def test_map_array_returns_every_result(slurm_cluster, tmp_path):
    jobs = make_executor(tmp_path, slurm_cluster).map_array(square, [1, 2, 3])
    for job in jobs:
        wait_done(job)
    results = [job.result() for job in jobs]
    assert [value for value, _ in results] == [1, 4, 9]
    assert sorted(env["SLURM_ARRAY_TASK_ID"] for _, env in results) == ["0", "1", "2"]
    assert len({env["SLURM_ARRAY_JOB_ID"] for _, env in results}) == 1


class SumOfSquares(submitit.helpers.Checkpointable):
    """Adds k*k for k = 1..steps, one step at a time, keeping its progress in state_file."""

    def __call__(self, state_file: str, steps: int, step_s: float) -> int:
        state = Path(state_file)
        step, total = json.loads(state.read_text()) if state.exists() else (0, 0)
        with state.with_suffix(".log").open("a") as log:
            print(f"start step={step} restarts={os.environ.get('SLURM_RESTART_COUNT', '0')}", file=log)
        while step < steps:
            time.sleep(step_s)
            step += 1
            total += step * step
            # write then rename, so that a kill mid-write leaves the previous state intact
            tmp = state.with_suffix(".tmp")
            tmp.write_text(json.dumps([step, total]))
            tmp.replace(state)
        return total


def wait_for_step(state: Path, min_step: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not (state.exists() and json.loads(state.read_text())[0] >= min_step):
        assert time.monotonic() < deadline, f"no step {min_step} in {state} after {timeout_s} s"
        time.sleep(0.2)


def test_requeued_job_resumes_from_its_state_file(slurm_cluster, tmp_path):
    expected = SumOfSquares()(str(tmp_path / "local.json"), steps=20, step_s=0)
    state = tmp_path / "state.json"
    job = make_executor(tmp_path / "jobs", slurm_cluster).submit(SumOfSquares(), str(state), 20, 0.5)
    wait_for_step(state, 2)
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    wait_done(job)
    assert job.result() == expected
    starts = state.with_suffix(".log").read_text().splitlines()
    assert len(starts) == 2, starts
    assert starts[0] == "start step=0 restarts=0"
    resumed_step = int(starts[1].split()[1].removeprefix("step="))
    assert 2 <= resumed_step < 20, starts
    assert starts[1].endswith("restarts=1")

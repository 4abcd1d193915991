"""The launch layer on the real SLURM cluster of tests/slurm: a caller waiting through an
outage of slurmctld, a restarted caller attaching to the job of a killed one, and how often a
waiting caller asks squeue. The stage is `subprocess.check_output` of a shell `sleep`: a function
the job can import, which takes keyword arguments and returns what the shell printed."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from cleanclip_core import launch
from cleanclip_core.errors import UserError
from cleanclip_core.launch import StageResources, run_stages
from slurm.fixture import START_SCRIPT, slurm_cluster  # noqa: F401  (pytest fixture)

STAGE = "subprocess:check_output"
SLURMCTLD_PID = Path("/run/slurmctld.pid")
# Longer than squeue polled every 2 s took to call a running job gone when squeue failed: 30 s after
# the first failing call, that is three calls of about 20 s each (squeue retries the controller).
OUTAGE_S = 65
CALLER = """
import json, sys
from pathlib import Path
from cleanclip_core.errors import UserError
from cleanclip_core.launch import StageResources, run_stages
args, kwargs = json.loads(sys.argv[1])
run_stages(*args, **kwargs | {"folder": Path(kwargs["folder"]), "resources": StageResources(**kwargs["resources"])})
"""


def sleep_call(seconds: int, then: str = "echo slept") -> dict:
    return {"args": ["sh", "-c", f"sleep {seconds}; {then}"], "text": True}


def slurm_launch(folder: Path, partition: str, name: str) -> dict:
    resources = StageResources(cpus_per_task=1, mem_mb=500, runtime=10, slurm_partition=partition)
    return {"mode": "slurm", "folder": folder, "resources": resources, "name": name}


@pytest.fixture
def squeue_answers(monkeypatch) -> list[launch.Queued]:
    """The answers of squeue to the launch layer, in order: the real squeue, only counted."""
    answers, real = [], launch.squeue

    def counted(job_id: str) -> launch.Queued:
        answers.append(real(job_id))
        return answers[-1]

    monkeypatch.setattr(launch, "squeue", counted)
    return answers


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.5)
    return value


def running_job(record: Path) -> str:
    """The SLURM job of a launch record, once its task runs: a job that SLURM lists as running may
    not have started it yet (submitit's batch script then asks the controller for a job step)."""
    job_id = wait_for(lambda: record.is_file() and record.read_text().split()[1], f"job in {record}")
    log = record.with_name(f"{job_id}_0_log.out")
    wait_for(lambda: log.is_file() and "Starting with JobEnvironment" in log.read_text(), f"start of job {job_id}")
    return job_id


def submissions(folder: Path) -> int:
    return len(list(folder.glob("*_submitted.pkl")))


def killed_caller(function: str, calls: list[dict], launch_args: dict, **kwargs) -> str:
    """Runs run_stages in a process of its own, kills it once its job runs, returns the job's id."""
    launch_args = launch_args | {"folder": str(launch_args["folder"]), "resources": asdict(launch_args["resources"])}
    caller = subprocess.Popen([sys.executable, "-c", CALLER, json.dumps([[function, calls], launch_args | kwargs])])
    try:
        return running_job(Path(launch_args["folder"]) / f"{launch_args['name']}.job_id")
    finally:
        caller.kill()
        caller.wait()


def live(*ps_selection: str) -> bool:
    """Whether ps selects a live process (the daemons' zombies can linger, as start_cluster.sh says)."""
    states = subprocess.run(["ps", *ps_selection, "-o", "stat="], capture_output=True, text=True).stdout.split()
    return any(not state.startswith("Z") for state in states)


@contextmanager
def controller_down() -> Iterator[None]:
    """slurmctld stopped (SIGTERM: it saves its state), then started again from that state, so that
    it still has its jobs (start_cluster.sh's `slurmctld -c` would forget them, and kill them);
    start_cluster.sh then waits for the node. A slurmctld that another test session started
    meanwhile is left alone: a second one would kill it."""
    pid = int(SLURMCTLD_PID.read_text())
    os.kill(pid, signal.SIGTERM)
    try:
        wait_for(lambda: not live("-p", str(pid)), "end of slurmctld")
        yield
    finally:
        if not live("-C", "slurmctld"):
            subprocess.run(["slurmctld"])
        subprocess.run(["bash", str(START_SCRIPT)], check=True, capture_output=True, timeout=120)


def test_a_waiting_caller_outlives_an_outage_of_slurmctld(slurm_cluster, tmp_path, squeue_answers):
    with ThreadPoolExecutor(1) as pool:
        launch_args = slurm_launch(tmp_path, slurm_cluster, "outage")
        waiting = pool.submit(run_stages, STAGE, [sleep_call(OUTAGE_S + 15)], **launch_args)
        running_job(tmp_path / "outage.job_id")
        with controller_down():
            time.sleep(OUTAGE_S)
        assert waiting.result(timeout=120) == ["slept\n"]
    assert launch.Queued.UNKNOWN in squeue_answers


def test_a_restarted_caller_attaches_while_squeue_fails(slurm_cluster, tmp_path, squeue_answers):
    calls, launch_args = [sleep_call(40)], slurm_launch(tmp_path, slurm_cluster, "restart")
    killed_caller(STAGE, calls, launch_args)
    record = (tmp_path / "restart.job_id").read_text()
    with ThreadPoolExecutor(1) as pool:
        with controller_down():
            restarted = pool.submit(run_stages, STAGE, calls, **launch_args)
            wait_for(lambda: squeue_answers, "squeue answer")  # it decided with the controller down
        assert restarted.result(timeout=120) == ["slept\n"]
    assert submissions(tmp_path) == 1
    assert (tmp_path / "restart.job_id").read_text() == record
    assert squeue_answers[0] is launch.Queued.UNKNOWN


def test_a_restarted_caller_with_other_execution_settings_attaches(slurm_cluster, tmp_path):
    calls, launch_args = [sleep_call(15, then="echo $GREETING")], slurm_launch(tmp_path, slurm_cluster, "settings")
    path = {"PATH": os.environ["PATH"]}
    killed_caller(STAGE, calls, launch_args, execution={"env": path | {"GREETING": "first"}})
    # the job submitted by the first caller, with its settings, is the one that runs
    assert run_stages(STAGE, calls, **launch_args, execution={"env": path | {"GREETING": "second"}}) == ["first\n"]
    assert submissions(tmp_path) == 1


def test_waiting_for_a_short_job_asks_squeue_at_most_once(slurm_cluster, tmp_path, squeue_answers):
    assert run_stages(STAGE, [sleep_call(8)], **slurm_launch(tmp_path, slurm_cluster, "short")) == ["slept\n"]
    assert len(squeue_answers) <= 1


def test_a_task_that_fails_ends_its_job_of_several_tasks_with_one_error(slurm_cluster, tmp_path):
    # task 1 fails at once; task 0 would run for 5 minutes (as a rank waits in a collective)
    call = {"args": ["sh", "-c", 'if [ "$SLURM_PROCID" = 1 ]; then exit 3; fi; sleep 300'], "text": True}
    resources = StageResources(processes_per_node=2, cpus_per_task=1, mem_mb=500, runtime=10, slurm_partition=slurm_cluster)
    started = time.monotonic()
    with pytest.raises(UserError, match=r"job \d+ (failed|ended without a result); its logs: .*/\d+_\*_log.err"):
        run_stages(STAGE, [call], mode="slurm", folder=tmp_path, resources=resources, name="failing")
    assert time.monotonic() - started < 200

"""The launch layer without a cluster: in-process and local processes (SLURM: test_launch_slurm,
test_slurm_pipeline)."""

import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from cleanclip_core.errors import UserError
from cleanclip_core.launch import (
    LEASE_POLL_S,
    SQUEUE_INTERVAL_S,
    VANISHED_GRACE_S,
    Queued,
    StageResources,
    launch_from_snakemake,
    lease_device,
    next_query_at,
    not_listed_since,
    run_stages,
    squeue,
)
from cleanclip_core.results import config_hash
from cleanclip_core.training.finished import FINISHED, PARTIAL, RESUME_STATE

STAGE = "cleanclip_core.results:config_hash"
CALLS = [{"settings": {"lr": 0.001}}, {"settings": {"lr": 0.003}}]


@pytest.mark.parametrize("mode", ["debug", "local"])
def test_a_stage_runs_each_call_and_returns_the_results_in_order(mode, tmp_path):
    results = run_stages(STAGE, CALLS, mode=mode, folder=tmp_path, resources=StageResources(cpus_per_task=1), name="hash")
    assert results == [config_hash(call["settings"]) for call in CALLS]


def test_a_job_of_two_processes_joins_one_group_and_answers_rank_0s_result(tmp_path):
    resources = StageResources(cpus_per_task=1, processes_per_node=2)
    ranks = run_stages("torch.distributed:get_rank", [{}], mode="local", folder=tmp_path, resources=resources, name="rank")
    sizes = run_stages("torch.distributed:get_world_size", [{}], mode="local", folder=tmp_path, resources=resources, name="size")
    assert (ranks, sizes) == ([0], [2])


def test_resources_come_from_a_mapping_and_default_the_rest():
    resources = StageResources.from_mapping({"gpus_per_node": 4, "mem_mb": 1000, "_cores": 1, "tmpdir": "/tmp"})
    assert (resources.gpus_per_node, resources.tasks_per_node, resources.mem_mb, resources.nodes) == (4, 4, 1000, 1)


def test_an_unknown_mode_or_a_failing_stage_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="launch mode 'cloud' is not one of debug, local, slurm"):
        run_stages(STAGE, CALLS, mode="cloud", folder=tmp_path, resources=StageResources(), name="hash")
    with pytest.raises(UserError, match=r"job .* failed; its logs: .*_\*_log.err"):
        run_stages(STAGE, [{"wrong": 1}], mode="local", folder=tmp_path, resources=StageResources(), name="bad")


def test_squeue_that_cannot_run_is_an_unknown_answer_not_a_vanished_job(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert squeue("12345") is Queued.UNKNOWN


def test_squeue_is_asked_every_30_to_45_s_with_jitter():
    assert SQUEUE_INTERVAL_S == (30.0, 45.0)
    times = [next_query_at(100.0) for _ in range(200)]
    assert all(130.0 <= at <= 145.0 for at in times)
    assert max(times) - min(times) > 5  # spread, not one fixed interval


def vanished_at(answers: list[tuple[float, Queued]]) -> float | None:
    """When _wait would declare the job vanished, given squeue's answers at their times."""
    since = None
    for now, answer in answers:
        since = not_listed_since(since, answer, now)
        if answer is Queued.NO and now - since >= VANISHED_GRACE_S:
            return now
    return None


def test_a_job_vanished_after_two_answers_without_it_and_unknown_answers_do_not_count():
    yes, no, unknown = Queued.YES, Queued.NO, Queued.UNKNOWN
    assert vanished_at([(0, no), (35, no)]) == 35
    assert vanished_at([(0, no), (35, yes), (70, no)]) is None  # listed again (requeued)
    assert vanished_at([(0, unknown), (35, unknown), (70, unknown), (105, unknown)]) is None
    assert vanished_at([(0, unknown), (35, no), (70, unknown), (105, no)]) == 105
    # one answer never decides: the grace fits in one query interval
    assert VANISHED_GRACE_S <= SQUEUE_INTERVAL_S[0]


@pytest.mark.parametrize("mode", ["debug", "local"])
def test_execution_settings_reach_the_stage_but_not_the_digest(mode, tmp_path):
    launch = {"mode": mode, "folder": tmp_path, "resources": StageResources(cpus_per_task=1), "name": "dict"}
    calls = [{"settings": 1}, {"settings": 2}]
    results = run_stages("builtins:dict", calls, **launch, execution={"num_workers": 4})
    assert results == [{"settings": 1, "num_workers": 4}, {"settings": 2, "num_workers": 4}]
    if mode == "local":  # the digest is the record's first word
        record = tmp_path / "dict.job_id"
        digest = record.read_text().split()[0]
        assert run_stages("builtins:dict", calls[:1], **launch, execution={"num_workers": 8})[0]["num_workers"] == 8
        assert record.read_text().split()[0] != digest  # the digest is that of the calls...
        run_stages("builtins:dict", calls, **launch, execution={"num_workers": 8})
        assert record.read_text().split()[0] == digest  # ... only


def test_a_setting_both_in_a_call_and_in_execution_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="num_workers: set both in a stage's call and in its execution settings"):
        run_stages("builtins:dict", [{"num_workers": 1}], mode="debug", folder=tmp_path,
                   resources=StageResources(), name="dict", execution={"num_workers": 4})


def test_concurrent_leases_get_different_devices_and_a_released_one_is_reused(tmp_path):
    devices = ["0", "1", "2"]
    with lease_device(devices, tmp_path) as first, lease_device(devices, tmp_path) as second:
        assert (first, second) == (0, 1)
        with lease_device(devices, tmp_path) as third:
            assert third == 2
    with lease_device(devices, tmp_path) as again:
        assert again == 0


def test_a_lease_waits_while_every_device_is_held(tmp_path):
    devices = ["GPU-aaaa", "MIG-GPU-bbbb/1/0"]

    def leased_index() -> int:
        with lease_device(devices, tmp_path) as index:
            return index

    with ThreadPoolExecutor(1) as pool:
        with lease_device(devices, tmp_path), lease_device(devices, tmp_path):
            waiting = pool.submit(leased_index)
            time.sleep(3 * LEASE_POLL_S)
            assert not waiting.done()
        assert waiting.result(timeout=10 * LEASE_POLL_S) == 0


def test_a_local_one_gpu_stage_sees_the_callers_gpus_to_lease_one(tmp_path, monkeypatch):
    launch = {"mode": "local", "folder": tmp_path, "resources": StageResources(gpus_per_node=1, cpus_per_task=1)}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    getenv = [{"key": "CUDA_VISIBLE_DEVICES"}]
    assert run_stages("os:getenv", getenv, **launch, name="shown") == ["2,3"]  # submitit would show "0"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert run_stages("os:getenv", getenv, **launch, name="all") == [None]


def test_a_snakemake_job_releases_the_finished_runs_whose_outputs_it_reads(tmp_path):
    """Snakemake took those outputs before it started the job; a run in progress keeps its state."""
    finished_run, running = tmp_path / "finished", tmp_path / "running"
    for run, state in ((finished_run, FINISHED), (running, RESUME_STATE)):
        (run / PARTIAL).mkdir(parents=True)
        (run / PARTIAL / state).touch()
        (run / "model.pt").touch()
    job = SimpleNamespace(rule="evaluate", wildcards=[], resources={}, input=[str(finished_run / "model.pt"), str(running / "model.pt")])
    assert launch_from_snakemake(job)["name"] == "evaluate"
    assert not (finished_run / PARTIAL).exists()
    assert (running / PARTIAL / RESUME_STATE).is_file()

"""The pipeline on a real SLURM cluster of two nodes: the smoke study through profiles/slurm, a
requeued training job, a training job on both nodes, Snakemake killed or interrupted while a job
runs."""

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from cleanclip_core.launch import Queued, StageResources, run_stages, squeue
from cleanclip_core.results import query
from cleanclip_core.training.finished import PARTIAL
from slurm.fixture import slurm_cluster  # noqa: F401  (pytest fixture)
from workflow import ROOT, attack_folder

SMOKE = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())
# One attack, method and cleaning set of the smoke study: the grid's breadth is tested locally
# (test_study.py); here every kind of stage runs as a SLURM job.
SMOKE["study"] |= {"attacks": ["badnet"], "clean_methods": ["cleanclip"], "cleaning_poisons": [0], "seeds": [0], "detectors": ["dao"]}
DATABASE = "results/studies/smoke/results.duckdb"
GPU_STAGES = ("pretrain", "clean", "evaluate_pretrained", "evaluate_cleaned", "embed_training")
# profiles/slurm asks for GPUs; the test cluster has 2 CPUs and no GPU.
TEST_NODE_RESOURCES = {"gpus_per_node": 0, "cpus_per_task": 1, "mem_mb": 2000, "runtime": 30}
TRAINING = "cleanclip_core.training.loop:run_training"


def slurm_snakemake(workdir: Path, partition: str, config: dict = SMOKE, *args: str, pretrain_processes: int = 1) -> subprocess.Popen:
    """Snakemake with profiles/slurm on the smoke config, its stages sized for the test node, the
    pretraining in `pretrain_processes` processes."""
    config_file = workdir / "smoke.yaml"
    config_file.write_text(yaml.safe_dump(config))
    set_resources = [f"{stage}:{key}={value}" for stage in GPU_STAGES for key, value in TEST_NODE_RESOURCES.items()]
    set_resources.append(f"pretrain:processes_per_node={pretrain_processes}")
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
        "--profile", str(ROOT / "profiles/slurm"), "--directory", str(workdir),
        "--configfile", str(config_file), "--cores", "4",
        "--default-resources", "launcher='slurm'", f"slurm_partition='{partition}'",
        "--set-resources", *set_resources, *args,
    ]
    # A session of its own: a test can kill Snakemake with all its job processes. SIGINT's
    # default action: a background job of a non-interactive shell (CI's) ignores SIGINT.
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def finished(process: subprocess.Popen, timeout_s: float = 600) -> str:
    _, stderr = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, stderr[-4000:]
    return stderr


def slurm_job_ids(workdir: Path, stage: str) -> list[str]:
    """The SLURM jobs the launch layer submitted for a stage's Snakemake jobs (after each
    record's digest of the calls)."""
    records = (workdir / "results/launch" / stage).glob("*.job_id")
    return sorted(record.read_text().split(maxsplit=1)[1] for record in records)


def test_smoke_study_runs_its_training_and_evaluation_as_slurm_jobs(slurm_cluster, tmp_path):
    finished(slurm_snakemake(tmp_path, slurm_cluster))
    runs = len(SMOKE["study"]["pretrain_objectives"]) * len(SMOKE["clean"]["lrs"])
    expected_jobs = {"pretrain": 2, "clean": runs, "evaluate_pretrained": 2, "evaluate_cleaned": runs, "embed_training": 2}
    for stage, count in expected_jobs.items():
        job_ids = slurm_job_ids(tmp_path, stage)
        assert len(job_ids) == count, (stage, job_ids)
        assert all(job_id.split()[0].split("_")[0].isdigit() for job_id in job_ids)
    # the epochs of a cleaning run are one job, not an array: it reads the images once for all of them
    assert all(len(job_ids.split()) == 1 for job_ids in slurm_job_ids(tmp_path, "evaluate_cleaned"))
    wide = query(tmp_path / DATABASE, "SELECT * FROM metrics_wide").to_pandas()
    assert len(wide) == 2 + runs * SMOKE["clean"]["epochs"]
    assert (tmp_path / "results/figures/fig2.pdf").is_file()


def training_call(tmp_path: Path, smoke_data: Path, epochs: int) -> dict:
    """A pretraining on the smoke corpus, as the pretrain rule calls it; tiny-vit: a ResNet's batch
    norms cannot be synchronized across CPU processes."""
    settings = {
        "model": "tiny-vit", "objective": {"mmcl": 1.0, "inmodal": 1.0}, "epochs": epochs, "batch_size": 20,
        "lr": 1e-3, "warmup_steps": 1, "weight_decay": 0.1, "seed": 0, "synonyms": "corpus",
    }
    results = smoke_data / "results/smoke"
    return {
        "settings": settings,
        "data": {
            "manifest": str(smoke_data / attack_folder(SMOKE, "badnet") / "poisoned_manifest.parquet"),
            "shard_index": str(results / "shard_index.parquet"),
            "shards_dir": str(results / "shards"),
            "attack": SMOKE["attacks"]["badnet"] | {"seed": 0},
        },
        "out_dir": str(tmp_path / "run"),
        "num_workers": 0,
    }


def torchrun_training(call: dict) -> None:
    """The training stage in two local processes, through torchrun."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "cleanclip_core.launch"]
    subprocess.run([*torchrun, TRAINING, json.dumps(call)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory) -> Path:
    """The smoke corpus downloaded and poisoned (run locally)."""
    workdir = tmp_path_factory.mktemp("smoke_data")
    (workdir / "smoke.yaml").write_text(yaml.safe_dump(SMOKE))
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(workdir / "smoke.yaml"), "--cores", "2", f"{attack_folder(SMOKE, 'badnet')}/poisoned_manifest.parquet"],
        check=True, capture_output=True,
    )
    return workdir


def test_a_requeued_two_task_training_job_resumes_and_ends_as_an_uninterrupted_torchrun_run(slurm_cluster, smoke_data, tmp_path):
    epochs = 30  # about 30 s: the requeue lands in the middle
    torchrun_training(training_call(tmp_path / "straight", smoke_data, epochs))

    requeued = training_call(tmp_path / "requeued", smoke_data, epochs)
    resources = StageResources(processes_per_node=2, cpus_per_task=1, mem_mb=2000, runtime=30, slurm_partition=slurm_cluster)
    launch = {"mode": "slurm", "folder": tmp_path / "launch", "resources": resources, "name": "requeued"}
    started = time.monotonic()
    waiting = threading.Thread(target=run_stages, args=(TRAINING, [requeued]), kwargs=launch)
    waiting.start()
    resume_state = tmp_path / "requeued/run/partial/resume.pt"
    deadline = time.monotonic() + 180
    while not resume_state.exists():
        assert time.monotonic() < deadline, "the training job wrote no checkpoint in 180 s"
        time.sleep(0.2)
    job_id = (tmp_path / "launch/requeued.job_id").read_text().split()[1]
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    waiting.join(timeout=400)
    assert not waiting.is_alive()
    print(f"2-task SLURM training of {epochs} epochs, requeued once: {time.monotonic() - started:.0f} s")

    expected = torch.load(tmp_path / "straight/run/model.pt", weights_only=True)["state_dict"]
    actual = torch.load(tmp_path / "requeued/run/model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    log = pq.read_table(tmp_path / "requeued/run/train_log.parquet").to_pandas()
    assert log.step.is_unique and log.step.tolist() == sorted(log.step)
    job_output = "".join(path.read_text() for path in (tmp_path / "launch").glob(f"{job_id}_*_log.*"))
    assert "resuming" in job_output and "after epoch" in job_output
    assert (tmp_path / "launch" / f"{job_id}_1_log.out").is_file(), "the job's second task did not run"


def test_a_two_node_training_job_ends_as_a_torchrun_run_of_two_processes(slurm_cluster, smoke_data, tmp_path):
    epochs = 3
    torchrun_training(training_call(tmp_path / "local", smoke_data, epochs))
    resources = StageResources(nodes=2, processes_per_node=1, cpus_per_task=1, mem_mb=2000, runtime=30, slurm_partition=slurm_cluster)
    launch = {"mode": "slurm", "folder": tmp_path / "launch", "resources": resources, "name": "two_nodes"}
    run_stages(TRAINING, [training_call(tmp_path / "two_nodes", smoke_data, epochs)], **launch)

    job_id = (tmp_path / "launch/two_nodes.job_id").read_text().split()[1]
    job_output = "".join(path.read_text() for path in (tmp_path / "launch").glob(f"{job_id}_*_log.*"))
    assert "node=0(2)" in job_output and "node=1(2)" in job_output, job_output[-3000:]
    assert (tmp_path / "two_nodes/run/model.pt").read_bytes() == (tmp_path / "local/run/model.pt").read_bytes()


def test_killing_snakemake_while_a_job_runs_then_rerunning_finishes_cleanly(slurm_cluster, tmp_path):
    config = copy.deepcopy(SMOKE)
    config["pretrain"]["epochs"] = 40  # still running when Snakemake is started again
    config["study"]["model"] = "tiny-vit"  # whose pretraining runs in two processes on CPUs
    first = slurm_snakemake(tmp_path, slurm_cluster, config, pretrain_processes=2)
    deadline = time.monotonic() + 300
    while len(slurm_job_ids(tmp_path, "pretrain")) < 2:
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no pretraining jobs submitted in 300 s"
        time.sleep(0.5)
    submitted = slurm_job_ids(tmp_path, "pretrain")
    os.killpg(first.pid, signal.SIGKILL)  # as a lost login session: Snakemake and its jobs die
    first.communicate(timeout=60)

    finished(slurm_snakemake(tmp_path, slurm_cluster, config, "--unlock"))
    finished(slurm_snakemake(tmp_path, slurm_cluster, config, pretrain_processes=2))
    assert slurm_job_ids(tmp_path, "pretrain") == submitted, "the rerun submitted the running jobs again"
    leftovers = [p for p in (tmp_path / "results").rglob("*") if p.name.endswith(".tmp") or p.name == "partial"]
    assert leftovers == []
    wide = query(tmp_path / DATABASE, "SELECT * FROM metrics_wide").to_pandas()
    assert not wide.duplicated(["run_id", "epoch"]).any()


def one_pretraining(epochs: int) -> dict:
    """The smoke config narrowed to one pretraining (MMCL) of `epochs` epochs."""
    config = copy.deepcopy(SMOKE)
    config["study"]["pretrain_objectives"] = ["mmcl"]
    config["pretrain"]["epochs"] = epochs
    return config


@pytest.fixture
def prepared(smoke_data, tmp_path) -> Path:
    """A working directory holding the smoke corpus downloaded and poisoned, with Snakemake's
    records of it: the pipeline starts at the pretraining."""
    shutil.copytree(smoke_data, tmp_path, dirs_exist_ok=True, symlinks=True)
    return tmp_path


def pretraining_job(workdir: Path) -> str:
    """The SLURM job last submitted for the pretraining, once there is one."""
    deadline = time.monotonic() + 120
    while not (records := slurm_job_ids(workdir, "pretrain")):
        assert time.monotonic() < deadline, "no pretraining job submitted in 120 s"
        time.sleep(0.2)
    return records[0].split()[0]


def ended(job_id: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while squeue(job_id) is not Queued.NO:
        assert time.monotonic() < deadline, f"SLURM job {job_id} still queued or running after {timeout_s} s"
        time.sleep(0.5)


def run_outputs(workdir: Path) -> dict[str, bytes]:
    """The pretraining run's files (its folder relative to the working directory) and their bytes."""
    (step_log,) = [path for path in (workdir / "results/runs").rglob("train_log.parquet") if path.parent.name != PARTIAL]
    return {str(path.relative_to(workdir)): path.read_bytes() for path in step_log.parent.glob("*.*")}


def trained_epochs(workdir: Path, job_id: str) -> list[str]:
    """The epoch lines in the logs of a SLURM job of the pretraining."""
    logs = "".join(path.read_text() for path in (workdir / "results/launch/pretrain").glob(f"{job_id}_*_log.*"))
    return re.findall(r"epoch \d+/\d+ \(.*", logs)


def test_a_pretraining_that_finished_while_snakemake_was_dead_is_not_trained_again(slurm_cluster, prepared):
    config = one_pretraining(epochs=2)
    first = slurm_snakemake(prepared, slurm_cluster, config, "--until", "pretrain")
    job_id = pretraining_job(prepared)
    os.killpg(first.pid, signal.SIGKILL)  # as a lost login session: Snakemake and its jobs die
    first.communicate(timeout=60)
    ended(job_id)
    published = run_outputs(prepared)

    finished(slurm_snakemake(prepared, slurm_cluster, config, "--unlock"))
    finished(slurm_snakemake(prepared, slurm_cluster, config, "--until", "pretrain"))
    rerun = pretraining_job(prepared)
    assert trained_epochs(prepared, rerun) == [], "the rerun trained the finished run again"
    assert run_outputs(prepared) == published


def test_a_pretraining_that_finished_after_snakemake_was_interrupted_is_not_trained_again(slurm_cluster, prepared):
    config = one_pretraining(epochs=2)
    first = slurm_snakemake(prepared, slurm_cluster, config, "--until", "pretrain")
    job_id = pretraining_job(prepared)
    os.kill(first.pid, signal.SIGINT)  # Snakemake alone: it waits for the job, then marks its outputs incomplete
    _, stderr = first.communicate(timeout=300)
    assert first.returncode != 0 and "Terminating processes on user request" in stderr, stderr[-3000:]
    assert trained_epochs(prepared, job_id), "the job did not train"
    published = run_outputs(prepared)

    finished(slurm_snakemake(prepared, slurm_cluster, config, "--until", "pretrain"))
    rerun = pretraining_job(prepared)
    assert trained_epochs(prepared, rerun) == [], "the rerun trained the finished run again"
    assert run_outputs(prepared) == published

"""The GPU check (`make gpu-check`, benchmarks/gpu_check.py) runs its code on the CPU with the tiny
models (`--device cpu --tiny`), and without a GPU says so in one line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPOSITORY = Path(__file__).resolve().parents[1]


def gpu_check(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "benchmarks.gpu_check", *arguments]
    # One thread a process: on a shared 2-core machine, torch's spinning threads made a tiny step 100x slower.
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=600)


def table(stdout: str) -> dict[tuple[str, ...], list[str]]:
    """The markdown table's rows by (check, model, batch, measure): [ours, reference, ratio]."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    assert sum(line.startswith("| check |") for line in lines) == 1, stdout
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    return {tuple(row[:4]): row[4:] for row in rows}


def test_the_tiny_check_on_the_cpu_prints_one_table_with_every_check():
    result = gpu_check("--device", "cpu", "--tiny", "--batch-sizes", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table(result.stdout)
    for model in ("tiny-rn-w16", "tiny-vit"):
        for check in ("training, MMCL", "training, MMCL+SSL vs MMCL"):
            ours, reference, ratio = rows[check, model, "8", "step time (ms)"]
            assert float(ours) > 0 and float(reference) > 0
            assert float(ratio) == pytest.approx(float(ours) / float(reference), rel=0.05)
            assert rows[check, model, "8", "peak memory (GiB)"] == ["–", "–", ""]  # a CPU has no such counter
        ours, reference, ratio = rows["zero-shot evaluation", model, "16", "images/s"]
        assert float(ours.replace(",", "")) > 0 and float(reference.replace(",", "")) > 0
    assert rows["DDP gloo, 2 processes vs 1", "tiny-rn-w16", "–", "–"][0] == "skipped: gloo cannot synchronize batch norms"
    for objective in ("MMCL", "MMCL+SSL"):
        check = f"DDP gloo, 2 processes vs 1, {objective}"
        loss, _, _ = rows[check, "tiny-vit", "8 (2 x 4)", "loss, relative difference"]
        gradients, _, _ = rows[check, "tiny-vit", "8 (2 x 4)", "gradients, relative L2 distance"]
        assert float(loss) < 1e-6 and float(gradients) < 1e-5


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_without_a_gpu_the_check_says_so_in_one_line():
    result = gpu_check()
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "gpu check: no CUDA GPU is visible to torch here; on a CPU, `--device cpu --tiny` runs its code on tiny models"
    ]

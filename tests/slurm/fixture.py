"""Session fixture for tests that need a real SLURM cluster of two nodes (see start_cluster.sh)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

START_SCRIPT = Path(__file__).with_name("start_cluster.sh")
PARTITION = "debug"


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Starts the two-node cluster (installing SLURM if needed) and returns its partition."""
    if os.geteuid() != 0 and shutil.which("sinfo") is None:
        pytest.skip("SLURM is not installed and installing it needs root")
    run = subprocess.run(["bash", str(START_SCRIPT)], capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        pytest.fail(f"{START_SCRIPT.name} failed ({run.returncode}):\n{run.stdout}{run.stderr}")
    return PARTITION

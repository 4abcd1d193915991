"""Checkpoints written on a disk that fills up."""

import subprocess
import sys


def test_a_checkpoint_saved_on_a_full_disk_is_one_line_naming_it_and_leaves_no_file(small_disk, tmp_path):
    path, log = small_disk / "model.pt", tmp_path / "stage.log"
    stage = (
        "import torch\n"
        "from cleanclip_core.reporting import reported_step\n"
        "from cleanclip_core.training.checkpoints import save_weights\n"
        f"with reported_step({str(log)!r}):\n"
        f"    save_weights({str(path)!r}, torch.nn.Linear(256, 256))\n"  # 257 KiB on a 32 KiB disk
    )
    result = subprocess.run([sys.executable, "-c", stage], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {path}: no space left on device (traceback in {log})"
    assert "OSError: [Errno 28] No space left on device" in log.read_text()
    assert list(small_disk.iterdir()) == []  # nothing half-written

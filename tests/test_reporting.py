"""A stage's failure: one line on stderr and exit status 1, its traceback in the stage's log."""

import re
import subprocess
import sys


def run_stage(body: str, log) -> subprocess.CompletedProcess:
    stage = (
        "from cleanclip_core.reporting import reported_step\n"
        "from cleanclip_core.tables import atomic_output\n"
        f"with reported_step({str(log)!r}):\n"
        f"    {body}\n"
    )
    return subprocess.run([sys.executable, "-c", stage], capture_output=True, text=True, timeout=120)


def failure(result: subprocess.CompletedProcess, log) -> str:
    """The one line a failed stage printed, after checking that its log holds the traceback."""
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback (most recent call last)" in log.read_text()
    return result.stderr.strip()


def test_a_full_disk_names_the_output_being_written(tmp_path):
    # /dev/full fails every write with ENOSPC, as a full disk does: the error names no file
    body = f"with atomic_output({str(tmp_path / 'table.parquet')!r}), open('/dev/full', 'wb') as file: file.write(bytes(1 << 16)); file.flush()"
    line = failure(run_stage(body, tmp_path / "stage.log"), tmp_path / "stage.log")
    assert line == f"error: {tmp_path / 'table.parquet'}: no space left on device (traceback in {tmp_path / 'stage.log'})"
    assert list(tmp_path.iterdir()) == [tmp_path / "stage.log"]  # nothing half-written


def test_a_folder_that_cannot_be_written_is_named_with_the_cause(tmp_path):
    # /sys refuses new files even to root (which chmod would not stop)
    body = "with atomic_output('/sys/cleanclip/table.parquet') as temporary: temporary.write_bytes(b'rows')"
    line = failure(run_stage(body, tmp_path / "stage.log"), tmp_path / "stage.log")
    assert re.fullmatch(r"error: /sys/cleanclip: (permission denied|operation not permitted|read-only file system) \(traceback in .*\)", line)


def test_an_unexpected_failure_is_its_type_and_first_line(tmp_path):
    line = failure(run_stage("{}['epochs']", tmp_path / "stage.log"), tmp_path / "stage.log")
    assert line == f"error: KeyError: 'epochs' (traceback in {tmp_path / 'stage.log'})"
    assert "KeyError: 'epochs'" in (tmp_path / "stage.log").read_text()


def test_without_a_log_file_the_traceback_goes_to_stderr():
    result = subprocess.run(
        [sys.executable, "-c", "from cleanclip_core.reporting import reported_step\nwith reported_step():\n    {}['x']"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and "Traceback" in result.stderr and "error: KeyError: 'x'" in result.stderr


def test_progress_has_the_time_of_day_and_open_clips_lookups_are_left_out(tmp_path):
    body = ("import logging, open_clip; open_clip.get_tokenizer('RN50'); logging.getLogger('cleanclip').info('epoch 1/2'); "
            "logging.getLogger('cleanclip').warning('warning: slow')")
    result = run_stage(body, tmp_path / "stage.log")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and re.fullmatch(r"\d\d:\d\d:\d\d epoch 1/2", lines[0]) and lines[1] == "warning: slow"
    assert "tokenizer" not in (tmp_path / "stage.log").read_text()

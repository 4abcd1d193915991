"""What a checkpoint file is, told from its first bytes without torch: the causes of a file that
is not one, named before any stage reads it."""

import zipfile
from pathlib import Path

HEAD_BYTES = 1024


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` is not a torch checkpoint (the zip archive torch.save writes), or None."""
    path = Path(path)
    if path.stat().st_size == 0:
        return f"{path} is empty: an interrupted download or copy?"
    with open(path, "rb") as file:
        head = file.read(HEAD_BYTES)
    if head.startswith(b"version https://git-lfs"):
        return f"{path} is a Git LFS pointer, not the checkpoint: run `git lfs pull`"
    if b"<html" in head.lower() or head.lstrip().lower().startswith(b"<!doctype html"):
        return f"{path} is an HTML page, not a checkpoint: a failed download of a web link?"
    if not zipfile.is_zipfile(path):
        return f"{path} is not a torch checkpoint (torch.save's zip archive): a truncated or other file?"
    return None

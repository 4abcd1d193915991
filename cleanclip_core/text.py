"""Text files a user gives (class names, labels): UTF-8, with or without a BOM."""

from pathlib import Path

from cleanclip_core.errors import UserError


def read_utf8(path: Path, what: str) -> str:
    """The file's text; a file in another encoding is a UserError naming its first bad line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text; save the {what} as UTF-8") from None

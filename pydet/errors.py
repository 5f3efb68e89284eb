"""The error a user's own input causes: a missing, unreadable or malformed file. The CLI prints it as one
line naming the file; the library raises it as a ``ValueError`` subclass."""
from __future__ import annotations

import os
from pathlib import Path


class InputError(ValueError):
    """An input file that is missing, unreadable or malformed; the message names the file."""


def require_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or an ``InputError`` saying why it is not a readable file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    return path

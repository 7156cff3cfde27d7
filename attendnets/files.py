"""Small file helpers that import nothing else of the package: atomic writes.

Every file the library writes goes through :func:`atomic_write` (a temporary file in the same folder, then
``os.replace``), so a process killed mid-write leaves the previous file intact and no half-written one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temp_path)`` on a temporary file next to ``path``, then move it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def as_json_data(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), to compare with what a file holds."""
    return json.loads(json.dumps(obj))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """``data`` as indented JSON with a final newline."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")

"""Small file helpers that import nothing of the package but its error type: atomic writes, output checks,
staged folders.

Every file the library writes goes through :func:`atomic_write` (a temporary file in the same folder, then
``os.replace``), so a process killed mid-write leaves the previous file intact and no half-written one. The
file gets the mode ``open()`` would give it (``0o666`` less the umask).

:func:`check_writable` refuses, before any work, an output that cannot be written (a file in the way, no
permission); :func:`staged_folder` fills a folder all at once or not at all; :func:`held_folder` keeps a
second process from writing into a folder one is writing into.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attendnets.errors import AttendNetsError


def _hidden_sibling(path: Path, suffix: str) -> Path:
    """A new name beside ``path`` that no one else uses: ``.NAME.<random>.SUFFIX``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.{suffix}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temp_path)`` on a temporary file next to ``path``, then move it into place."""
    path = Path(path)
    tmp = _hidden_sibling(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask, as for open()
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        write(str(tmp))
        os.chmod(tmp, mode)  # a writer may have put its own file there (safetensors does, mode 0600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def as_json_data(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), to compare with what a file holds."""
    return json.loads(json.dumps(obj))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """``data`` as indented JSON with a final newline."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def check_writable(path: str | os.PathLike, option: str, is_file: bool = False) -> None:
    """Refuse in one line, before any work, an output ``path`` (a folder, or a file with ``is_file``) that
    cannot be written: a file where a folder must be, or a folder it may not write in. ``option`` names it."""
    path = Path(path)
    if is_file:
        if path.is_dir():
            raise AttendNetsError(f"{option} {path} is a folder; give a file name")
        path = path.parent
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path.absolute() else f"would be under the file {existing}"
        raise AttendNetsError(f"{option} {path} {where}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AttendNetsError(f"{option} {path}: no permission to write in {existing}")


@contextmanager
def staged_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A new hidden folder beside ``target`` to write into. When the block succeeds its files move into
    ``target`` (created if missing; a file of the same name is replaced); when it fails, the staging folder and
    any parent folder made for it are removed: ``target`` ends complete or as it was."""
    target = Path(target)
    missing = [p for p in reversed(target.absolute().parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _hidden_sibling(target, "staging")
    try:
        staging.mkdir()
        yield staging
        if target.exists():
            for item in staging.iterdir():
                os.replace(item, target / item.name)
            staging.rmdir()
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(missing):
            try:
                folder.rmdir()
            except OSError:
                break
        raise


@contextmanager
def held_folder(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (made if missing) for the block, or refuse in one line when another
    process holds it: two trainings resuming the same run would overwrite each other's checkpoints. The
    kernel drops the lock when the process ends, however it ends. Without ``fcntl`` (Windows) nothing is held."""
    if sys.platform == "win32":
        yield
        return
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AttendNetsError(f"{folder} is in use by another process ({what} still running?); wait for it to "
                                  "end, or choose another folder") from None
        yield
    finally:
        os.close(fd)

"""A throwaway PostgreSQL server for the test session (:func:`running_server`); the fixtures built on it,
``postgres_server`` and ``postgres_url`` (a fresh database in it for each test), are in ``tests/conftest.py``.

The server runs from a temporary folder on a free loopback port with ``fsync`` off, and is stopped and
removed at the end. PostgreSQL refuses to run as root, so under root it runs as the ``postgres`` user
(or ``nobody``). Tests skip, saying why, where the server binaries or the ``psycopg`` driver are missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "postgres"


def find_server_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, or Debian's ``/usr/lib/postgresql/<ver>/bin``
    (newest version first)."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(os.path.realpath(on_path)).parent
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p)],
        reverse=True,
    )
    for pg_ctl in debian:
        folder = Path(pg_ctl).parent
        if (folder / "initdb").exists():
            return folder
    return None


def _unprivileged_user() -> pwd.struct_passwd | None:
    """Who runs the server: the current user, or under root the ``postgres`` user, else ``nobody``."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server on ``127.0.0.1:port`` that trusts local connections as ``postgres``."""

    port: int
    folder: Path

    def url(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` (psycopg 3 driver), as Optuna's ``storage`` accepts it."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _run_as(user: pwd.struct_passwd, cmd: list[str], folder: Path) -> None:
    """Run a server command as ``user`` (switching only when we are root); raise with its output on failure."""
    switch = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if os.geteuid() == 0 else {}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder), "LC_ALL": "C"}
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=120, **switch)
    if done.returncode != 0:
        log = folder / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}")


@contextmanager
def running_server() -> Iterator[PostgresServer]:
    """Start a PostgreSQL server, yield it, stop and remove it; skip with the reason when it cannot run here
    (the ``postgres_server`` fixture of ``tests/conftest.py``)."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is not installed: pip install 'attendnets[distributed]'")
    bin_dir = find_server_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin; "
            "install them (Debian: apt-get install postgresql), as .ci/run does"
        )
    user = _unprivileged_user()
    if user is None:
        pytest.skip("running as root with no 'postgres' or 'nobody' user to run PostgreSQL as (it refuses root)")
    folder = Path(tempfile.mkdtemp(prefix="attendnets-pg-"))
    os.chown(folder, user.pw_uid, user.pw_gid)
    data = folder / "data"
    server = PostgresServer(port=_free_port(), folder=folder)
    options = f"-p {server.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    try:
        _run_as(user, [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust", "--no-locale",
                       "-E", "UTF8"], folder)
        _run_as(user, [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", options,
                       "-w", "-t", "60", "start"], folder)
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            _run_as(user, [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], folder)
        shutil.rmtree(folder, ignore_errors=True)

"""Where a study lives: an Optuna storage (a journal file in the study folder by default, or a database URL
shared by several workers), and the bookkeeping that makes a killed run resumable.

A study ``NAME`` is one Optuna study per rung (``NAME/rung0``, ``NAME/rung1``, ...) in one storage. Its
folder (``OUTPUT/NAME``) holds ``study.json`` (how to find the storage again), the journal file when no URL
is given, the cached training data, one folder per trained trial and the report.

Trials left RUNNING by a process that died are failed so that they are run again: on this machine by
checking the worker's process id (recorded on every trial), elsewhere by the database's heartbeat.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from attendnets.errors import AttendNetsError
from attendnets.files import atomic_write_json

JOURNAL_FILE = "study.journal"
STUDY_FILE = "study.json"
HEARTBEAT_S = 20
GRACE_S = 60
CREATE_TRIES = 3  # workers started together race to create the tables; the losers retry
WORKER_ATTR = "worker"


def worker_id() -> str:
    """``host:pid`` of this process, recorded on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def redact(url: str) -> str:
    """A database URL without its password, for messages and ``study.json``."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is shown as given, it holds no recognisable password
        return url


def open_storage(study_dir: Path, url: str | None = None) -> BaseStorage:
    """The journal file in ``study_dir``, or the database at ``url`` (PostgreSQL, MySQL, SQLite URLs as
    SQLAlchemy spells them, e.g. ``postgresql+psycopg://user:pass@host/db``); one-line error when the
    database cannot be reached."""
    if url is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(study_dir / JOURNAL_FILE)))
    attempt = 0
    while True:
        attempt += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat
                return RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=HEARTBEAT_S,
                                  grace_period=GRACE_S)
        except Exception as err:  # SQLAlchemy and the drivers raise many types; the user needs one line
            if attempt < CREATE_TRIES and "already exists" in str(err):  # a worker started at the same time
                time.sleep(1.0)  # is creating the tables: they will be there in a moment
                continue
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise AttendNetsError(f"cannot open storage {redact(url)}: {reason}") from None


def first_missing(folder: Path) -> Path | None:
    """The outermost folder of ``folder``'s path that does not exist yet (what a run would create), or None."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists():
            return missing
        missing = path
    return missing


def write_study_file(study_dir: Path, name: str, url: str | None) -> None:
    """Record in the study folder where its storage is, for ``attendnets explore report``."""
    study_dir.mkdir(parents=True, exist_ok=True)
    data = {"name": name, "storage": redact(url) if url else None}
    atomic_write_json(study_dir / STUDY_FILE, data)


def read_study_file(study_dir: Path) -> dict[str, Any]:
    path = study_dir / STUDY_FILE
    if not path.is_file():
        raise AttendNetsError(f"{study_dir} is not a study folder (no {STUDY_FILE}); give the folder 'explore run' made")
    return json.loads(path.read_text())


def rung_name(name: str, rung: int) -> str:
    return f"{name}/rung{rung}"


def study_names(storage: BaseStorage) -> set[str]:
    return {s.study_name for s in storage.get_all_studies()}


def fail_dead_trials(study: optuna.Study) -> int:
    """Fail the RUNNING trials whose worker is gone: a process of this machine that no longer exists, or
    (databases) one whose heartbeat stopped. Returns how many were failed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    now = datetime.datetime.now()
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR)
        if worker is None:  # died between starting the trial and naming itself
            dead = trial.datetime_start is not None and (now - trial.datetime_start).total_seconds() > GRACE_S
        else:
            worker_host, _, pid = worker.rpartition(":")
            dead = worker_host == host and not _alive(int(pid))
        if dead:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            failed += 1
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True

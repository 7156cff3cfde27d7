"""The design search: Optuna studies over a search space, under requirements, by successive halving.

Rung 0 samples designs (the prototype first, as the reference); each design is built and its costs
measured at the deployment size (:mod:`attendnets.search.requirements`). A design the builder refuses, or
one over a cap, is not trained: it is told to the study with top-1 0 and its costs, its constraints set
(``trial.set_constraint``) so that the sampler learns where the feasible region is at no training cost.
Every other design is trained at the rung's fidelity (:mod:`attendnets.search.fidelity`) and told its
top-1 after 8-bit weight quantization (maximised) and the chosen cost (minimised).

When rung ``r`` has its trials, the top ``1/eta`` of its trained designs that meet every cap, ranked by
non-dominated sorting (then top-1), are enqueued in rung ``r+1`` (its own study, same parameter names),
which trains them ``eta`` times longer; the prototype is enqueued at every rung. Each enqueued trial
names its parent, so no design is promoted twice, and a promoted trial that failed is enqueued again.

``--trials`` counts designs *trained* at rung 0: infeasible and repeated designs come on top (they cost
milliseconds to seconds); ``give_up_after`` of them in a row end rung 0, with an error naming the design
closest to the requirements when none met them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState
from tqdm import tqdm

from attendnets.errors import AttendNetsError
from attendnets.files import as_json_data
from attendnets.runtime import torch_threads
from attendnets.search.fidelity import (
    Evaluation,
    Fidelity,
    FidelityData,
    TrialRun,
    prepare_data,
    source_data,
    train_and_evaluate,
)
from attendnets.search.requirements import (
    LATENCY,
    Deployment,
    Requirements,
    accuracy_constraint,
    cap_constraints,
    check_runtime,
    format_cost,
    measure_costs,
)
from attendnets.search.settings import COSTS, SAMPLERS
from attendnets.search.space import SearchSpace, load_space
from attendnets.search.storage import (
    WORKER_ATTR,
    fail_dead_trials,
    first_missing,
    open_storage,
    redact,
    rung_name,
    study_names,
    worker_id,
    write_study_file,
)
from attendnets.search.trials import (
    PROTOTYPE,
    SCORED,
    STATUS,
    TrialStatus,
    is_feasible,
    meets_caps,
    non_dominated_ranks,
    pareto_front,
    status_of,
    was_scored,
)
from attendnets.spec import SpecError

log = logging.getLogger(__name__)

POLL_S = 5.0  # how often to look at other workers' running trials

Evaluator = Callable[..., Evaluation]  # (spec, TrialRun) -> Evaluation


@dataclass
class ExploreConfig:
    """Everything that defines a search; see ``attendnets explore run --help`` for each option."""

    name: str
    space: str = "attendnet_b"  # a shipped space's name or a space file
    data: str | None = None  # None: $ATTENDNETS_DATA, else generated data (as with synthetic)
    synthetic: bool = False
    output: str = "explore"
    requirements: Requirements = field(default_factory=Requirements)
    cost: str = "macs"
    fidelity: Fidelity = field(default_factory=Fidelity)
    trials: int = 24  # designs trained at rung 0
    rungs: int = 2
    img_size: int | None = None  # deployment image size; None: the prototype's
    threads: int = 2  # for latency
    runtime: str = "eager"  # where latency is measured (attendnets.bench.RUNTIMES)
    latency_table: str | None = None  # a LatencyTable file that filters designs before export
    train_threads: int = 1  # torch threads while training: small models at low resolution gain little from more
    sampler: str = "tpe"
    seed: int = 0  # the sampler's; give each worker its own
    storage: str | None = None  # None: a journal file in the study folder
    resume: bool = False
    give_up_after: int = 50

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise AttendNetsError(f"--name must be a plain name (no '/'), got {self.name!r}")
        if self.cost not in COSTS:
            raise AttendNetsError(f"unknown --cost {self.cost!r}; choose from {', '.join(COSTS)}")
        if self.sampler not in SAMPLERS:
            raise AttendNetsError(f"unknown --sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        for key in ("trials", "rungs", "threads", "train_threads", "give_up_after"):
            if getattr(self, key) < 1:
                raise AttendNetsError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        if self.synthetic and self.data:
            raise AttendNetsError("--synthetic generates its own data; drop --data")
        check_runtime(self.runtime)
        if self.latency_table and (self.runtime == "eager" or self.requirements.max_latency_ratio is None):
            raise AttendNetsError("--latency-table filters on --max-latency-ratio in an exported --runtime: set both")

    @property
    def study_dir(self) -> Path:
        return Path(self.output) / self.name


class _NothingToDo(Exception):
    """The trial a worker asked for has no work left: another worker took the last queued design of a promoted
    rung, or filled rung 0's budget between this worker's count and its ask. Optuna marks the trial failed."""


class Explorer:
    """Runs (or resumes, or joins as another worker) one search. ``evaluate`` trains and scores a design;
    tests pass a stand-in to exercise the search without training."""

    def __init__(self, config: ExploreConfig, evaluate: Evaluator = train_and_evaluate) -> None:
        self.config = config
        self.evaluate = evaluate
        self.space: SearchSpace = load_space(config.space)
        self.requirements = config.requirements
        self.study_dir = config.study_dir
        self.storage: optuna.storages.BaseStorage | None = None
        self.data: FidelityData | None = None
        self.deployment: Deployment | None = None
        self._created: list[str] = []  # the rung studies this run created

    # -- the run -------------------------------------------------------------------------------------

    def run(self, progress: bool = True) -> None:
        """Run every rung to its end (the report is :func:`attendnets.search.report.write_report`'s). ``progress``
        shows bars on a terminal, elsewhere a log line per finished design.

        A run that fails before any design of the study is finished leaves nothing behind: the rung studies it
        created are deleted and the folders it created removed, so the corrected command starts afresh."""
        created = first_missing(self.study_dir)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPE's group, heartbeat
            try:
                self._run(progress)
            except Exception:
                self._undo(created)
                raise

    def _run(self, progress: bool) -> None:
        self.storage = open_storage(self.study_dir, self.config.storage)
        exists = rung_name(self.config.name, 0) in study_names(self.storage)
        if exists and not self.config.resume:
            raise AttendNetsError(
                f"study {self.config.name!r} already exists in {self._where()}; pass --resume to continue it "
                "(or join it as another worker), or choose another --name"
            )
        source = source_data(self.study_dir, self.config.data, self.config.synthetic, self.config.fidelity)
        self.data = prepare_data(source, self.study_dir / "data", self.config.fidelity)
        self.deployment = Deployment(self.config.img_size or self.space.prototype.img_size, len(self.data.classes),
                                     self.config.threads, self.config.runtime, self.config.latency_table)
        write_study_file(self.study_dir, self.config.name, self.config.storage)
        attrs = self.study_attrs()
        studies = [self.open_rung(r, attrs) for r in range(self.config.rungs)]
        self._sample(studies[0], progress)
        for r in range(1, self.config.rungs):
            self._wait(studies[r - 1])
            promote(studies[r - 1], studies[r], self.config.fidelity.eta, self.space)
            self._drain(studies[r], r, progress)
        self._wait(studies[-1])

    def study_attrs(self) -> dict[str, Any]:
        """What a resumed study must share with the run that started it (stored on every rung's study)."""
        fid = self.config.fidelity.to_dict()
        return {
            "space": self.space.to_dict(),
            "requirements": self.requirements.to_dict(),
            "cost": self.config.cost,
            "fidelity": fid,
            "deployment": dataclasses.asdict(self.deployment),
            "classes": self.data.classes,
            "train_images": self.data.train_images,
            "holdout_images": self.data.holdout_images,
        }

    def open_rung(self, rung: int, attrs: dict[str, Any]) -> optuna.Study:
        """Create or load rung ``rung``'s study; a loaded one must have been started with ``attrs``."""
        name = rung_name(self.config.name, rung)
        sampler = self._sampler() if rung == 0 else optuna.samplers.RandomSampler(self.config.seed)
        try:
            study = optuna.create_study(
                study_name=name, storage=self.storage, directions=["maximize", "minimize"], sampler=sampler
            )
            self._created.append(name)
            if rung == 0:  # only the worker that creates the study queues the reference, so it is trained once
                study.enqueue_trial(self.space.prototype_params(), user_attrs={"reference": PROTOTYPE})
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=self.storage, sampler=sampler)
        saved = dict(study.user_attrs)
        # Read as a space, fidelity and requirements first: a field added since the study started takes its default.
        if "space" in saved:
            saved["space"] = as_json_data(SearchSpace.from_dict(saved["space"]).to_dict())
        if "fidelity" in saved:
            saved["fidelity"] = as_json_data(Fidelity(**saved["fidelity"]).to_dict())
        if "requirements" in saved:
            saved["requirements"] = as_json_data(Requirements(**saved["requirements"]).to_dict())
        for key, value in attrs.items():
            if key not in saved:
                study.set_user_attr(key, value)
            elif saved[key] != as_json_data(value):
                raise AttendNetsError(f"cannot resume {self.config.name!r}: {_difference(key, saved[key], as_json_data(value))}")
        return study

    def _sampler(self) -> optuna.samplers.BaseSampler:
        seed = self.config.seed
        if self.config.sampler == "tpe":
            return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True, seed=seed)
        if self.config.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)

    def _where(self) -> str:
        return redact(self.config.storage) if self.config.storage else str(self.study_dir)

    def _undo(self, created: Path | None) -> None:
        """After a failure: unless a design of the study is finished (or another worker's is running), delete
        the rung studies this run created and remove ``created``, the first folder of the study's path it made
        (unless another worker's study lives there now)."""
        if self.storage is not None:
            first = rung_name(self.config.name, 0)
            if first in study_names(self.storage):
                trials = optuna.load_study(study_name=first, storage=self.storage).get_trials(deepcopy=False)
                if any(t.state in (TrialState.COMPLETE, TrialState.RUNNING) for t in trials):
                    return
            for name in self._created:
                optuna.delete_study(study_name=name, storage=self.storage)
            if first in study_names(self.storage):
                return
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)

    # -- rungs ---------------------------------------------------------------------------------------

    def _sample(self, study: optuna.Study, progress: bool) -> None:
        """Rung 0: the prototype, then sampled designs until ``trials`` designs are trained."""
        fail_dead_trials(study)
        # Queued at creation; queued again only when its trial died (a resumed study without a live one).
        if study.get_trials(deepcopy=False) and not _live(study, lambda t: t.user_attrs.get("reference") == PROTOTYPE):
            study.enqueue_trial(self.space.prototype_params(), user_attrs={"reference": PROTOTYPE})
        streak = 0
        with self._bar(study, 0, self.config.trials, progress) as bar:
            while (trained := len(_live(study, _counts_as_trained))) < self.config.trials:
                bar.n = trained
                bar.refresh()
                trial = self._one_trial(study, 0)
                streak = 0 if status_of(trial) in SCORED else streak + 1
                if streak >= self.config.give_up_after:
                    self._give_up(study, streak)
                    break
                self._show(bar, 0, study, trial, len(_live(study, _counts_as_trained)), self.config.trials)
            bar.n = len(_live(study, _counts_as_trained))
            bar.refresh()

    def _drain(self, study: optuna.Study, rung: int, progress: bool) -> None:
        """Rung ``rung`` > 0: train the designs promoted into it."""
        queued = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        done = len(_live(study, lambda t: t.state == TrialState.COMPLETE))
        total = done + queued
        with self._bar(study, rung, total, progress) as bar:
            bar.n = done
            while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                trial = self._one_trial(study, rung)
                done += 1
                bar.update()
                self._show(bar, rung, study, trial, done, total)

    def _bar(self, study: optuna.Study, rung: int, total: int, progress: bool) -> tqdm:
        """A progress bar when ``progress`` is asked and stderr is a terminal; else a disabled one."""
        epochs = self.config.fidelity.rung_epochs(rung)
        return tqdm(total=total, desc=f"rung {rung} ({epochs} epochs)", unit="design",
                    disable=None if progress else True, dynamic_ncols=True, initial=0)

    def _show(self, bar: tqdm, rung: int, study: optuna.Study, trial: FrozenTrial, done: int, total: int) -> None:
        """The study's status on the bar, or without a bar one log line for the design just finished."""
        status = status_line(study, self.config.cost)
        if not bar.disable:
            bar.set_postfix_str(status, refresh=False)
            return
        outcome = status_of(trial) or trial.state.name.lower()
        log.info(f"rung {rung}: trial {trial.number} {outcome}, {done}/{total} done; {status}")

    def _one_trial(self, study: optuna.Study, rung: int) -> FrozenTrial:
        numbers: list[int] = []

        def objective(trial: Trial) -> tuple[float, float]:
            numbers.append(trial.number)
            return self.objective(trial, rung)

        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial's traceback: the error is raised anyway
        try:
            study.optimize(objective, n_trials=1, catch=(_NothingToDo,))
        finally:
            optuna.logging.set_verbosity(verbosity)
        return study.get_trials(deepcopy=False)[numbers[0]]

    def _wait(self, study: optuna.Study) -> None:
        """Wait for other workers' trials of this rung (failing those whose worker died)."""
        while True:
            fail_dead_trials(study)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return
            log.info(f"waiting for {len(running)} trial(s) of {study.study_name} run by other workers")
            time.sleep(POLL_S)

    def _give_up(self, study: optuna.Study, streak: int) -> None:
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if any(status_of(t) == TrialStatus.TRAINED for t in finished):
            log.warning(f"rung 0 stopped: the last {streak} designs proposed were infeasible or already trained")
            return
        measured = [t for t in finished if status_of(t) in (TrialStatus.OVER_CAP, TrialStatus.REFERENCE)]
        closest = min(measured, key=lambda t: _violation(t), default=None)
        where = ""
        if closest is not None:
            costs = closest.user_attrs["costs"]
            over = [f"{format_cost(c, costs[c])} (cap {format_cost(c, cap)})"
                    for c, cap in self.requirements.caps().items() if c in costs and costs[c] > cap]
            where = f"; the closest was trial {closest.number}: {', '.join(over)}"
        raise AttendNetsError(
            f"no point meets the requirements ({self.requirements.describe()}) after {streak} infeasible designs "
            f"in a row{where}; relax a cap or widen the space"
        )

    # -- one design ----------------------------------------------------------------------------------

    def objective(self, trial: Trial, rung: int) -> tuple[float, float]:
        """Measure one design: costs first, training only when every cap is met (or for the reference)."""
        trial.set_user_attr(WORKER_ATTR, worker_id())
        if rung > 0 and "parent" not in trial.user_attrs:
            raise _NothingToDo("no promoted design left in this rung")
        reference = trial.user_attrs.get("reference") == PROTOTYPE
        if rung == 0 and not reference:
            earlier = _live(trial.study, lambda t: t.number < trial.number and _counts_as_trained(t))
            if len(earlier) >= self.config.trials:
                trial.set_user_attr("reason", "surplus: other workers filled the budget first")
                raise _NothingToDo("rung 0's budget was filled by other workers")
        spec = self.space.sample(trial)
        spec = dataclasses.replace(spec, name=f"{self.config.name}-r{rung}-t{trial.number}",
                                   num_classes=self.deployment.num_classes, img_size=self.deployment.img_size)
        trial.set_user_attr("spec", spec.to_dict())
        same = next((t for t in study_trials(trial.study, TrialState.COMPLETE) if t.params == trial.params), None)
        if same is not None and not reference:
            for key in ("costs", STATUS, "reason", "top1_float", "fidelity", "train_seconds", "note"):
                if key in same.user_attrs:
                    trial.set_user_attr(key, same.user_attrs[key])
            trial.set_user_attr("duplicate_of", same.number)
            trial.set_user_attr(STATUS, TrialStatus.DUPLICATE)
            self._constrain(trial, same.constraints)
            return same.values[0], same.values[1]
        try:
            costs = self._costs(trial, spec, rung, reference)
        except (SpecError, RuntimeError) as err:
            trial.set_user_attr(STATUS, TrialStatus.UNBUILDABLE)
            trial.set_user_attr("reason", str(err).splitlines()[0])
            self._constrain(trial, {"buildable": 1.0, **dict.fromkeys(cap_constraints({}, self.requirements), 0.0),
                                    **accuracy_constraint(None, self.requirements)})
            return 0.0, 0.0
        trial.set_user_attr("costs", costs)
        cap_values = cap_constraints(costs, self.requirements)
        if any(v > 0 for v in cap_values.values()) and not reference:
            trial.set_user_attr(STATUS, TrialStatus.OVER_CAP)
            self._constrain(trial, {"buildable": 0.0, **cap_values, **accuracy_constraint(None, self.requirements)})
            return 0.0, costs[self.config.cost]
        fid = self.config.fidelity
        epochs = fid.rung_epochs(rung)
        run = TrialRun(rung, epochs, self.study_dir / f"rung{rung}" / f"trial_{trial.number:04d}", self.data, fid)
        with torch_threads(self.config.train_threads):
            evaluation = self.evaluate(spec, run)
        trial.set_user_attr(STATUS, TrialStatus.REFERENCE if reference else TrialStatus.TRAINED)
        trial.set_user_attr("top1_float", evaluation.float_top1)
        trial.set_user_attr("train_seconds", evaluation.seconds)
        trial.set_user_attr("fidelity", {"rung": rung, "epochs": epochs, "img_size": fid.img_size,
                                         "train_images": self.data.train_images,
                                         "holdout_images": self.data.holdout_images, "seed": fid.seed})
        if evaluation.note:
            trial.set_user_attr("note", evaluation.note)
        self._constrain(trial, {"buildable": 0.0, **cap_values, **accuracy_constraint(evaluation.top1, self.requirements)})
        return evaluation.top1, costs[self.config.cost]

    def _costs(self, trial: Trial, spec, rung: int, reference: bool) -> dict[str, float]:
        """Rung 0 measures; a promoted design keeps its parent's costs (the same design, and the same
        latency measurement, so its feasibility cannot flip with timing noise)."""
        if rung > 0:
            parents = optuna.load_study(study_name=rung_name(self.config.name, rung - 1), storage=self.storage)
            parent = parents.trials[trial.user_attrs["parent"]]
            if "costs" in parent.user_attrs:
                return parent.user_attrs["costs"]
        needed = {self.config.cost}
        if reference:
            needed |= set(COSTS) - LATENCY
        return measure_costs(spec, self.deployment, needed, self.requirements.caps())

    def _constrain(self, trial: Trial, values: dict[str, float]) -> None:
        for key, value in values.items():
            trial.set_constraint(key, value)


# -- promotion -----------------------------------------------------------------------------------------


def select_promotions(trials: list[FrozenTrial], eta: int) -> list[FrozenTrial]:
    """The designs of a rung that go on: the top ``max(1, n // eta)`` of its ``n`` trained, distinct designs
    that meet every cap, by non-dominated rank, then top-1, then cost. The reference is not among them
    (it is promoted anyway)."""
    pool: dict[str, FrozenTrial] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE and status_of(t) == TrialStatus.TRAINED and meets_caps(t):
            pool.setdefault(json.dumps(t.params, sort_keys=True), t)
    candidates = list(pool.values())
    if not candidates:
        return []
    ranks = non_dominated_ranks([(t.values[0], t.values[1]) for t in candidates])
    order = sorted(range(len(candidates)), key=lambda i: (ranks[i], -candidates[i].values[0], candidates[i].values[1]))
    return [candidates[i] for i in order[: max(1, len(candidates) // eta)]]


def promote(source: optuna.Study, target: optuna.Study, eta: int, space: SearchSpace) -> list[int]:
    """Enqueue in ``target`` the selected designs of ``source`` and the prototype, unless a live trial of
    ``target`` already has that parent. Returns the trial numbers of ``source`` enqueued now."""
    trials = source.get_trials(deepcopy=False)
    taken = {t.user_attrs.get("parent") for t in _live(target, lambda t: "parent" in t.user_attrs)}
    enqueued = []
    reference = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("reference") == PROTOTYPE]
    for t in select_promotions(trials, eta) + reference[-1:]:
        if t.number in taken:
            continue
        attrs = {"parent": t.number, **({"reference": PROTOTYPE} if t in reference else {})}
        target.enqueue_trial(t.params if t not in reference else space.prototype_params(), user_attrs=attrs)
        enqueued.append(t.number)
    return enqueued


# -- helpers -------------------------------------------------------------------------------------------


def study_trials(study: optuna.Study, *states: TrialState) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=states or None)


def _live(study: optuna.Study, keep: Callable[[FrozenTrial], bool]) -> list[FrozenTrial]:
    """Trials that are not failed (finished, running or waiting) and pass ``keep``."""
    return [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL and keep(t)]


def _counts_as_trained(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.RUNNING or was_scored(trial)


def _violation(trial: FrozenTrial) -> float:
    return sum(v for k, v in trial.constraints.items() if v > 0 and k != "min_top1")


def status_line(study: optuna.Study, cost: str) -> str:
    """``front 4, 3 infeasible, best #7 61.2% @ 45.3M MACs`` for a progress bar."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = pareto_front(trials)
    infeasible = sum(1 for t in trials if not is_feasible(t))
    best = max(front, key=lambda t: t.values[0], default=None)
    line = f"front {len(front)}, {infeasible} infeasible"
    if best is not None:
        line += f", best #{best.number} {best.values[0]:.1f}% @ {format_cost(cost, best.values[1])}"
    return line


def _difference(key: str, saved: Any, now: Any, path: str = "") -> str:
    """The first place where ``saved`` and ``now`` differ, as ``space.stages[2].width was [...], now [...]``."""
    where = f"{path}{key}"
    if isinstance(saved, dict) and isinstance(now, dict):
        for k in list(saved) + [k for k in now if k not in saved]:
            if saved.get(k, math.nan) != now.get(k, math.nan):
                return _difference(k, saved.get(k), now.get(k), f"{where}.")
    if isinstance(saved, list) and isinstance(now, list) and len(saved) == len(now):
        for i, (a, b) in enumerate(zip(saved, now)):
            if a != b:
                return _difference(f"[{i}]", a, b, where)
    return f"it was started with {where} = {json.dumps(saved)}, now {json.dumps(now)}; resume with the same options or choose another --name"

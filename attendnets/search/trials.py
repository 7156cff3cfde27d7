"""What a finished search trial is: its status, whether it is feasible, and the Pareto front of top-1
against cost. Shared by the search itself (:mod:`~attendnets.search.study`) and its report
(:mod:`~attendnets.search.report`), which otherwise do not import each other."""

from __future__ import annotations

import json
from enum import StrEnum

from optuna.trial import FrozenTrial, TrialState

STATUS = "status"  # the user attribute that holds a finished trial's TrialStatus
PROTOTYPE = "prototype"  # the ``reference`` user attribute of the space's prototype design


class TrialStatus(StrEnum):
    """How the search dealt with a design (stored as a plain string in the trial's user attributes)."""

    TRAINED = "trained"  # built, within the caps, trained and scored
    REFERENCE = "reference"  # the space's prototype, trained and scored as the yardstick
    OVER_CAP = "over_cap"  # built and measured, but over a cost cap: not trained
    UNBUILDABLE = "unbuildable"  # the choices make no valid network
    DUPLICATE = "duplicate"  # a design trained before in this rung: its result is copied


SCORED = (TrialStatus.TRAINED, TrialStatus.REFERENCE)


def status_of(trial: FrozenTrial) -> str | None:
    return trial.user_attrs.get(STATUS)


def was_scored(trial: FrozenTrial) -> bool:
    """Finished and trained (a searched design or the reference), so its top-1 was measured."""
    return trial.state == TrialState.COMPLETE and status_of(trial) in SCORED


def meets_caps(trial: FrozenTrial) -> bool:
    """Built and within every cost cap (the accuracy floor aside)."""
    return all(v <= 0 for k, v in trial.constraints.items() if k != "min_top1")


def is_feasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and all(v <= 0 for v in trial.constraints.values())


def non_dominated_ranks(points: list[tuple[float, float]]) -> list[int]:
    """The non-domination rank (0 = Pareto front) of each ``(top-1, cost)`` point, top-1 maximised and
    cost minimised: peel the front, then the front of the rest, and so on."""
    ranks = [-1] * len(points)
    rank = 0
    left = set(range(len(points)))
    while left:
        front = {i for i in left if not any(_dominates(points[j], points[i]) for j in left if j != i)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] >= b[0] and a[1] <= b[1] and a != b


def pareto_front(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Feasible trained designs (distinct) that no other one beats on both top-1 and cost, cheapest first."""
    pool: dict[str, FrozenTrial] = {}
    for t in trials:
        if is_feasible(t) and status_of(t) in SCORED:
            pool.setdefault(json.dumps(t.params, sort_keys=True), t)
    candidates = list(pool.values())
    ranks = non_dominated_ranks([(t.values[0], t.values[1]) for t in candidates])
    return sorted((t for t, r in zip(candidates, ranks) if r == 0), key=lambda t: t.values[1])

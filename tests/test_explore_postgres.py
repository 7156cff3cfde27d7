"""Several workers on one study: two processes share an Optuna study, then an ``attendnets explore`` study,
through a real PostgreSQL server (the ``postgres_url`` fixture of ``tests/conftest.py``)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna

from attendnets.search.space import default_space
from attendnets.spec import ArchSpec
from tests.conftest import TINY_SPEC

WORKER = textwrap.dedent(
    """
    import sys, time
    import optuna

    url, name, seed, n_trials = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    study = optuna.load_study(study_name=name, storage=url, sampler=optuna.samplers.RandomSampler(seed=seed))

    def objective(trial):
        trial.set_user_attr("worker_seed", seed)
        x = trial.suggest_float("x", -1.0, 1.0)
        time.sleep(0.05)  # long enough for the two workers' trials to interleave
        return x * x

    study.optimize(objective, n_trials=n_trials)
    """
)


def test_two_optuna_workers_share_one_study(postgres_url: str) -> None:
    n_trials = 6
    optuna.create_study(study_name="shared", storage=postgres_url, direction="minimize")
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, postgres_url, "shared", str(seed), str(n_trials)],
                         stderr=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err

    trials = optuna.load_study(study_name="shared", storage=postgres_url).get_trials(deepcopy=False)
    assert len(trials) == 2 * n_trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(2 * n_trials))
    by_seed = {seed: [t.params["x"] for t in trials if t.user_attrs["worker_seed"] == seed] for seed in (1, 2)}
    assert [len(xs) for xs in by_seed.values()] == [n_trials, n_trials]
    assert set(by_seed[1]).isdisjoint(by_seed[2])  # different seeds sample different points


# `attendnets ARGS`, started once the file GO exists: the imports (seconds on a busy machine) happen before,
# so that a worker told to join an existing study starts at once.
LAUNCHER = textwrap.dedent(
    """
    import pathlib, sys, time
    import attendnets.cli.explore, attendnets.search.report
    from attendnets.cli import main

    go = pathlib.Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.1)
    sys.exit(main(sys.argv[2:]))
    """
)


def test_two_explore_workers_share_one_study(postgres_url: str, tmp_path: Path) -> None:
    """Two ``attendnets explore run --storage URL --resume --seed N`` workers, each with its own output folder
    as on separate machines and started at the same moment, fill one study: every design trained once, each
    worker's report reads all."""
    space = tmp_path / "space.yaml"
    default_space(ArchSpec.from_dict(TINY_SPEC)).save(space)
    trials = 4  # designs trained at rung 0 by both workers together, the prototype included
    command = ["explore", "run", "--name", "shared", "--synthetic", "--space", str(space), "--img-size-search", "16",
               "--images-per-class", "8", "--holdout-per-class", "4", "--epochs", "1", "--rungs", "1",
               "--trials", str(trials), "--storage", postgres_url, "--resume", "--json"]
    workers = [
        subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path / f"go{seed}"), *command, "--seed", str(seed),
                          "--output", str(tmp_path / f"machine{seed}")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]
    summaries = []
    try:
        for seed in (1, 2):  # released together once both have imported everything: a real race for the tables
            (tmp_path / f"go{seed}").touch()
        for worker in workers:
            out, err = worker.communicate(timeout=300)
            assert worker.returncode == 0, err[-3000:]
            summaries.append(json.loads(out))
    finally:
        for worker in workers:
            worker.kill()  # no-op for a worker that finished

    every = optuna.load_study(study_name="shared/rung0", storage=postgres_url).get_trials(deepcopy=False)
    assert sorted(t.number for t in every) == list(range(len(every)))
    # a worker whose ask came after the other had filled the budget gives its trial up, untrained
    surplus = [t for t in every if t.state == optuna.trial.TrialState.FAIL]
    assert all(t.user_attrs["reason"].startswith("surplus") for t in surplus)
    done = [t for t in every if t not in surplus]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in done)
    trained = [t for t in done if t.user_attrs["status"] in ("trained", "reference")]
    assert len(trained) == trials
    assert len({json.dumps(t.params, sort_keys=True) for t in trained}) == trials  # no design trained twice
    assert len({t.user_attrs["worker"] for t in trained}) == 2  # both workers trained designs
    for seed, summary in zip((1, 2), summaries):
        assert summary["rungs"][0]["trials"] == len(done)
        with open(tmp_path / f"machine{seed}" / "shared" / "trials.csv", newline="") as f:
            assert sorted(int(row["trial"]) for row in csv.DictReader(f)) == list(range(len(every)))

"""Several workers on one study: two processes share an Optuna study through a real PostgreSQL server."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import optuna

from tests.postgres_fixtures import postgres_server, postgres_url  # noqa: F401 (fixtures)

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

"""``attendnets explore pilot``: rank agreement on known rankings, design sampling under caps, resuming
without retraining (a stand-in evaluator), and a tiny pilot really trained through the verb."""

from __future__ import annotations

import json
import math

import pytest

from attendnets.cli import main
from attendnets.data import make_synthetic_dataset
from attendnets.errors import AttendNetsError
from attendnets.model import build_model
from attendnets.search.fidelity import Evaluation, Fidelity
from attendnets.search.pilot import Pilot, PilotConfig, rank_agreement, sample_designs, verdict
from attendnets.search.requirements import Deployment, Requirements
from attendnets.spec import ArchSpec

pytestmark = pytest.mark.usefixtures("one_thread")


class ParamScore:
    """Scores a design by its parameter count, longer training adding a little; counts its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, spec: ArchSpec, run) -> Evaluation:
        self.calls.append((spec.name, run.epochs))
        params = sum(p.numel() for p in build_model(spec).parameters())
        top1 = 100 * (1 - math.exp(-params / 4000)) * (0.5 + run.epochs / 10)
        return Evaluation(top1, top1, 0.5)


def test_rank_agreement_on_known_rankings() -> None:
    same = rank_agreement([1, 2, 3, 4], [10, 20, 30, 40], top_k=2)
    assert same["kendall_tau"] == pytest.approx(1.0) and same["top_k_overlap"] == 2 and same["pick_regret"] == 0
    assert rank_agreement([1, 2, 3, 4], [4, 3, 2, 1], top_k=1)["kendall_tau"] == pytest.approx(-1.0)
    one_swap = rank_agreement([1, 2, 3, 4], [1, 2, 4, 3], top_k=1)  # 5 concordant pairs, 1 discordant: 4/6
    assert one_swap["kendall_tau"] == pytest.approx(4 / 6)
    assert one_swap["top_k_overlap"] == 0 and one_swap["pick_regret"] == 1
    assert rank_agreement([1, 2, 3, 4, 5, 6, 7, 8], list(range(8)), top_k=3)["p_value"] < 0.001
    flat = rank_agreement([5, 5, 5], [1, 2, 3], top_k=1)
    assert math.isnan(flat["kendall_tau"]) and "tau undefined" in verdict(flat, 1, 3)
    with pytest.raises(AttendNetsError, match="equal length"):
        rank_agreement([1, 2], [1, 2, 3], top_k=1)


def test_verdict_says_how_well_the_cheap_rung_ranks() -> None:
    good = verdict(rank_agreement(list(range(8)), list(range(8)), 3), 3, 9)
    assert good.startswith("tau 1.00 (p=") and "on 8 designs, 3 vs 9 epochs: the cheap rung ranks designs well" in good
    bad = verdict(rank_agreement([1, 2, 3, 4], [2, 4, 1, 3], 2), 3, 9)
    assert "does not predict the ranking (not significant at 5% with 4 designs)" in bad


def test_designs_are_distinct_within_caps_and_fixed_by_the_seed(space_file) -> None:
    from attendnets.search.space import load_space

    space = load_space(space_file)
    deployment = Deployment(16, 3)
    req = Requirements(max_params=3000)
    designs = sample_designs(space, 6, deployment, req, seed=1)
    assert designs[0]["reference"] and designs[0]["params"] == space.prototype_params()
    assert len({json.dumps(d["params"], sort_keys=True) for d in designs}) == 6
    assert all(d["costs"]["params"] <= 3000 for d in designs[1:]) and not any(d["reference"] for d in designs[1:])
    assert [d["params"] for d in sample_designs(space, 6, deployment, req, seed=1)] == [d["params"] for d in designs]
    with pytest.raises(AttendNetsError, match="met the requirements"):
        sample_designs(space, 4, deployment, Requirements(max_params=10), seed=1)


def test_pilot_resumes_without_retraining(tmp_path, space_file, explore_data) -> None:
    cfg = PilotConfig(space=str(space_file), data=str(explore_data), output=str(tmp_path / "p"), designs=4, low_epochs=1,
                      high_epochs=3, img_size=16,
                      fidelity=Fidelity(img_size=16, images_per_class=3, holdout_per_class=2, batch_size=3))
    score = ParamScore()
    summary = Pilot(cfg, score).run(progress=False)
    assert sorted(score.calls) == sorted((f"pilot-d{i:02d}", e) for i in range(4) for e in (1, 3))
    assert summary["agreement"]["kendall_tau"] == pytest.approx(1.0)  # the stand-in ranks alike at both rungs
    assert summary["agreement"]["top_k"] == 1 and summary["train_seconds"] == {"low": 2.0, "high": 2.0}
    written = json.loads((tmp_path / "p" / "pilot.json").read_text())
    assert written["verdict"] == summary["verdict"] and (tmp_path / "p" / "pilot.png").read_bytes()[:4] == b"\x89PNG"

    score.calls.clear()
    longer = Pilot(PilotConfig(**{**cfg.__dict__, "high_epochs": 2}), score).run(progress=False)
    assert sorted(score.calls) == [(f"pilot-d{i:02d}", 2) for i in range(4)]  # the 1-epoch results are reused
    assert [d["low"] for d in longer["designs"]] == [d["low"] for d in summary["designs"]]
    for result in (tmp_path / "p" / "results" / "e1").glob("*.json"):  # saved before crop_scale existed
        saved = json.loads(result.read_text())
        del saved["fidelity"]["crop_scale"]
        result.write_text(json.dumps(saved))
    score.calls.clear()
    Pilot(PilotConfig(**{**cfg.__dict__, "high_epochs": 2}), score).run(progress=False)
    assert score.calls == []  # still reused

    with pytest.raises(AttendNetsError, match="holds another fidelity .* use another --output"):
        Pilot(PilotConfig(**{**cfg.__dict__, "fidelity": Fidelity(img_size=16, images_per_class=3, holdout_per_class=2,
                                                                  batch_size=3, lr=0.1)}), score).run(progress=False)


def test_pilot_verb_trains_tiny_designs_and_rejects_bad_input(tmp_path, space_file, capsys) -> None:
    data = make_synthetic_dataset(tmp_path / "d", classes=3, per_class=8, size=24)
    base = ["explore", "pilot", "--data", str(data), "--space", str(space_file), "--img-size-search", "16",
            "--images-per-class", "5", "--holdout-per-class", "3", "--batch-size", "5", "--img-size", "16"]
    assert main([*base, "--output", str(tmp_path / "p"), "--designs", "3", "--low-epochs", "1", "--high-epochs", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("tau ") and "on 3 designs" in line  # tau may be undefined: tiny data, all at chance
    folder = tmp_path / "p"
    summary = json.loads((folder / "pilot.json").read_text())
    assert line == summary["verdict"]
    holdout = summary["fidelity"]["holdout_images"]
    assert holdout == 3 * 3
    for design in summary["designs"]:
        for rung, epochs in (("low", 1), ("high", 2)):
            scores = design[rung]
            # The scores are the training's own records: its result file, and (float top-1) the last epoch
            # of its run's metrics.jsonl; the 8-bit top-1 counts whole hold-out images.
            result = json.loads((folder / "results" / f"e{epochs}" / f"{design['name']}.json").read_text())
            assert result["scores"] == scores and result["spec"] == design["spec"] and result["epochs"] == epochs
            metrics = (folder / "runs" / f"e{epochs}" / design["name"] / "metrics.jsonl").read_text().splitlines()
            assert len(metrics) == epochs and scores["float_top1"] == json.loads(metrics[-1])["val_top1"]
            assert scores["top1"] * holdout / 100 == pytest.approx(round(scores["top1"] * holdout / 100), abs=1e-6)
            assert scores["seconds"] > 0
        build_model(ArchSpec.from_dict(design["spec"]))
    top_k = summary["agreement"]["top_k"]
    again = rank_agreement([d["low"]["top1"] for d in summary["designs"]],
                           [d["high"]["top1"] for d in summary["designs"]], top_k)
    assert json.dumps(again, sort_keys=True) == json.dumps(summary["agreement"], sort_keys=True)  # NaN == NaN
    assert len(list((folder / "results").rglob("*.json"))) == 6

    for argv, message in (([*base, "--synthetic"], "--synthetic generates its own data; drop --data"),
                          ([*base, "--low-epochs", "3", "--high-epochs", "3"], "must be at least 1 and below --high-epochs"),
                          ([*base, "--max-params", "10", "--designs", "3"], "met the requirements")):
        assert main([*argv, "--output", str(tmp_path / "bad")]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad").exists()  # a pilot that failed before any training leaves no folder

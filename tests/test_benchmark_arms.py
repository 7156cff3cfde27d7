"""The arms of benchmarks/presets.py, ablation.py and mcu.py build the architectures they describe and train with
the recipe they say; benchmarks/explore_latency.py checks its target as the issue states it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import pytest

from attendnets.cli import build_parser
from attendnets.cli import train as train_verb
from attendnets.complexity import profile_model
from attendnets.model import AttendNet
from attendnets.registry import load_preset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ablation  # noqa: E402
import arms  # noqa: E402
import explore  # noqa: E402
import explore_latency  # noqa: E402
import imagenette  # noqa: E402
import mcu  # noqa: E402
import presets  # noqa: E402


@pytest.fixture(scope="module")
def preset_macs() -> int:
    return profile_model(AttendNet(load_preset("attendnet_b")), img_size=224).macs


@pytest.mark.parametrize("arm, attention, widened", [
    ("no-attention", "none", False), ("no-attention-wider", "none", True), ("squeeze-excite", "se", True)])
def test_ablation_arms_change_only_the_condensers_attention(preset_macs, arm, attention, widened) -> None:
    preset = load_preset("attendnet_b")
    spec = ablation.ARMS[arm].spec(preset)
    changed = [i for i, (a, b) in enumerate(zip(preset.blocks, spec.blocks, strict=True)) if a != b]
    assert changed == [1, 2, 5, 6, 8]  # the condensers
    assert {spec.blocks[i].attention for i in changed} == {attention}
    assert all((spec.blocks[i].mid > preset.blocks[i].mid) is widened for i in changed)
    macs = profile_model(AttendNet(spec), img_size=224).macs
    if widened:  # the freed multiply-adds given back: equal cost within 0.1%
        assert abs(macs / preset_macs - 1) < 1e-3
    else:  # the attention branches' cost removed
        assert macs < 0.95 * preset_macs


def test_preset_arms_change_what_they_say() -> None:
    preset = load_preset("attendnet_b")
    wide = presets.ARMS["pepe-wide-proj2"].spec(preset)
    assert [b.proj2 for b in wide.blocks if b.type == "pepe"] == list(presets.WIDE_PROJ2)
    narrow = presets.ARMS["vac28-narrow"].spec(preset)
    assert [b.mid for b in narrow.blocks if b.type == "vac"] == [16, 16, 32, 32, 32]
    assert presets.ARMS["init-torch"].weight_init == "torch"
    together = presets.ARMS["all-three"]
    assert together.weight_init == "torch" and together.spec(preset) == presets.narrow_vac28(wide)


def test_each_arm_trains_with_the_recipe_changed_only_as_it_says(tmp_path) -> None:
    study = arms.Study(presets.ARMS, tmp_path, tmp_path / "data", workers=2)
    commands = {arm: study.train_command(arm, "attendnet_b", 1) for arm in presets.ARMS}
    for arm, command in commands.items():
        config = train_verb.config_from_args(build_parser().parse_args(command[3:]))
        assert config.seed == 1 and config.output == str(tmp_path / arm / "attendnet_b-s1")
        assert config.crop_scale == ((0.08, 1.0) if arm == "crop008" else (0.35, 1.0))
        assert command.count("--crop-scale") == 1 and command.count("--weight-init") == 1
        assert config.weight_init == ("torch" if arm in ("init-torch", "all-three") else "kaiming")
        assert config.zero_init_last  # the recipe since zero-init-last won (docs/results/zero_init.md)


def test_every_driver_trains_the_comparison_recipe_alike(tmp_path, monkeypatch) -> None:
    """imagenette.py, the arms studies and the latency search's retraining give the train verb one command
    line for the same model and seed, apart from the run folder (and --resume when a killed run is left)."""
    data, given = tmp_path / "data", {}
    monkeypatch.setattr(imagenette.subprocess, "run", lambda command, **_: given.setdefault("imagenette", command))
    args = argparse.Namespace(epochs=imagenette.EPOCHS, workers=2, subset=None, seed=0)
    imagenette.train("attendnet_b", tmp_path / "plain", args, data)
    study = arms.Study(presets.ARMS, tmp_path, data, workers=2)
    given["arms"] = study.train_command("init-torch", "attendnet_b", 0)  # the arm of the recipe as it is now
    before = study.train_command("crop035", "attendnet_b", 0)  # the recipe before PyTorch's init won
    assert before[before.index("--weight-init") + 1] == "kaiming"

    class Recorder:
        def run(self, stage: str, command: list[str]) -> None:
            given["explore"] = command

    budget = {"epochs": imagenette.EPOCHS, "subset": None}
    killed = tmp_path / "started" / "retrain" / "attendnet_b-s0"
    killed.mkdir(parents=True)
    (killed / "config.json").write_text("{}")  # a killed run: the search resumes it
    explore.train_run(Recorder(), "attendnet_b", 0, data, tmp_path / "started", tmp_path / "none", budget, 2)
    assert given["explore"][-1] == "--resume"

    def without_output(command: list[str]) -> list[str]:
        at = command.index("--output")
        return command[:at] + command[at + 2 :]

    assert without_output(given["imagenette"]) == without_output(given["arms"]) == without_output(given["explore"][:-1])
    assert "--cache-images" in given["arms"] and given["arms"][given["arms"].index("--seed") + 1] == "0"


def test_a_run_of_another_recipe_is_named_with_its_differences(tmp_path) -> None:
    run = tmp_path / "attendnet_b"
    run.mkdir()
    config = train_verb.config_from_args(build_parser().parse_args(
        ["train", "--model", "attendnet_b", "--output", str(run), "--epochs", "15", *imagenette.RECIPE]))
    saved = dataclasses.asdict(config)
    (run / "config.json").write_text(json.dumps(saved))
    assert imagenette.recipe_changes(run, "attendnet_b", 15, None) == []
    assert imagenette.recipe_changes(run, "attendnet_b", 15, None, seed=1) == ["seed: 0 -> 1"]
    del saved["crop_scale"]  # a run saved before the option existed cropped 8-100%
    (run / "config.json").write_text(json.dumps(saved))
    assert imagenette.recipe_changes(run, "attendnet_b", 15, None) == ["crop_scale: [0.08, 1.0] -> [0.35, 1.0]"]


def test_the_microcontroller_design_fits_its_arena_by_the_profiler(tmp_path) -> None:
    study = arms.Study(mcu.ARMS, tmp_path, tmp_path / "data", workers=2)
    costs = mcu.costs(study)
    assert costs["mcu"]["profiler_arena_kb"] <= mcu.ARENA_KB < costs["mobilenet_v1"]["profiler_arena_kb"]
    assert costs["found_latency"]["profiler_arena_kb"] <= mcu.ARENA_KB
    found = profile_model(AttendNet(load_preset("attendnet_found_macs")), img_size=128)
    assert 0.9 < costs["mcu"]["macs"] / found.macs < 1
    spec = json.loads(Path(study.model_argument("mcu", "attendnet_found_macs")).read_text())
    assert spec["blocks"][0]["out"] == mcu.STEM and spec["blocks"][2]["groups"] == mcu.STEM


def test_a_verdict_pairs_seeds_and_weighs_the_gap_against_the_seed_spread() -> None:
    def arm(*top1: float) -> dict:
        return {"attendnet_b": {"seeds": {s: {"top1": t, "int8_top1": t - 0.1} for s, t in enumerate(top1)}}}

    rows = {"a": arm(75.0, 75.4), "b": arm(73.0, 73.6), "c": arm(75.1, 73.3)}
    assert arms.compare(rows, "a", "b") == (
        "a vs b (attendnet_b): +1.90 points at 8-bit weights (per seed +2.00, +1.80; beyond the larger seed spread, "
        "0.60); +1.90 points at float (per seed +2.00, +1.80; beyond the larger seed spread, 0.60)")
    assert "within the larger seed spread, 1.80" in arms.compare(rows, "c", "b")
    assert arms.compare(rows, "a", "missing") is None
    rows["d"] = arm(80.0)  # one seed: however large the gap, nothing to judge it by
    assert not arms.gap(rows, "d", "b").clear
    assert "per seed +7.00; one seed in common, too few to judge" in arms.compare(rows, "d", "b")



def test_a_study_report_counts_the_runs_of_each_machine() -> None:
    def run(cpu: str, *flags: str) -> dict:
        return {"recorded": {"machine": {"cpu": cpu, "cpu_flags": list(flags)}}}

    rows = {"a": {"attendnet_b": {"seeds": {0: run("EPYC", "avx2"), 1: run("Xeon", "avx2", "avx512_vnni")}}},
            "b": {"mobilenet_v1": {"seeds": {0: run("EPYC", "avx2"), 1: run("old")}}}}
    assert arms.machines(rows) == "EPYC (avx2): 2 runs; Xeon (avx2, avx512_vnni): 1 run; old (no AVX2): 1 run"

def test_the_latency_report_times_each_architecture_once_against_mobilenet_v1(tmp_path, monkeypatch) -> None:
    calls = []

    def bench(names, baselines, runtimes, threads, **_):  # MobileNet-V1 takes 2 ms, every other model 1 ms
        calls.append((names, baselines, threads))
        rows = [{"model": m, "runtime": r, "batch1_median_ms": 2.0 if m == "mobilenet_v1" else 1.0,
                 "batch1_speedup_vs_mobilenet_v1": 1.0 if m == "mobilenet_v1" else 2.0}
                for m in dict.fromkeys([*names, *baselines]) for r in runtimes]
        return [{"results": rows} for _ in threads]

    monkeypatch.setattr(arms, "run_bench", bench)
    monkeypatch.setattr(arms, "RESULTS", tmp_path)
    chosen = {a: presets.ARMS[a] for a in ("crop035", "crop008", "vac28-narrow")}
    arms.latency_report(arms.Study(chosen, tmp_path / "runs", tmp_path, workers=2), "presets", "Presets", rounds=3)
    narrow = str(tmp_path / "runs" / "vac28-narrow" / "attendnet_b.json")
    assert calls == [(["attendnet_b", "mobilenet_v1", narrow], ["mobilenet_v1"], arms.LATENCY_THREADS)]
    rows = (tmp_path / "presets_latency.md").read_text().splitlines()
    table = [r for r in rows if r.startswith("| crop") or r.startswith("| vac")]
    assert table[0].startswith("| crop035 (attendnet_b), crop008 (attendnet_b) | 191.2M | 1.00 (2.00x) |")
    assert table[1].startswith("| crop035 (mobilenet_v1), crop008 (mobilenet_v1) | 567.8M | 2.00 (1.00x) |")
    assert table[2].startswith("| vac28-narrow (attendnet_b) | 182.8M |")
    cells = len(arms.LATENCY_THREADS) * len(arms.LATENCY_RUNTIMES)
    assert all(r.count("(2.00x)") == cells for r in (table[0], table[2]))
    recorded = json.loads((tmp_path / "presets_latency.json").read_text())["architectures"]
    assert recorded[narrow] == ["vac28-narrow (attendnet_b)"]


def test_the_presets_study_sorts_gains_from_noise() -> None:
    def arm(model: str, *top1: float) -> dict:
        return {model: {"seeds": {s: {"top1": t, "int8_top1": t} for s, t in enumerate(top1)}}}

    rows = {"crop008": {**arm("attendnet_b", 76.0, 75.6), **arm("mobilenet_v1", 62.0, 62.2)},
            "crop035": {**arm("attendnet_b", 78.0, 77.8), **arm("mobilenet_v1", 64.5, 64.8)},
            "init-torch": arm("attendnet_b", 78.8, 77.8), "vac28-narrow": arm("attendnet_b", 76.0, 75.9),
            "all-three": arm("attendnet_b", 79.0, 78.4)}
    assert presets.conclusion(rows) == (
        "**Gains beyond the seed spread** (8-bit weights, points): crop035 vs crop008 (attendnet_b) +2.10, "
        "crop035 vs crop008 (mobilenet_v1) +2.55, all-three vs crop035 (attendnet_b) +0.80. "
        "**Losses beyond it**: vac28-narrow vs crop035 (attendnet_b) -1.95. "
        "**Not told apart from noise**: init-torch vs crop035 (attendnet_b) +0.40 (spread 1.00), "
        "all-three vs init-torch (attendnet_b) +0.40 (spread 1.00).")
    assert presets.conclusion({}) is None
    del rows["init-torch"]["attendnet_b"]["seeds"][1]
    assert "init-torch vs crop035 (attendnet_b) +0.80 (one seed)" in presets.conclusion(rows)


def test_the_presets_report_checks_the_library_takes_the_better_side(tmp_path, monkeypatch) -> None:
    """Each one-change comparison is read off the runs' train commands and held against the code now: the
    recipe (and the train verb's default) and the preset."""
    study = arms.Study(presets.ARMS, tmp_path, tmp_path / "data", workers=2)

    def arm(name: str, model: str, *top1: float) -> dict:
        command = study.train_command(name, model, 0)
        return {model: {"seeds": {s: {"top1": t, "int8_top1": t, "train_command": shlex.join(command)}
                                  for s, t in enumerate(top1)}}}

    rows = {"crop008": arm("crop008", "attendnet_b", 74.0, 73.5), "crop035": arm("crop035", "attendnet_b", 77.0, 77.5),
            "init-torch": arm("init-torch", "attendnet_b", 79.0, 78.5),
            "pepe-wide-proj2": arm("pepe-wide-proj2", "attendnet_b", 79.5, 79.0),
            "all-three": arm("all-three", "attendnet_b", 78.0, 78.5)}
    lines = presets.library_now(rows)
    assert "**Not the better one found**: pepe-wide-proj2 vs crop035 (attendnet_b)." in lines[2]
    assert "- `crop_scale`, crop035 vs crop008 (attendnet_b): now crop035's (0.35 1), the better one" in lines[4]
    assert lines[6].startswith("- the architecture, pepe-wide-proj2 vs crop035 (attendnet_b): now crop035's "
                               "(the preset), **not the better one** (pepe-wide-proj2's) (+2.00 points")
    assert lines[7] == "- all-three vs crop035 (attendnet_b) changes the architecture and `weight_init` at once: " \
                       "it decides none alone."
    assert "one of two not told apart (-0.50 points, spread 0.50)" in lines[8]
    # a recipe whose crop range is not the train verb's default is neither side's
    monkeypatch.setattr(presets, "recipe", lambda seed: arms.with_option(imagenette.recipe(seed), "--crop-scale",
                                                                          "0.08", "1"))
    assert "crop035 vs crop008 (attendnet_b): now neither side's, **not the better one** (crop035's)" in \
        presets.library_now(rows)[4]


@pytest.mark.parametrize("se, says", [
    (72.0, ["also beats timm's squeeze-excite", "Squeeze-excite loses to the same widened down-mixing"]),
    (77.0, ["squeeze-excite (channel attention) of equal cost beats it by 1.80", "Squeeze-excite beats the same"]),
    (75.3, ["is not told apart from it", "Squeeze-excite beats the same widened down-mixing"]),
    (73.3, ["also beats", "Squeeze-excite is not told apart from the same widened down-mixing"])])
def test_the_ablation_says_whether_attention_earns_its_cost(se, says) -> None:
    def arm(*top1: float) -> dict:
        return {"attendnet_b": {"seeds": {s: {"top1": t, "int8_top1": t} for s, t in enumerate(top1)}}}

    rows = {"attention": arm(75.0, 75.4), "no-attention-wider": arm(73.0, 73.6), "squeeze-excite": arm(se, se)}
    text = ablation.conclusion(rows)
    assert text.startswith("**Attention earns its cost.**") and all(said in text for said in says)
    assert "margin per seed +2.00, +1.80; beyond the larger seed spread, 0.60" in text
    rows["no-attention-wider"] = arm(75.2, 75.1)
    assert ablation.conclusion(rows).startswith("**Attention does not clearly earn its cost.**")
    assert ablation.conclusion({"attention": rows["attention"]}) is None
    assert "squeeze-excite vs no-attention-wider" in ablation.verdict(rows)[-1]


def test_latency_target_needs_both_seeds_and_every_named_runtime() -> None:
    columns = [f"{r}/{t}t" for r in explore_latency.RUNTIMES for t in explore_latency.THREADS]
    fast = {c: 0.3 for c in columns}
    met = explore_latency.verdict("d", {"seeds": [{"top1_int8": 72.0}, {"top1_int8": 80.0}]}, fast, reference=65.0)
    assert "MEETS" in met and "+7.00 points" in met
    low_seed = explore_latency.verdict("d", {"seeds": [{"top1_int8": 71.9}, {"top1_int8": 80.0}]}, fast, reference=65.0)
    assert "does NOT meet" in low_seed
    slow_in_one = explore_latency.verdict("d", {"seeds": [{"top1_int8": 80.0}] * 2}, fast | {columns[-1]: 0.51}, 65.0)
    assert "does NOT meet" in slow_in_one and "0.51x" in slow_in_one
    ms = {"mobilenet_v1": {"ort-int8/1t": 2.0, "tflm": 100.0}, "d": {"ort-int8/1t": 0.5, "tflm": 10.0}}
    assert explore_latency.as_ratios(ms)["d"] == {"ort-int8/1t": 0.25, "tflm": 0.1}


def test_latency_lineup_trains_the_picks_and_mobilenet_v1_at_every_seed(tmp_path) -> None:
    search = tmp_path / "search" / "tpe"
    search.mkdir(parents=True)
    design = tmp_path / "design.json"
    design.write_text(json.dumps(load_preset("attendnet_found_latency").to_dict()))
    pareto = [{"reference": True, "file": "prototype.json", "top1_int8": 90.0, "costs": {"latency_ratio": 1.0}},
              {"reference": False, "file": str(design), "top1_int8": 50.0, "costs": {"latency_ratio": 0.2}}]
    (search / "summary.json").write_text(json.dumps({"pareto": pareto}))
    lineup = explore_latency.lineup(tmp_path)
    assert lineup["fast_tpe"] == (str(tmp_path / "found" / "fast_tpe.json"), explore_latency.SEEDS)
    assert json.loads((tmp_path / "found" / "fast_tpe.json").read_text()) == json.loads(design.read_text())
    assert lineup["mobilenet_v1"][1] == explore_latency.SEEDS and lineup["attendnet_a"][1] == (0,)
    assert "fast_random" not in lineup  # no random search has run


def test_mcu_verdict_checks_every_design_on_its_lower_seed() -> None:
    def runs(*micro_top1: float, arena: float = 200.0) -> list[dict]:
        return [{"top1": t, "micro": {"top1": t, "arena_kb": arena, "file_kb": 500.0}} for t in micro_top1]

    verdicts = mcu.verdict({"mobilenet_v1": runs(64.0, 65.0), "mcu": runs(70.0, 64.5),
                            "found_latency": runs(75.0, 74.0)})
    assert [v.split(":")[0] for v in verdicts] == list(mcu.DESIGNS)
    assert "does NOT meet" in verdicts[0] and "64.50%" in verdicts[0]  # its lower seed is under MobileNet-V1's better
    assert "MEETS" in verdicts[1]
    too_big = mcu.verdict({"mobilenet_v1": runs(64.0), "mcu": runs(80.0, arena=321.0), "found_latency": runs(80.0)})
    assert "does NOT meet" in too_big[0] and "MEETS" in too_big[1]


def test_a_benchmark_ends_bad_input_and_failed_commands_in_one_line(capsys) -> None:
    import subprocess

    from attendnets.errors import AttendNetsError
    from common import run_main

    def no_data() -> int:
        raise AttendNetsError("no dataset given: pass --data DIR or set ATTENDNETS_DATA")

    def failed_step() -> int:
        said = "Traceback\nattendnets eval: error: x.pt: not a checkpoint\n"
        raise subprocess.CalledProcessError(2, ["attendnets", "eval", "x.pt"], stderr=said)

    assert run_main(no_data) == 1 and run_main(failed_step) == 1 and run_main(lambda: None) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(": error: no dataset given: pass --data DIR or set ATTENDNETS_DATA")
    assert lines[1].endswith(
        ": error: attendnets eval x.pt failed (exit status 2): attendnets eval: error: x.pt: not a checkpoint")
    assert len(lines) == 2

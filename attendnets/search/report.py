"""What a search found, as files: ``trials.csv`` (every trial of every rung), ``pareto/<name>.json`` (the
Pareto designs of the highest rung, as spec files that ``attendnets train --spec`` and
``timm.create_model("attendnet", spec=...)`` accept), ``pareto.png`` (top-1 at 8 bits against the cost,
infeasible designs marked, the presets and MobileNets as reference costs) and ``summary.json``.

The reference models' accuracy is not known for the study's data and fidelity, so they appear at their
cost only (their costs, measured once, are cached in ``references.json``); the prototype, re-trained at
every rung, appears with its measured top-1.
"""

from __future__ import annotations

import csv
from collections import Counter
import io
import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from attendnets.errors import AttendNetsError
from attendnets.files import atomic_write, atomic_write_json, atomic_write_text
from attendnets.plots import plot_pareto
from attendnets.registry import BASELINES, PAPER_PRESETS, PRESETS, create_model
from attendnets.search.requirements import COST_LABELS, LATENCY, Deployment, Requirements, latency_meter, measure_costs
from attendnets.search.storage import open_storage, read_study_file, rung_name, study_names
from attendnets.search.trials import TrialStatus, is_feasible, pareto_front, status_of, was_scored
from attendnets.spec import ArchSpec

COST_COLUMNS = ("params", "weight_kb", "macs", "peak_activation_kb", "peak_activation_kb_fp32", "micro_arena_kb",
                "latency_ms", "latency_ratio")
REFERENCE_MODELS = (*PAPER_PRESETS, *BASELINES)
REFERENCES_FILE = "references.json"


def load_rungs(study_dir: Path, storage: optuna.storages.BaseStorage | None = None,
               url: str | None = None) -> list[optuna.Study]:
    """The rung studies of the study in ``study_dir``, in order (``url`` overrides the recorded storage)."""
    info = read_study_file(study_dir)
    if storage is None:
        if info["storage"] and not url:
            url = info["storage"]
            if "***" in url:
                raise AttendNetsError(f"the study lives in {url}: pass --storage with the password")
        storage = open_storage(study_dir, url)
    names = study_names(storage)
    rungs = []
    while rung_name(info["name"], len(rungs)) in names:
        rungs.append(optuna.load_study(study_name=rung_name(info["name"], len(rungs)), storage=storage))
    if not rungs:
        raise AttendNetsError(f"no study {info['name']!r} in its storage")
    return rungs


def write_report(study_dir: Path, storage: optuna.storages.BaseStorage | None = None,
                 url: str | None = None) -> dict[str, Any]:
    """Write the report files of the study in ``study_dir``; returns the summary (also ``summary.json``,
    whose file paths are absolute so that it can be read from anywhere)."""
    study_dir = Path(study_dir).resolve()
    rungs = load_rungs(study_dir, storage, url)
    attrs = rungs[0].user_attrs
    cost = attrs["cost"]
    trials = [(r, t) for r, study in enumerate(rungs) for t in study.get_trials(deepcopy=False)]
    atomic_write_text(study_dir / "trials.csv", _csv(trials))
    top = max((r for r, t in trials if is_feasible(t) and was_scored(t)),
              default=None)
    front = pareto_front([t for r, t in trials if r == top]) if top is not None else []
    designs = _write_pareto(study_dir, attrs, top, front)
    references = reference_costs(study_dir, cost, Deployment(**attrs["deployment"]))
    points = [(r, kind, t.values[1], t.values[0]) for r, t in trials if (kind := _plot_kind(t))]
    rungs_with_trials = sorted({r for r, _ in trials})
    caps = Requirements(**attrs["requirements"]).caps()
    atomic_write(study_dir / "pareto.png", lambda tmp: plot_pareto(
        points, rungs_with_trials, [(t.values[1], t.values[0]) for t in front], references, attrs, COST_LABELS[cost],
        caps, tmp))
    summary = {
        "study": str(study_dir),
        "cost": cost,
        "requirements": attrs["requirements"],
        "deployment": attrs["deployment"],
        "fidelity": attrs["fidelity"],
        "rungs": [_rung_summary(r, study) for r, study in enumerate(rungs)],
        "pareto_rung": top,
        "pareto": designs,
        "references": references,
        "files": {k: str(study_dir / v) for k, v in
                  (("trials", "trials.csv"), ("plot", "pareto.png"), ("pareto", "pareto"), ("summary", "summary.json"))},
    }
    atomic_write_json(study_dir / "summary.json", summary)
    return summary


def _plot_kind(trial: FrozenTrial) -> str | None:
    """How the Pareto plot draws a finished trial (see :func:`attendnets.plots.plot_pareto`); ``None``: not at all."""
    if trial.state != TrialState.COMPLETE:
        return None
    status = status_of(trial)
    if status == TrialStatus.TRAINED:
        return "feasible" if is_feasible(trial) else "infeasible"
    return {TrialStatus.REFERENCE: "reference", TrialStatus.OVER_CAP: "over_cap"}.get(status)


def _rung_summary(rung: int, study: optuna.Study) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    ref = [t for t in done if t.user_attrs.get("reference")]
    statuses = dict(Counter(str(status_of(t) or "?") for t in done))
    return {
        "rung": rung,
        "epochs": study.user_attrs["fidelity"]["epochs"] * study.user_attrs["fidelity"]["eta"] ** rung,
        "trials": len(done),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "feasible": sum(is_feasible(t) for t in done),
        "by_status": statuses,
        "prototype_top1": ref[-1].values[0] if ref else None,
    }


def _write_pareto(study_dir: Path, attrs: dict[str, Any], rung: int | None, front: list[FrozenTrial]) -> list[dict]:
    folder = study_dir / "pareto"
    folder.mkdir(exist_ok=True)
    designs = []
    for t in front:
        spec = ArchSpec.from_dict(t.user_attrs["spec"])
        spec.description = (f"found by attendnets explore: rung {rung} trial {t.number}, hold-out top-1 "
                            f"{t.values[0]:.2f}% at 8 bits ({t.user_attrs['fidelity']['epochs']} epochs at "
                            f"{t.user_attrs['fidelity']['img_size']} px); {attrs['cost']} {t.values[1]:.6g}")
        path = folder / f"{spec.name}.json"
        atomic_write_text(path, spec.to_json() + "\n")
        designs.append({"name": spec.name, "file": str(path), "rung": rung, "trial": t.number,
                        "reference": bool(t.user_attrs.get("reference")), "top1_int8": t.values[0],
                        "top1_float": t.user_attrs.get("top1_float"), "costs": t.user_attrs["costs"]})
    keep = {Path(d["file"]).name for d in designs}
    for old in folder.glob("*.json"):
        if old.name not in keep:
            old.unlink()
    return designs


def _csv(trials: list[tuple[int, FrozenTrial]]) -> str:
    names = sorted({k for _, t in trials for k in t.constraints})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["rung", "trial", "state", "status", "feasible", "reference", "parent", "duplicate_of",
                     "top1_int8", "top1_float", *COST_COLUMNS, *(f"constraint_{n}" for n in names), "epochs",
                     "img_size", "train_seconds", "reason", "choices"])
    for rung, t in trials:
        costs = t.user_attrs.get("costs", {})
        fid = t.user_attrs.get("fidelity", {})
        untrained = status_of(t) in (TrialStatus.OVER_CAP, TrialStatus.UNBUILDABLE)
        writer.writerow([
            rung, t.number, t.state.name, status_of(t) or "",
            int(is_feasible(t)) if t.state == TrialState.COMPLETE else "", t.user_attrs.get("reference", ""),
            t.user_attrs.get("parent", ""), t.user_attrs.get("duplicate_of", ""),
            "" if t.values is None or untrained else f"{t.values[0]:.4f}", t.user_attrs.get("top1_float", ""),
            *(costs.get(c, "") for c in COST_COLUMNS), *(t.constraints.get(n, "") for n in names),
            fid.get("epochs", ""), fid.get("img_size", ""), t.user_attrs.get("train_seconds", ""),
            t.user_attrs.get("reason") or t.user_attrs.get("note", ""), json.dumps(t.params, sort_keys=True),
        ])
    return out.getvalue()


def reference_costs(study_dir: Path, cost: str, deployment: Deployment) -> dict[str, float]:
    """``{model: cost}`` of the presets and MobileNets at the deployment size (cached in the study folder)."""
    path = study_dir / REFERENCES_FILE
    key = f"{cost}@{deployment.img_size}px/{deployment.num_classes}"
    if cost in LATENCY:
        key += f"/{deployment.runtime}/{deployment.threads}t"
    cache = json.loads(path.read_text()) if path.is_file() else {}
    if key not in cache:
        values = {}
        for name in REFERENCE_MODELS:
            if cost in LATENCY:
                model = create_model(name, num_classes=deployment.num_classes)
                values[name] = latency_meter(deployment).measure(model, name)[cost]
            elif name in PRESETS:
                spec = create_model(name, num_classes=deployment.num_classes).spec
                values[name] = measure_costs(spec, deployment, {cost}, {})[cost]
            else:
                values[name] = _timm_cost(name, cost, deployment)
        cache[key] = values
        atomic_write_json(path, cache)
    return cache[key]


def _timm_cost(name: str, cost: str, deployment: Deployment) -> float:
    from attendnets.complexity import profile_model
    from attendnets.quantize import weight_memory

    model = create_model(name, num_classes=deployment.num_classes)
    if cost == "params":
        return float(sum(p.numel() for p in model.parameters()))
    if cost == "weight_kb":
        return weight_memory(model).quantized_bytes / 1024
    if cost == "micro_arena_kb":
        from attendnets.export import profile_for_micro

        return profile_for_micro(model, deployment.img_size).micro_arena_bytes / 1024
    profile = profile_model(model, deployment.img_size)
    return float(profile.macs) if cost == "macs" else profile.peak_activation_bytes_int8 / 1024

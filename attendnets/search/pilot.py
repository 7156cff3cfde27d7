"""The pilot: does the search's cheap rung rank designs the way a longer training does?

A handful of designs (the prototype and distinct random points of the space that meet the requirements,
fixed by a seed) are each trained twice at the search's fidelity (:mod:`attendnets.search.fidelity`, the
same data, seed and recipe): ``low_epochs`` (the cheap rung) and ``high_epochs`` (the expensive one). The
two lists of hold-out top-1 at 8 bits are compared by Kendall's tau-b (with its p-value), by how many of
the top ``k`` designs of one rung are the top ``k`` of the other, and by how far below the best expensive
result the cheap rung's favourite lands.

Everything lives in the output folder, so an interrupted pilot continues where it stopped: each finished
training is ``results/e<epochs>/<design>.json`` (reused when its spec and fidelity match), the sampled
designs ``designs.json``, the verdict ``pilot.json`` and a scatter plot ``pilot.png``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from attendnets.errors import AttendNetsError
from attendnets.files import as_json_data, atomic_write, atomic_write_json, atomic_write_text
from attendnets.plots import plot_pilot
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
from attendnets.search.requirements import LATENCY, Deployment, Requirements, check_runtime, measure_costs
from attendnets.search.settings import COSTS, MIN_DESIGNS
from attendnets.search.space import SearchSpace, load_space
from attendnets.search.storage import first_missing
from attendnets.search.study import Evaluator
from attendnets.spec import ArchSpec, SpecError

log = logging.getLogger(__name__)

PROPOSALS_PER_DESIGN = 50  # random proposals allowed per wanted design before giving up on the requirements


@dataclass
class PilotConfig:
    """Everything that defines a pilot; see ``attendnets explore pilot --help``."""

    space: str = "attendnet_b"
    data: str | None = None  # None: $ATTENDNETS_DATA, else generated data
    synthetic: bool = False
    output: str = "explore/pilot"
    designs: int = 8  # the prototype included
    low_epochs: int = 3
    high_epochs: int = 9
    fidelity: Fidelity = field(default_factory=Fidelity)  # its epochs and eta are not used: the two rungs are given
    requirements: Requirements = field(default_factory=Requirements)
    img_size: int | None = None  # deployment size for the costs; None: the prototype's
    threads: int = 2  # for latency, when capped
    runtime: str = "eager"
    train_threads: int = 1
    top_k: int | None = None  # None: a third of the designs (at least 1)
    seed: int = 0  # which designs are drawn

    def __post_init__(self) -> None:
        if self.designs < MIN_DESIGNS:
            raise AttendNetsError(f"--designs must be at least {MIN_DESIGNS} to rank anything, got {self.designs}")
        if not 1 <= self.low_epochs < self.high_epochs:
            raise AttendNetsError(f"--low-epochs ({self.low_epochs}) must be at least 1 and below --high-epochs "
                                  f"({self.high_epochs})")
        for key in ("threads", "train_threads", "top_k"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise AttendNetsError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        if self.synthetic and self.data:
            raise AttendNetsError("--synthetic generates its own data; drop --data")
        check_runtime(self.runtime)


class RandomChoices:
    """A stand-in trial that answers every question of :meth:`SearchSpace.sample` at random."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        self.params[name] = value = self.rng.choice(list(choices))
        return value


def sample_designs(space: SearchSpace, count: int, deployment: Deployment, requirements: Requirements,
                   seed: int) -> list[dict[str, Any]]:
    """The prototype (always, as the reference) and ``count - 1`` distinct random designs that build and
    meet every cap, each as ``{name, reference, params, spec, costs}``; the same list for the same seed."""
    rng = random.Random(seed)
    caps = requirements.caps()
    designs: list[dict[str, Any]] = []
    seen: set[str] = set()
    proposals = 0
    while len(designs) < count:
        reference = not designs
        if reference:
            params = space.prototype_params()
            spec = space.prototype
        else:
            proposals += 1
            if proposals > PROPOSALS_PER_DESIGN * count:
                raise AttendNetsError(
                    f"only {len(designs) - 1} designs of space {space.name!r} besides the prototype met the "
                    f"requirements ({requirements.describe()}) in {proposals - 1} random proposals; relax a cap or "
                    "ask for fewer --designs")
            chooser = RandomChoices(rng)
            spec = space.sample(chooser)
            params = chooser.params
        key = json.dumps(params, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        spec = replace(spec, name=f"pilot-d{len(designs):02d}", num_classes=deployment.num_classes,
                       img_size=deployment.img_size, description="")
        if reference:  # every cost but latency, whatever the caps (the prototype must build)
            costs = measure_costs(spec, deployment, set(COSTS) - LATENCY, caps)
        else:  # every cost within the caps; a broken cheap cap spares the rest
            try:
                costs = measure_costs(spec, deployment, set(), caps)
            except (SpecError, RuntimeError):
                continue
            if any(costs[c] > cap for c, cap in caps.items() if c in costs):
                continue
        designs.append({"name": spec.name, "reference": reference, "params": params, "spec": spec.to_dict(),
                        "costs": costs})
    return designs


def rank_agreement(low: list[float], high: list[float], top_k: int) -> dict[str, Any]:
    """How well ``low`` ranks the designs as ``high`` does: Kendall's tau-b and its p-value (NaN when one
    list is constant), the overlap of the two top-``k`` sets (ties broken by order), and the regret of
    the cheap rung's favourite: the best ``high`` minus the ``high`` of the design ``low`` ranks first."""
    from scipy.stats import kendalltau

    if len(low) != len(high) or len(low) < 2:
        raise AttendNetsError(f"rank agreement needs two lists of equal length >= 2, got {len(low)} and {len(high)}")
    result = kendalltau(low, high)
    k = min(top_k, len(low))

    def top(values: list[float]) -> set[int]:
        return set(sorted(range(len(values)), key=lambda i: (-values[i], i))[:k])

    pick = max(range(len(low)), key=lambda i: (low[i], -i))
    return {
        "designs": len(low),
        "kendall_tau": float(result.statistic),
        "p_value": float(result.pvalue),
        "top_k": k,
        "top_k_overlap": len(top(low) & top(high)),
        "pick_regret": max(high) - high[pick],
    }


def verdict(stats: dict[str, Any], low_epochs: int, high_epochs: int) -> str:
    """A plain sentence on how well the cheap rung predicts the expensive one."""
    n, tau, p = stats["designs"], stats["kendall_tau"], stats["p_value"]
    if math.isnan(tau):
        return (f"tau undefined on {n} designs: every design scored the same at one of the rungs ({low_epochs} or "
                f"{high_epochs} epochs), so nothing is ranked; train longer or at a higher resolution")
    how = ("ranks designs well" if tau >= 0.7 else "ranks designs fairly well" if tau >= 0.4
           else "ranks designs weakly" if tau >= 0.1 else "does not predict the ranking")
    chance = "" if p < 0.05 else f" (not significant at 5% with {n} designs)"
    return (f"tau {tau:.2f} (p={p:.2g}) on {n} designs, {low_epochs} vs {high_epochs} epochs: the cheap rung {how}"
            f"{chance}; top-{stats['top_k']} overlap {stats['top_k_overlap']}/{stats['top_k']}; its favourite "
            f"is {stats['pick_regret']:.1f} points below the best at {high_epochs} epochs")


class Pilot:
    """Runs (or resumes) one pilot. ``evaluate`` trains and scores a design; tests pass a stand-in."""

    def __init__(self, config: PilotConfig, evaluate: Evaluator = train_and_evaluate) -> None:
        self.config = config
        self.evaluate = evaluate
        self.space = load_space(config.space)
        self.folder = Path(config.output)

    def run(self, progress: bool = True) -> dict[str, Any]:
        """Sample, train what is missing, compare; writes ``pilot.json`` and ``pilot.png``, returns the summary.
        ``progress`` shows a bar on a terminal, elsewhere a log line per finished training. A pilot that fails
        before any training is finished removes the folders it created."""
        created = first_missing(self.folder)
        try:
            return self._run(progress)
        except Exception:
            if created is not None and not any((self.folder / "results").rglob("*.json")):
                shutil.rmtree(created, ignore_errors=True)
            raise

    def _run(self, progress: bool) -> dict[str, Any]:
        cfg = self.config
        self.folder.mkdir(parents=True, exist_ok=True)
        source = source_data(self.folder, self.config.data, self.config.synthetic, cfg.fidelity)
        data = prepare_data(source, self.folder / "data", cfg.fidelity)
        deployment = Deployment(cfg.img_size or self.space.prototype.img_size, len(data.classes), cfg.threads, cfg.runtime)
        designs = sample_designs(self.space, cfg.designs, deployment, cfg.requirements, cfg.seed)
        atomic_write_text(self.folder / "designs.json", json.dumps(designs, indent=1) + "\n")
        rungs = (("low", cfg.low_epochs), ("high", cfg.high_epochs))
        jobs = [(d, label, epochs) for label, epochs in rungs for d in designs]
        with tqdm(total=len(jobs), desc="pilot", unit="training", disable=None if progress else True,
                  dynamic_ncols=True) as bar:
            for done, (design, label, epochs) in enumerate(jobs, 1):
                design[label] = self._result(design, epochs, data)
                line = f"{design['name']} {epochs} ep: {design[label]['top1']:.1f}%"
                if bar.disable:
                    log.info(f"pilot: {line} ({done}/{len(jobs)})")
                bar.set_postfix_str(line, refresh=False)
                bar.update()
        stats = rank_agreement([d["low"]["top1"] for d in designs], [d["high"]["top1"] for d in designs],
                               cfg.top_k or max(1, round(len(designs) / 3)))
        summary = {
            "space": self.space.name,
            "requirements": cfg.requirements.to_dict(),
            "deployment": asdict(deployment),
            "fidelity": {**_training_fidelity(cfg.fidelity), "train_images": data.train_images,
                         "holdout_images": data.holdout_images, "classes": len(data.classes)},
            "low_epochs": cfg.low_epochs,
            "high_epochs": cfg.high_epochs,
            "seed": cfg.seed,
            "train_seconds": {label: sum(d[label]["seconds"] for d in designs) for label, _ in rungs},
            "designs": designs,
            "agreement": stats,
            "verdict": verdict(stats, cfg.low_epochs, cfg.high_epochs),
            "files": {"json": str(self.folder / "pilot.json"), "plot": str(self.folder / "pilot.png")},
        }
        atomic_write(self.folder / "pilot.png", lambda tmp: plot_pilot(summary, tmp))
        atomic_write_json(self.folder / "pilot.json", summary)
        return summary

    def _result(self, design: dict[str, Any], epochs: int, data: FidelityData) -> dict[str, Any]:
        """The design's scores after ``epochs`` epochs: from its result file when the same design was
        trained at the same fidelity, else trained now (and saved)."""
        path = self.folder / "results" / f"e{epochs}" / f"{design['name']}.json"
        fidelity = _training_fidelity(self.config.fidelity)
        if path.is_file():
            saved = json.loads(path.read_text())
            # Read as a fidelity first: a field added since the result was saved takes its default.
            saved_fidelity = _training_fidelity(Fidelity(**saved["fidelity"]))
            if saved["spec"] != design["spec"] or saved_fidelity != fidelity:
                what = "design" if saved["spec"] != design["spec"] else "fidelity"
                raise AttendNetsError(f"{path} holds another {what} than this pilot's {design['name']} (the space, seed, "
                                      "requirements or training options changed); use another --output")
            return saved["scores"]
        run = TrialRun(0, epochs, self.folder / "runs" / f"e{epochs}" / design["name"], data, self.config.fidelity)
        with torch_threads(self.config.train_threads):
            evaluation: Evaluation = self.evaluate(ArchSpec.from_dict(design["spec"]), run)
        scores = {"top1": evaluation.top1, "float_top1": evaluation.float_top1, "seconds": evaluation.seconds,
                  "note": evaluation.note}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"spec": design["spec"], "fidelity": fidelity, "epochs": epochs,
                                            "scores": scores}, indent=1) + "\n")
        return scores


def _training_fidelity(fidelity: Fidelity) -> dict[str, Any]:
    """The fidelity settings that decide a training's result (the rung's epochs aside), as JSON data."""
    return as_json_data({k: v for k, v in fidelity.to_dict().items() if k not in ("epochs", "eta")})

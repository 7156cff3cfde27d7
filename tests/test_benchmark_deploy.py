"""benchmarks/deploy.py's report: results of stages it did not run keep the machine that measured them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import common  # noqa: E402
import deploy  # noqa: E402
import ship  # noqa: E402

VNNI = {"cpu": "Test CPU", "cpu_flags": ["avx2", "avx512_vnni"], "cores": 2}


def bench(threads: int) -> dict:
    """A latency step as ``attendnets bench --json`` writes it, for attendnet_b and MobileNet-V1."""
    rows = [{"model": m, "runtime": "ort-int8", "batch1_median_ms": ms, "batch1_speedup_vs_mobilenet_v1": 5.0 / ms}
            for m, ms in (("attendnet_b", 4.0), ("mobilenet_v1", 5.0))]
    return {"machine": VNNI, "settings": {"threads": threads, "rounds": 10}, "results": rows,
            "command": f"python -m attendnets bench --threads {threads}"}


def test_a_report_without_the_latency_stage_keeps_the_last_reports_with_its_machine(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(deploy, "RESULTS", tmp_path)
    last = {"commit": "a" * 40, "date": "2026-11-01T00:00:00+00:00", "machine": VNNI,
            "latency": {"1t": bench(1), "2t": bench(2)}, "micro": [], "accuracy": {}}
    (tmp_path / "deploy.json").write_text(json.dumps(last))
    monkeypatch.setattr(sys, "argv", ["deploy.py", "--stages", "report", "--runs", str(tmp_path / "runs")])
    assert deploy.main() == 0

    report = json.loads((tmp_path / "deploy.json").read_text())
    assert report["latency"] == last["latency"] and report["commit"] != last["commit"]
    assert report["measured"]["latency"] == {k: last[k] for k in ("commit", "date", "machine")}
    text = (tmp_path / "deploy.md").read_text()
    assert "Machine: Test CPU with avx2, avx512_vnni" in text
    assert "The latency results are an earlier run's: commit `aaaaaaaaaa`, 2026-11-01, on Test CPU" in text
    assert "ort-int8, 1 thread(s): attendnet_b runs at 1.25x MobileNet-V1's speed" in text
    card = "\n".join(ship.latency_lines("attendnet_b", report))
    assert "Test CPU: avx2, avx512_vnni" in card and "measured at commit aaaaaaaaaa" in card

    # A second report keeps where the latency was measured, not where the first report was written.
    assert deploy.main() == 0
    assert json.loads((tmp_path / "deploy.json").read_text())["measured"]["latency"]["commit"] == "a" * 40


def test_the_latency_stage_exports_once_for_both_thread_counts(tmp_path, monkeypatch) -> None:
    calls = []

    def attendnets(command, **kwargs):
        calls.append(command)
        counts = command[command.index("--threads") + 1].split(",")
        reports = [bench(int(count)) for count in counts]
        return SimpleNamespace(stdout=json.dumps(reports if len(counts) > 1 else reports[0]))

    monkeypatch.setattr(common.subprocess, "run", attendnets)
    monkeypatch.setattr(sys, "argv", ["deploy.py", "--runs", str(tmp_path)])
    runs = deploy.latency(deploy.parse_args())

    assert [c[c.index("--threads") + 1] for c in calls] == ["1,2", "1"]
    assert [(key, r["settings"]["threads"]) for key, r in runs.items()] == [("1t", 1), ("2t", 2), ("tflm", 1)]
    assert "--threads 1,2 --rounds 10 --json" in runs["2t"]["command"]
    assert runs["1t"]["command"] == runs["2t"]["command"]
    recorded = json.loads((tmp_path / "bench-threads.json").read_text())
    assert [r["settings"]["threads"] for r in recorded] == [1, 2]
    assert deploy.latency(deploy.parse_args()) == runs and len(calls) == 2  # recorded steps are not run again


def test_accuracy_steps_made_from_another_checkpoint_are_redone(tmp_path) -> None:
    trained, run = tmp_path / "run" / "best", tmp_path / "deploy" / "attendnet_b"
    trained.parent.mkdir()
    trained.with_suffix(".safetensors").write_bytes(b"first weights")
    assert deploy.steps_of(run, trained) == run
    (run / "eval-onnx.json").write_text("{}")
    deploy.steps_of(run, trained)
    assert (run / "eval-onnx.json").is_file()  # the same checkpoint: its steps are kept
    trained.with_suffix(".safetensors").write_bytes(b"retrained weights")
    deploy.steps_of(run, trained)
    assert not (run / "eval-onnx.json").exists() and (run / "checkpoint.json").is_file()
    (run / "checkpoint.json").unlink()
    (run / "eval-onnx.json").write_text("{}")
    deploy.steps_of(run, trained)
    assert not (run / "eval-onnx.json").exists()  # steps of an unrecorded checkpoint: redone too

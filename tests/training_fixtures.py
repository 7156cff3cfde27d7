"""Small models and run settings for the training, checkpoint, evaluation and distributed tests (their data
fixtures, ``synthetic_data`` and ``small_spec_file``, are in ``tests/conftest.py``)."""

from __future__ import annotations

from pathlib import Path

from attendnets.training import TrainConfig

# A few thousand parameters, every block type, learns the synthetic textures at 32 px in seconds.
SMALL_SPEC = {
    "name": "small",
    "num_classes": 4,
    "img_size": 32,
    "blocks": [
        {"type": "conv", "out": 24, "kernel": 3, "stride": 2},
        {"type": "conv", "out": 32, "kernel": 3},
        {"type": "vac", "mid": 16, "embed_groups": 4},
        {"type": "pepe", "proj": 16, "mult": 2, "proj2": 16, "out": 48, "stride": 2},
        {"type": "pepe", "proj": 24, "mult": 2, "proj2": 24, "out": 64, "stride": 2},
    ],
}


def small_config(data: Path, spec: Path, output: Path, **overrides) -> TrainConfig:
    """A deterministic seconds-long run: workers=0, 32 px, batch 32."""
    base = dict(
        model=str(spec), output=str(output), data=str(data), img_size=32, epochs=3, batch_size=32, lr=1e-2, workers=0
    )
    return TrainConfig(**{**base, **overrides})


def interrupt_at_evaluation(monkeypatch, n: int):
    """Make training raise KeyboardInterrupt at its ``n``-th evaluation (raw + EMA: two per epoch), i.e.
    after that epoch's training steps and before its checkpoint; returns the call that restores it."""
    import attendnets.training

    evaluate = attendnets.training.evaluate_model
    calls = []

    def dying_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(attendnets.training, "evaluate_model", dying_evaluate)
    return lambda: monkeypatch.setattr(attendnets.training, "evaluate_model", evaluate)

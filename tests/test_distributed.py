"""Two processes on CPU (gloo), as ``torchrun --nproc_per_node=2`` would start them: the ranks end with
identical weights, evaluation counts every val image once, and only rank 0 writes files."""

from __future__ import annotations

import json
import os
import socket

import torch
import torch.multiprocessing as mp

from attendnets.training import train
from tests.training_fixtures import small_config

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, config, results_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD)
    )
    torch.set_num_threads(1)
    result = train(config)
    torch.save({"weights": result.model.state_dict(), "history": result.history}, f"{results_dir}/rank{rank}.pt")


def test_two_process_training_keeps_ranks_identical(tmp_path, synthetic_data, small_spec_file) -> None:
    out = tmp_path / "run"
    config = small_config(synthetic_data, small_spec_file, out, epochs=2, batch_size=16)
    mp.spawn(_rank, args=(_free_port(), config, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), key
    assert ranks[1]["history"] == []  # rank 1 keeps no records and writes nothing
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[0]["val_images"] == 4 * 24  # each rank evaluates half of val/; the counts are summed
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["best.json", "best.safetensors", "last.json", "last.safetensors", "config.json", "metrics.jsonl",
         "train_state.pt", "curves.png"]
    )

"""Condenser attention maps: the recorded values are the ones the forward pass multiplies by, the statistics
describe them, and ``attendnets attention`` draws and reports them for a trained checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from attendnets.attention import attention_summary, condenser_attention, map_statistics
from attendnets.blocks import VisualAttentionCondenser
from attendnets.cli import main
from attendnets.data import eval_transform, load_rgb
from attendnets.errors import AttendNetsError
from attendnets.model import build_model
from attendnets.spec import ArchSpec
from tests.conftest import TINY_SPEC
from tests.deploy_fixtures import PREPROCESSING

pytestmark = pytest.mark.usefixtures("one_thread")


def test_recorded_values_are_what_the_condenser_multiplies_by() -> None:
    torch.manual_seed(0)
    model = build_model(ArchSpec.from_dict(TINY_SPEC)).eval()
    images = torch.randn(2, 3, 16, 16)
    logits, maps = condenser_attention(model, images)
    assert torch.equal(logits, model(images))
    vac = model.blocks[1]
    assert isinstance(vac, VisualAttentionCondenser) and [m.block for m in maps] == [1]
    with torch.no_grad():
        v = vac.down_mix(model.blocks[0](images))
        expected = torch.sigmoid(vac.embed(vac.condense(v))).repeat_interleave(2, -1).repeat_interleave(2, -2)
    (only,) = maps
    assert only.values.shape == (2, 4, 8, 8) and only.resolution == (8, 8) and only.groups == 2
    assert torch.allclose(only.values, expected[..., :8, :8])
    assert torch.allclose(only.mean_map(), expected.mean(1))
    assert torch.allclose(only.group_maps()[:, 1], expected[:, 2:4].mean(1))
    assert not any(m._forward_hooks for m in model.modules())  # the hooks are gone after the call


def test_statistics_of_a_known_map() -> None:
    values = torch.tensor([[0.2, 0.4], [0.6, 1.0]])
    stats = map_statistics(values)
    assert stats["mean"] == pytest.approx(0.55) and stats["share_above_half"] == 0.5
    assert stats["std"] == pytest.approx(float(values.std(unbiased=False)))


def test_a_model_without_condensers_is_refused() -> None:
    spec = {**TINY_SPEC, "blocks": [b for b in TINY_SPEC["blocks"] if b["type"] != "vac"]}
    with pytest.raises(AttendNetsError, match="no visual attention condenser"):
        condenser_attention(build_model(ArchSpec.from_dict(spec)), torch.zeros(1, 3, 16, 16))


def test_cli_draws_and_reports_the_maps(trained, tmp_path, capsys) -> None:
    images = sorted((trained.data / "val").rglob("*.png"))[:2]
    output = tmp_path / "maps.png"
    args = ["attention", *map(str, images), "--checkpoint", str(trained.checkpoint), "--output", str(output)]
    assert main([*args, "--groups", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    written = [output, tmp_path / "maps-groups-0.png", tmp_path / "maps-groups-1.png"]
    assert report["files"] == [str(p) for p in written]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    batch = torch.stack([eval_transform(PREPROCESSING)(load_rgb(p)) for p in images])
    logits, maps = condenser_attention(trained.model, batch)
    for i, record in enumerate(report["images"]):
        assert record["top_class"] == trained.classes[int(logits[i].argmax())]
        assert record["condensers"] == json.loads(json.dumps(attention_summary(maps, i)))
    assert main(args) == 2  # the grid is never overwritten
    assert "already exists" in capsys.readouterr().err


def test_onnx_attention_outputs_are_the_same_maps(trained, tmp_path) -> None:
    from attendnets.export import OnnxRunner, export_checkpoint, read_onnx_meta

    path = export_checkpoint(trained.checkpoint, tmp_path / "tiny.onnx", attention_outputs=True)
    assert read_onnx_meta(path)["attention_blocks"] == [1]
    images = torch.stack([eval_transform(PREPROCESSING)(load_rgb(p))
                          for p in sorted((trained.data / "val").rglob("*.png"))[:3]])
    runner = OnnxRunner(path)
    logits, attention = runner.session.run(None, {runner.input_name: images.numpy()})
    expected_logits, (maps,) = condenser_attention(trained.model, images)
    assert [o.name for o in runner.session.get_outputs()] == ["logits", "attention_block1"]
    assert torch.allclose(torch.from_numpy(logits), expected_logits, atol=1e-4)
    assert torch.allclose(torch.from_numpy(attention), maps.values, atol=1e-5)
    assert torch.allclose(torch.from_numpy(runner(images)), expected_logits, atol=1e-4)  # the runner's logits

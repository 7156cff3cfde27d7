"""What a runtime really runs of an exported model: layout operators between its convolutions, and the
operators a delegate (XNNPACK) leaves to slower kernels. Both cost time without computing anything the model
needs, so ``attendnets export`` reports them and the tests hold them at zero.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

from attendnets.export.ort import ort_session

LAYOUT_OPS = {
    "onnx": {"Transpose", "Reshape", "Expand", "Unsqueeze", "Squeeze", "Gather", "Tile"},
    "tflite": {"TRANSPOSE", "RESHAPE", "BROADCAST_TO", "EXPAND_DIMS", "SQUEEZE", "GATHER", "TILE"},
}


def _between_convs(ops: list[str], convs: set[str], layout: set[str]) -> dict[str, int]:
    """Count of ``layout`` operators strictly between the first and the last of ``convs`` in ``ops`` (run order)."""
    positions = [i for i, op in enumerate(ops) if op in convs]
    if not positions:
        return {}
    return dict(Counter(op for op in ops[positions[0] : positions[-1]] if op in layout))


def ort_layout_ops(path: str | os.PathLike) -> dict[str, int]:
    """Layout operators between the first and the last quantized conv of ONNX Runtime's optimized graph of
    ``path`` (the graph it runs on this machine's CPU, after its channels-last rewrites)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="attendnets-ort-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        ort_session(path, optimized_path=optimized)
        ops = [node.op_type for node in onnx.load(str(optimized)).graph.node]
    return _between_convs(ops, {"QLinearConv", "NhwcQLinearConv"}, LAYOUT_OPS["onnx"])


def tflite_ops(path: str | os.PathLike) -> list[str]:
    """The operators of a ``.tflite`` file in run order."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    return [op["op_name"] for op in interpreter._get_ops_details()]


def tflite_layout_ops(path: str | os.PathLike) -> dict[str, int]:
    """Layout operators between the first and the last conv of a ``.tflite`` file."""
    convs = {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"}
    return _between_convs(tflite_ops(path), convs, LAYOUT_OPS["tflite"])


def tflite_delegation(path: str | os.PathLike, threads: int = 1) -> dict[str, object]:
    """How LiteRT's XNNPACK delegate partitions a ``.tflite`` file: ``{"partitions": n, "undelegated":
    {operator: count}}``. A node is delegated when it lies inside a delegate node's subgraph: reachable
    backwards from the delegate's outputs without crossing its inputs."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    nodes = interpreter._get_ops_details()
    producer = {t: n["index"] for n in nodes if n["op_name"] != "DELEGATE" for t in n["outputs"]}
    delegated: set[int] = set()
    delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
    for delegate in delegates:
        stop, todo = set(delegate["inputs"]), list(delegate["outputs"])
        while todo:
            tensor = todo.pop()
            if tensor in stop or tensor not in producer or producer[tensor] in delegated:
                continue
            delegated.add(producer[tensor])
            todo += [t for t in nodes[producer[tensor]]["inputs"] if t >= 0]
    rest = Counter(n["op_name"] for n in nodes if n["op_name"] != "DELEGATE" and n["index"] not in delegated)
    return {"partitions": len(delegates), "undelegated": dict(rest)}

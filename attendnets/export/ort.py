"""ONNX Runtime on CPU: sessions with this package's settings, the metadata an exported ``.onnx`` file carries
(see :func:`attendnets.export.onnx.export_onnx`), and a runner that classifies with it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attendnets.errors import AttendNetsError
from attendnets.export.meta import META_KEYS, Runner, as_numpy

FORMAT = "attendnets-onnx"  # the ``format`` metadata entry of a file this package exported


def ort_session(path: str | os.PathLike, threads: int | None = None, profile_prefix: str | os.PathLike | None = None,
                optimized_path: str | os.PathLike | None = None) -> Any:
    """An ONNX Runtime CPU session for the graph ``path``, quiet (errors only), with ``threads`` intra-op
    threads and one inter-op thread (``None``: ONNX Runtime's defaults). ``profile_prefix``: write ONNX
    Runtime's op trace there; ``optimized_path``: save the graph as optimized for this machine there."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_onnx_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The class names, preprocessing and model name stored in an ONNX file written by :func:`export_onnx`."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise AttendNetsError(f"no ONNX file {path}") from None
    except Exception as err:  # onnx raises protobuf's DecodeError and others for a damaged file
        raise AttendNetsError(f"cannot read ONNX file {path}: {err}") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if props.get("format") != FORMAT:
        raise AttendNetsError(f"{path} was not exported by attendnets: it has no class names or preprocessing")
    meta = {}
    for key in META_KEYS:
        try:
            meta[key] = json.loads(props[key])
        except KeyError:
            raise AttendNetsError(f"{path} is damaged: its metadata lacks {key}") from None
        except json.JSONDecodeError as err:
            raise AttendNetsError(f"{path} is damaged: its metadata {key} is not valid JSON ({err})") from None
    meta.update({k: props[k] for k in ("model", "attendnets_version") if k in props})
    for key in ("attention_blocks", "weight_bits"):  # written with attention outputs; by quantize_onnx
        if key in props:
            meta[key] = json.loads(props[key])
    return meta


def is_quantized(path: str | os.PathLike) -> bool:
    """Whether an ONNX graph holds quantized operators (QDQ pairs or QLinear/integer ops)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in graph.node)


class OnnxRunner(Runner):
    """An ONNX Runtime session on CPU for an exported model: ``runner(images) -> logits`` (numpy).

    ``class_names``: the classes of the data it will see; a model trained on other classes is refused.
    ``threads``: ONNX Runtime's intra-op threads (``None``: its default, one per core)."""

    def __init__(
        self, path: str | os.PathLike, class_names: list[str] | None = None, threads: int | None = None
    ) -> None:
        self.path = Path(path)
        self.meta = read_onnx_meta(path)
        self.session = ort_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.num_classes = self.session.get_outputs()[0].shape[-1]
        self.runtime, self.int8 = "ort", is_quantized(path)
        if class_names is not None:
            self.check_classes(class_names)

    def __call__(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: as_numpy(images)})[0]

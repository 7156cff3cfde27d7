"""AttendNets: tiny 8-bit image-recognition networks built from visual attention condensers.

Importing the package registers the presets (``attendnet_a``, ``attendnet_b``, ``attendnet_found_macs``,
``attendnet_found_latency``) and ``attendnet`` (any spec) with timm, so ``import attendnets;
timm.create_model("attendnet_b")`` works, yet the import itself loads neither torch nor timm (the command
line answers ``--help`` at once):

- the public names below are loaded on first use (PEP 562 module ``__getattr__``);
- the registration (:mod:`attendnets.timm_models`) runs at once when timm is already imported, and otherwise
  right after timm gets imported, through :class:`_RegisterWhenTimmLoads`, a finder that wraps timm's loader.
  When it is an attendnets module that imports timm, the registration waits until that module has finished
  loading (it needs ``attendnets.data``, which imports timm, complete).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "PEPE": "attendnets.blocks",
    "ConvNormAct": "attendnets.blocks",
    "VisualAttentionCondenser": "attendnets.blocks",
    "Complexity": "attendnets.complexity",
    "profile_model": "attendnets.complexity",
    "AttendNet": "attendnets.model",
    "build_model": "attendnets.model",
    "create_model": "attendnets.registry",
    "load_preset": "attendnets.registry",
    "ArchSpec": "attendnets.spec",
    "ConvSpec": "attendnets.spec",
    "HeadSpec": "attendnets.spec",
    "PEPESpec": "attendnets.spec",
    "SpecError": "attendnets.spec",
    "VACSpec": "attendnets.spec",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'attendnets' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


class _RegisterWhenTimmLoads(importlib.abc.MetaPathFinder):
    """Until the registration has run: finds ``timm`` and ``attendnets.*`` with the other finders, wraps their
    loaders to count the imports in progress in this thread, and registers once timm is loaded and none of them
    is still executing. Then it takes itself off ``sys.meta_path``; the modules keep their own loaders."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._timm_loaded = self._done = False

    def find_spec(self, name: str, path: Any = None, target: ModuleType | None = None) -> Any:
        if self._done or (name != "timm" and not name.startswith("attendnets.")):
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _CountingLoader(spec.loader, self)
        return spec

    def loading(self, delta: int) -> None:
        self._local.depth = getattr(self._local, "depth", 0) + delta

    def loaded(self, name: str) -> None:
        """After module ``name`` finished loading: register if timm has loaded and nothing else is loading."""
        self._timm_loaded |= name == "timm"
        if self._done or not self._timm_loaded or self._local.depth:
            return
        self._done = True
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        importlib.import_module("attendnets.timm_models")


class _CountingLoader(importlib.abc.Loader):
    """A module's own loader, with :class:`_RegisterWhenTimmLoads` told when its execution starts and ends."""

    def __init__(self, loader: importlib.abc.Loader, hook: _RegisterWhenTimmLoads) -> None:
        self.loader, self.hook = loader, hook

    def __getattr__(self, name: str) -> Any:  # get_code (runpy), get_resource_reader, ...: the module's loader's
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # the module keeps its own loader
        self.hook.loading(+1)
        try:
            self.loader.exec_module(module)
        finally:
            self.hook.loading(-1)
        self.hook.loaded(module.__name__)


if "timm" in sys.modules:
    importlib.import_module("attendnets.timm_models")
else:
    sys.meta_path.insert(0, _RegisterWhenTimmLoads())

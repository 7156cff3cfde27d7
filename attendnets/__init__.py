"""AttendNets: tiny 8-bit image-recognition networks built from visual attention condensers.

Importing the package registers ``attendnet_a``, ``attendnet_b`` and ``attendnet`` (any spec) with timm.
"""

from attendnets.blocks import PEPE, ConvNormAct, VisualAttentionCondenser
from attendnets.complexity import Complexity, profile_model
from attendnets.model import AttendNet, build_model
from attendnets.registry import create_model, load_preset
from attendnets.spec import ArchSpec, ConvSpec, HeadSpec, PEPESpec, SpecError, VACSpec

__version__ = "0.1.0"

__all__ = [
    "PEPE",
    "ArchSpec",
    "AttendNet",
    "Complexity",
    "ConvNormAct",
    "ConvSpec",
    "HeadSpec",
    "PEPESpec",
    "SpecError",
    "VACSpec",
    "VisualAttentionCondenser",
    "build_model",
    "create_model",
    "load_preset",
    "profile_model",
]

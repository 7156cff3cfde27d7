"""Conftest for timm's own model tests run on our models (``.ci/timm_model_tests.sh`` copies it beside timm's
``tests/test_models.py``, fetched from the timm source distribution of the installed version, never kept here).

timm's test module lists the registered models when it is collected: attendnets is imported first, so that
``attendnet_a``, ``attendnet_b`` and ``attendnet`` are among them.
"""

import pytest

import attendnets  # noqa: F401  (registers our models when timm is imported, on the next line)
import timm  # noqa: F401

# The markers timm's test module uses (declared in timm's pyproject.toml, which is not fetched).
TIMM_MARKERS = ("base", "forward", "backward", "cfg", "cfg_nonstd", "torchscript", "features", "fxforward",
                "fxbackward", "timeout(seconds): a time limit, enforced only with pytest-timeout")


def pytest_configure(config: pytest.Config) -> None:
    for marker in TIMM_MARKERS:
        config.addinivalue_line("markers", marker)

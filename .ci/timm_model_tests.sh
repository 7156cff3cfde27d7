#!/usr/bin/env bash
# timm's own model tests on AttendNets (issue 16): tests/test_models.py from the timm source distribution of the
# installed timm version, fetched from PyPI into a temporary folder (not kept in this repository), run with
# `-k attendnet` beside tests/timm_contract/conftest.py (which imports attendnets first), offline from the hub.
# Extra arguments go to pytest. PYTHON: the interpreter with attendnets and timm (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-$PWD/.venv/bin/python}"
version="$("$python" -c 'import importlib.metadata as m; print(m.version("timm"))')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --no-binary :all: "timm==$version" -d "$work"
tar -xzf "$work"/timm-*.tar.gz -C "$work" --strip-components=2 "timm-$version/tests/test_models.py"
cp tests/timm_contract/conftest.py "$work/"
cd "$work"
HF_HUB_OFFLINE=1 "$python" -m pytest -q -p no:cacheprovider test_models.py -k attendnet "$@"

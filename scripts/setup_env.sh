#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the package into it.
# torch is pinned to 2.13.0 first: on the project's machines that resolves to a local CPU wheel,
# while an unpinned torch would pull several GB of CUDA wheels. For a CUDA build, install torch from
# the PyTorch index for your CUDA version before running this script (docs/installation.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "torch==2.13.0"
fi
.venv/bin/pip install -q -e ".[tests,docs,mace]" "${@}"
# test-only Bader reference, without its pymatgen<=2025.10.7 pin (pyproject.toml, extra 'tests')
.venv/bin/pip install -q --no-deps "baderkit==0.10.2"

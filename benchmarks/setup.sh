#!/usr/bin/env bash
# A separate virtualenv for the benchmarks that race other trainers (SAELens, eai-sparsify):
# .venv-bench with the project and its `bench` extra. The main .venv and the tests never see them.
#   bash benchmarks/setup.sh && .venv-bench/bin/python benchmarks/sae_compare.py --help
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
[ -x .venv-bench/bin/python ] || "$PYTHON" -m venv .venv-bench
stamp=.venv-bench/.setup-stamp
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "benchmarks/setup.sh: installing interp-assets[bench] into .venv-bench ..."
    # torch first and alone, pinned: the CPU wheel on local disk (an unpinned torch, or one
    # resolved together with sae-lens, could pull a multi-GB CUDA build).
    .venv-bench/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" 2> >(grep -v "^WARNING: Location" >&2)
    .venv-bench/bin/python -m pip install --quiet --disable-pip-version-check -e ".[bench]" "torch==2.13.0" 2> >(grep -v "^WARNING: Location" >&2)
    touch "$stamp"
fi
echo "benchmarks/setup.sh: .venv-bench ready ($(.venv-bench/bin/python -c 'import torch, sae_lens, sparsify; print(f"torch {torch.__version__}, sae_lens {sae_lens.__version__}, sparsify ok")'))"

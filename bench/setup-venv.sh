#!/usr/bin/env bash
# Create (idempotently) the Python virtual environment that runs the scvi-tools
# reference side of the SCVI benchmark (bench/scvi_tools_reference.py).
#
#   RSCVI_BENCH_VENV    where the venv goes (default ~/.cache/rscvi/bench-venv)
#   RSCVI_BENCH_PYTHON  interpreter to build it from (must be CPython >= 3.12,
#                       which scvi-tools 1.5.1 requires); found automatically
#                       otherwise (python3.12 / python3.13 on PATH or under pyenv)
#   RSCVI_BENCH_UNPINNED=1  install "scvi-tools==1.5.1" and let pip resolve the rest
#                       instead of the pinned bench/requirements-reference.txt
#
# torch comes from PyPI; its Linux wheel pulls in the CUDA runtime packages
# (nvidia-*, several GB) even though the benchmark only runs on the CPU: PyPI has
# no CPU-only torch wheel for Linux, and the CUDA build does not import without them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${RSCVI_BENCH_VENV:-$HOME/.cache/rscvi/bench-venv}"
req="$here/requirements-reference.txt"
want_scvi="1.5.1"

ready() {
  [ -x "$venv/bin/python" ] &&
    "$venv/bin/python" - "$want_scvi" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("scvi-tools") == sys.argv[1]
import scvi, torch, anndata, scipy, pandas  # noqa: F401
PY
}

if ready; then
  echo "bench venv ready: $venv (scvi-tools $want_scvi)"
  exit 0
fi

py_ok() {
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

find_python() {
  if [ -n "${RSCVI_BENCH_PYTHON:-}" ]; then
    py_ok "$RSCVI_BENCH_PYTHON" || { echo "RSCVI_BENCH_PYTHON=$RSCVI_BENCH_PYTHON is not Python >= 3.12" >&2; return 1; }
    echo "$RSCVI_BENCH_PYTHON"; return 0
  fi
  local c
  for c in python3.12 python3.13 python3; do
    if command -v "$c" >/dev/null 2>&1 && py_ok "$(command -v "$c")"; then
      command -v "$c"; return 0
    fi
  done
  local root="${PYENV_ROOT:-$HOME/.pyenv}"
  for c in "$root"/versions/3.12*/bin/python3 "$root"/versions/3.13*/bin/python3; do
    if [ -x "$c" ] && py_ok "$c"; then echo "$c"; return 0; fi
  done
  echo "no Python >= 3.12 found (scvi-tools 1.5.1 needs it); set RSCVI_BENCH_PYTHON" >&2
  return 1
}

py="$(find_python)"
echo "building bench venv at $venv with $py ($("$py" --version 2>&1))"
mkdir -p "$(dirname "$venv")"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
if [ "${RSCVI_BENCH_UNPINNED:-0}" = "1" ] || [ ! -f "$req" ]; then
  "$venv/bin/python" -m pip install "scvi-tools==$want_scvi"
else
  "$venv/bin/python" -m pip install -r "$req"
fi

ready || { echo "bench venv at $venv does not import scvi-tools $want_scvi" >&2; exit 1; }
"$venv/bin/python" -c 'import scvi, torch; print("scvi-tools", scvi.__version__, "torch", torch.__version__)'
echo "bench venv ready: $venv"

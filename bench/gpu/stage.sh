#!/usr/bin/env bash
# Stage what a device call of bench/gpu/session.sh carries, and check it fits:
#   .gpu/rscvi-cli.gz   the CUDA build of rscvi-cli (stripped, gzip'ed)
#   .gpu/rscvi-cli-autotune.gz   with AUTOTUNE=1: the build with burn-cuda's autotune
#   .gpu/cellbench/     cellbench singlets x hvg2000 (bench/gpu/slim_cellbench.py, ~2.5 MB)
#   .gpu/snareseq2/, .gpu/splikit/   the small real MULTIVI / SPLICEVI sets of inst/extdata as
#                       Matrix Market (bench/gpu/export_small.R, ~0.7 MB)
#   .whl/               scvi-tools 1.5.1 and the wheels the device image lacks (fetch-wheels.sh)
# then prints the size of everything that travels (tracked + untracked-not-ignored files +
# the carried folders) against the device's 64 MiB limit.
#
#   bash bench/gpu/stage.sh            # BUILD=1 also runs the cargo build first
#
#   RSCVI_CUDA_BIN   binary to copy (default ~/.cache/rscvi/target-cuda/release/rscvi-cli)
#   CELLBENCH_SRC    full cellbench folder (default /work/shared/data/cellbench)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
target="${RSCVI_CUDA_TARGET:-$HOME/.cache/rscvi/target-cuda}"
bin="${RSCVI_CUDA_BIN:-$target/release/rscvi-cli}"
cb_src="${CELLBENCH_SRC:-/work/shared/data/cellbench}"

build() {
  nice -n 10 cargo build --release -p rscvi-cli --features "$1" \
    --manifest-path src/rust/Cargo.toml --target-dir "$target"
}
# ship gzip'ed and stripped: $1 binary, $2 name in .gpu/
ship() {
  cp -f "$1" /tmp/rscvi-cli-stage
  strip --strip-unneeded /tmp/rscvi-cli-stage 2>/dev/null || true
  file /tmp/rscvi-cli-stage | grep -q 'x86-64' || echo "warning: the binary is not x86-64" >&2
  gzip -9 -c /tmp/rscvi-cli-stage > ".gpu/$2.gz"
  rm -f /tmp/rscvi-cli-stage
  echo "binary: $1 -> .gpu/$2.gz ($(du -h ".gpu/$2.gz" | cut -f1))"
}
if [ "${BUILD:-0}" = 1 ]; then
  build cuda
fi

# .gpu/ is in .gitignore; .whl/ goes to .git/info/exclude (fetch-wheels.sh adds it too)
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
git check-ignore -q .gpu/x || { echo ".gpu/ is not git-ignored" >&2; exit 1; }

mkdir -p .gpu
if [ -x "$bin" ]; then
  # The stripped CUDA binary is ~45 MB: it travels gzip'ed (~11 MB), session.sh unpacks it.
  rm -f .gpu/rscvi-cli
  ship "$bin" rscvi-cli
else
  echo "warning: no binary at $bin (build it: BUILD=1 bash bench/gpu/stage.sh)" >&2
fi
# AUTOTUNE=1: also the build with burn-cuda's autotune (feature cuda-autotune), which
# session.sh times cold at the end; built after the plain one, whose binary it overwrites.
if [ "${AUTOTUNE:-0}" = 1 ]; then
  cp -f "$bin" /tmp/rscvi-cli-plain
  build cuda-autotune && ship "$bin" rscvi-cli-autotune
  cp -f /tmp/rscvi-cli-plain "$bin"
fi

if [ ! -f .gpu/cellbench/matrix.mtx.gz ]; then
  python3 bench/gpu/slim_cellbench.py "$cb_src" .gpu/cellbench
fi
if [ ! -f .gpu/splikit/atse.txt ]; then
  Rscript bench/gpu/export_small.R .gpu
fi
compgen -G ".whl/*.whl" >/dev/null || bash bench/gpu/fetch-wheels.sh

tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
gpu=$(du -sb .gpu | cut -f1)
whl=$(du -sb .whl | cut -f1)
total=$((tree + gpu + whl))
limit=$((64 * 1024 * 1024))
printf 'tree %.1f MiB + .gpu %.1f MiB + .whl %.1f MiB = %.1f MiB of %d MiB\n' \
  "$(echo "$tree / 1048576" | bc -l)" "$(echo "$gpu / 1048576" | bc -l)" \
  "$(echo "$whl / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)" 64
if [ "$total" -gt "$limit" ]; then
  echo "TOO BIG for one device call: shrink .gpu (strip, opt-level, features) or untracked files" >&2
  exit 1
fi
echo "ready: device run with carry [\".gpu\", \".whl\"], command: bash bench/gpu/session.sh"

#!/usr/bin/env bash
# bench/gpu/session.sh — the whole GPU proof of rscvi in ONE device call.
#
# Run on the GPU machine from the repo root, with .gpu/ (rscvi-cli built --features cuda,
# cellbench copy) and .whl/ (scvi-tools wheels) carried (see bench/gpu/README.md):
#
#   bash bench/gpu/session.sh
#
# Steps (each failure is logged and the script goes on):
#   1. install .whl/ into /tmp/site (device README recipe); check `import scvi`
#   2. find libcuda (driver) / libnvrtc / libcudart ... and build LD_LIBRARY_PATH for rscvi
#   3. nvidia-smi; `rscvi-cli device`
#   4. `rscvi-cli synth` for every N (in the background, overlapping step 5, unless
#      OVERLAP_SYNTH=0); falls back to bench/gpu/make_fake_npy.py data if synth fails
#   5. `rscvi-cli gpu-check` (parity vectors on CUDA + cellbench SCVI CPU vs CUDA, MULTIVI
#      and SPLICEVI CPU vs CUDA on the small real sets stage.sh exports, a diverging run)
#   6. per N and batch size: rscvi bench on cuda, then scvi-tools on the same data and
#      settings; GPU memory sampled with nvidia-smi every 200 ms per run
#   6b. with .gpu/rscvi-cli-autotune.gz (stage.sh AUTOTUNE=1): the same SCVI gpu-check with
#      the build that autotunes its kernels, cold, capped at AUTOTUNE_CAP s (default 150)
#   7. results.json + table.md + logs into $OUT (summarize.py after every step)
#
# Time: no step starts after BUDGET s (default 530) and every step is cut at HARD s (575),
# inside the device's 600 s per-call limit. Knobs (environment):
#   NS="10000 1000000 100000"      order of the dataset sizes (1M before 100k: the headline
#                                  result is not the one a short budget drops)
#   BS_<N>="128 1024"              batch sizes per N (BS_1000000 defaults to 1024)
#   EPOCHS_<N>                     epochs per N (10 / 5 / 4 for 1e4 / 1e5 / 1e6)
#   BUDGET, HARD, OVERLAP_SYNTH, SKIP_GPU_CHECK, GPU_CHECK_CAP, FAMILY_CHECK, SKIP_RSCVI, SKIP_SCVI, FAKE_FALLBACK,
#   SYNTH_EXTRA (extra args to synth), BIN, CELLBENCH, WORK, PY; RSCVI_DEVICE=cpu and
#   SCVI_ACCEL=cpu for a dry run on a machine without a GPU
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
ROOT=$(pwd)

T0_MS=${T0_MS:-$(( $(date +%s%N) / 1000000 ))}
OUT=${OUT:-/tmp/rscvi-gpu-out}
WORK=${WORK:-/tmp/rscvi-gpu}
BIN=${BIN:-$ROOT/.gpu/rscvi-cli}
# stage.sh ships the binary gzip'ed to stay under the 64 MiB carry limit
if [ ! -x "$BIN" ] && [ -f "$ROOT/.gpu/rscvi-cli.gz" ]; then
  BIN=/tmp/rscvi-cli
  gunzip -c "$ROOT/.gpu/rscvi-cli.gz" > "$BIN" && chmod +x "$BIN"
fi
# the build with burn-cuda's autotune (stage.sh, AUTOTUNE=1): timed cold after everything else
AUTOTUNE_BIN=
if [ -f "$ROOT/.gpu/rscvi-cli-autotune.gz" ]; then
  AUTOTUNE_BIN=/tmp/rscvi-cli-autotune
  gunzip -c "$ROOT/.gpu/rscvi-cli-autotune.gz" > "$AUTOTUNE_BIN" && chmod +x "$AUTOTUNE_BIN"
fi
AUTOTUNE_CAP=${AUTOTUNE_CAP:-150}
PY=${PY:-python3}
NS=${NS:-"10000 1000000 100000"}
BUDGET=${BUDGET:-530}
HARD=${HARD:-575}
OVERLAP_SYNTH=${OVERLAP_SYNTH:-1}
SKIP_GPU_CHECK=${SKIP_GPU_CHECK:-0}
GPU_CHECK_CAP=${GPU_CHECK_CAP:-240}      # gpu-check's limit (a cold kernel cache compiles for minutes)
FAMILY_CHECK=${FAMILY_CHECK:-1}          # MULTIVI and SPLICEVI in gpu-check too
SKIP_RSCVI=${SKIP_RSCVI:-0}
SKIP_SCVI=${SKIP_SCVI:-0}
FAKE_FALLBACK=${FAKE_FALLBACK:-1}
SYNTH_EXTRA=${SYNTH_EXTRA:-}
RSCVI_DEVICE=${RSCVI_DEVICE:-cuda}       # cpu / gpu only for a dry run off the GPU machine
SCVI_ACCEL=${SCVI_ACCEL:-gpu}
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
export MPLCONFIGDIR=/tmp/mplconfig NUMBA_CACHE_DIR=/tmp/numba-cache
# jax is on the image; keep it off the GPU should anything import it
export XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_PLATFORMS=cpu

# everything into $OUT/session.log as well; re-run through a pipe (rather than exec into a
# process substitution) so that tee has written the last line when this script returns
if [ -z "${RSCVI_SESSION_INNER:-}" ]; then
  rm -rf "$WORK/runs" "$WORK/data" "$WORK/gpucheck"   # a warm machine may hold an earlier call's runs
  mkdir -p "$OUT" "$WORK/runs" "$WORK/data" "$WORK/gpucheck"
  RSCVI_SESSION_INNER=1 T0_MS=$T0_MS bash "$ROOT/bench/gpu/session.sh" "$@" 2>&1 | tee -a "$OUT/session.log"
  exit "${PIPESTATUS[0]}"
fi

FAILS=0
elapsed() { echo $(( ($(date +%s%N) / 1000000 - T0_MS) / 1000 )); }
secs_since() { awk -v a="$(( $(date +%s%N) / 1000000 ))" -v b="$1" 'BEGIN{printf "%.3f", (a-b)/1000}'; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
log() { echo "[session $(printf '%4d' "$(elapsed)")s] $*"; }
past_budget() { (( $(elapsed) >= BUDGET )); }
# capped CAP cmd...: run with a time limit of min(CAP, HARD - elapsed)
capped() {
  local cap=$1; shift
  local left=$(( HARD - $(elapsed) ))
  (( cap > left )) && cap=$left
  if (( cap < 5 )); then log "no time left for: $*"; return 124; fi
  timeout -k 10 "$cap" "$@"
}
# jw FILE key=value ...: small JSON record (numbers, true/false/null, else strings)
jw() {
  "$PY" -I - "$@" <<'EOF'
import json, re, sys
d = {}
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    if re.fullmatch(r"-?\d+", v):
        v = int(v)
    elif re.fullmatch(r"-?\d*\.\d+", v):
        v = float(v)
    elif v in ("true", "false", "null"):
        v = {"true": True, "false": False, "null": None}[v]
    d[k] = v
with open(sys.argv[1], "w") as fh:
    json.dump(d, fh)
EOF
}
summarize() { "$PY" -I "$ROOT/bench/gpu/summarize.py" --work "$WORK" --out "$OUT" "$@" || true; }

SMI=$(command -v nvidia-smi || ls /usr/local/nvidia/bin/nvidia-smi /usr/bin/nvidia-smi 2>/dev/null | head -1)
MEMPID=
mem_now() { [ -n "$SMI" ] && "$SMI" --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1 | tr -d ' '; }
mem_start() {
  MEMPID=
  [ -n "$SMI" ] || return 0
  "$SMI" --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$1" 2>/dev/null &
  MEMPID=$!
}
mem_stop() {
  if [ -n "$MEMPID" ]; then kill "$MEMPID" 2>/dev/null; wait "$MEMPID" 2>/dev/null; fi
  MEMPID=
}
SYNPID=
on_exit() {
  mem_stop
  [ -n "$SYNPID" ] && kill "$SYNPID" 2>/dev/null
  summarize --quiet
}
trap on_exit EXIT

log "start: $(date -u +%FT%TZ) root=$ROOT OUT=$OUT WORK=$WORK budget=${BUDGET}s hard=${HARD}s NS='$NS'"
uname -a; nproc; free -g | head -2; df -h /tmp | tail -1

# ---------------------------------------------------------------- 1. wheels -> /tmp/site
SCVI_OK=0
if [ "$SKIP_SCVI" != 1 ]; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    log "installing $(ls .whl/*.whl | wc -l) wheels into /tmp/site"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl; then
      SCVI_OK=1
    else
      log "FAIL: wheel install"; FAILS=$((FAILS + 1))
    fi
  else
    log "no .whl/ wheels: trying the image's own scvi-tools"; SCVI_OK=1
  fi
fi
SCVI_PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}

# ------------------------------------------------- 2. CUDA libraries for rscvi (cubecl/cudarc)
SHIM=/tmp/rscvi-cudalib
mkdir -p "$SHIM"
cand=(/usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /lib/x86_64-linux-gnu
      /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
for d in /usr/local/cuda-*/lib64 /usr/local/cuda-*/targets/x86_64-linux/lib /opt/cuda*/lib64; do
  [ -d "$d" ] && cand+=("$d")
done
while IFS= read -r d; do [ -n "$d" ] && cand+=("$d"); done < <("$PY" - <<'EOF' 2>/dev/null
import os
seen = []
try:
    import nvidia  # PyTorch's CUDA wheels (nvidia-cuda-nvrtc, nvidia-cuda-runtime, ...)
    for base in list(nvidia.__path__):
        for root, dirs, files in os.walk(base):
            if any(f.startswith("lib") and ".so" in f for f in files):
                seen.append(root)
except Exception:
    pass
try:
    import torch
    seen.append(os.path.join(os.path.dirname(torch.__file__), "lib"))
except Exception:
    pass
print("\n".join(seen))
EOF
)
while IFS= read -r f; do [ -n "$f" ] && cand+=("$(dirname "$f")"); done < <(ldconfig -p 2>/dev/null |
  awk '/lib(cuda|nvrtc|cudart)\.so/ {print $NF}')
LIBDIRS=()
add_dir() { local d; for d in "${LIBDIRS[@]:-}"; do [ "$d" = "$1" ] && return; done; LIBDIRS+=("$1"); }
for lib in libcuda.so libnvrtc.so libnvrtc-builtins.so libcudart.so libcublas.so libcublasLt.so libnvJitLink.so; do
  found=
  for d in "${cand[@]}"; do
    case "$d" in *stubs*) continue ;; esac      # a toolkit's stub libcuda cannot run anything
    f=$(ls -1 "$d/$lib" "$d/$lib".* 2>/dev/null | sort -V | tail -1)
    if [ -n "$f" ]; then found=$f; break; fi
  done
  if [ -z "$found" ] && [ "$lib" = libcuda.so -o "$lib" = libnvrtc.so ]; then
    found=$(timeout 30 find / -xdev \( -path /proc -o -path /sys -o -path '*stubs*' \) -prune -o \
      -name "$lib*" -print 2>/dev/null | sort -V | tail -1)
  fi
  if [ -n "$found" ]; then
    real=$(readlink -f "$found")
    echo "  $lib -> $found ($real)"
    add_dir "$(dirname "$found")"
    [ -e "$(dirname "$found")/$lib" ] || ln -sf "$real" "$SHIM/$lib"
    if [ "$lib" = libcuda.so ] && [ ! -e "$(dirname "$found")/libcuda.so.1" ]; then ln -sf "$real" "$SHIM/libcuda.so.1"; fi
  else
    echo "  $lib: NOT FOUND"
  fi
done
RLD=$SHIM
for d in "${LIBDIRS[@]:-}"; do [ -n "$d" ] && RLD=$RLD:$d; done
RLD=$RLD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
log "rscvi LD_LIBRARY_PATH=$RLD"
RSCVI_OK=0
if [ "$SKIP_RSCVI" != 1 ]; then
  if [ -x "$BIN" ]; then
    RSCVI_OK=1
    ls -la "$BIN"
    LD_LIBRARY_PATH=$RLD ldd "$BIN" 2>&1 | grep -Ei 'not found|cuda|nvrtc' || true
  else
    log "FAIL: $BIN missing or not executable"; FAILS=$((FAILS + 1))
  fi
fi
RSCVI=(env LD_LIBRARY_PATH="$RLD" "$BIN")   # an array, not a function: `timeout` runs it

# ---------------------------------------------------------------- 3. GPU facts
if [ -n "$SMI" ]; then
  "$SMI"
  GPU=$("$SMI" --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
else
  log "nvidia-smi not found"; GPU="?"
fi
[ -x /usr/local/cuda/bin/nvcc ] && /usr/local/cuda/bin/nvcc --version | tail -2
capped 90 env PYTHONPATH="$SCVI_PYTHONPATH" "$PY" - "$WORK/pyinfo.json" <<'EOF'
import json, platform, sys
d = {"python": platform.python_version()}
try:
    import torch
    d.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
             cuda_available=torch.cuda.is_available())
except Exception as e:
    d["torch_error"] = repr(e)
try:
    import lightning
    import scvi
    import scvi.model  # noqa: F401
    d.update(scvi_tools=scvi.__version__, scvi_file=scvi.__file__,
             lightning=lightning.__version__)
except Exception as e:
    d["scvi_error"] = repr(e)
json.dump(d, open(sys.argv[1], "w"))
print("python:", json.dumps(d))
EOF
PYINFO=$(cat "$WORK/pyinfo.json" 2>/dev/null)
case "$PYINFO" in
  *scvi_error*|*torch_error*|"")
    if [ "$SCVI_OK" = 1 ]; then SCVI_OK=0; log "FAIL: python side not usable"; FAILS=$((FAILS + 1)); fi ;;
esac
if [ "$SCVI_OK" = 1 ]; then
  PYTHONPATH=$SCVI_PYTHONPATH "$PY" -m pip check 2>&1 | grep -Ei 'scvi|anndata|scanpy|pydantic|zarr|mudata|pyro|numcodecs' | head -20 || true
fi
"$PY" -I - "$WORK/env.json" "$GPU" "$PYINFO" "$BUDGET" "$HARD" "$NS" "$RLD" <<'EOF'
import json, os, sys
f, gpu, pyinfo, budget, hard, ns, rld = sys.argv[1:8]
parts = [p.strip() for p in gpu.split(",")]
try:
    py = json.loads(pyinfo)
except Exception:
    py = {"raw": pyinfo}
json.dump({"gpu": parts[0] if parts else gpu, "driver": parts[1] if len(parts) > 1 else None,
           "memory_total": parts[2] if len(parts) > 2 else None, "python": py,
           "budget_s": int(budget), "hard_s": int(hard), "ns": ns.split(),
           "cpu_count": os.cpu_count(), "rscvi_ld_library_path": rld}, open(f, "w"), indent=1)
EOF
if [ "$RSCVI_OK" = 1 ]; then
  log "rscvi-cli device"
  capped 60 "${RSCVI[@]}" device || log "rscvi-cli device: rc $?"
fi

# ---------------------------------------------------------------- datasets
CELLBENCH=${CELLBENCH:-}
if [ -z "$CELLBENCH" ]; then
  for d in "$ROOT/.gpu/cellbench" "$ROOT/shared/data/cellbench" /work/shared/data/cellbench; do
    [ -f "$d/matrix.mtx.gz" ] && { CELLBENCH=$d; break; }
  done
fi
log "cellbench: ${CELLBENCH:-NOT FOUND}"
synth_cap() { case $1 in 1000000) echo 300 ;; 100000) echo 150 ;; *) echo 120 ;; esac; }
make_data() {
  local n=$1 d="$WORK/data/N$1" t rc=1 src=none
  t=$(now_ms)
  rm -rf "$d"
  if [ "$RSCVI_OK" = 1 ] && [ -n "$CELLBENCH" ]; then
    log "synth N=$n"
    # shellcheck disable=SC2086
    capped "$(synth_cap "$n")" "${RSCVI[@]}" synth \
      --source-mtx "$CELLBENCH/matrix.mtx.gz" --source-obs "$CELLBENCH/obs.tsv.gz" \
      --source-features "$CELLBENCH/features.tsv.gz" --source-genes "$CELLBENCH/hvg2000.txt" \
      --filter demuxlet_cls=SNG --batch-key batch --cells "$n" --seed 0 --out "$d" $SYNTH_EXTRA
    rc=$?
    [ "$rc" = 0 ] && [ -f "$d/meta.json" ] && src=synth
    log "synth N=$n rc=$rc ($(secs_since "$t") s)"
  fi
  if [ "$src" = none ] && [ "$FAKE_FALLBACK" = 1 ]; then
    log "N=$n: no synth data; writing fake counts (make_fake_npy.py)"
    rm -rf "$d"
    capped 200 "$PY" "$ROOT/bench/gpu/make_fake_npy.py" --cells "$n" --genes 2000 --batches 5 \
      --seed 0 --out "$d" && src=fake
  fi
  [ -f "$d/meta.json" ] && cat "$d/meta.json"
  jw "$WORK/data/N$n.status.json" n_cells="$n" source="$src" rc="$rc" seconds="$(secs_since "$t")"
}
if [ "$OVERLAP_SYNTH" = 1 ]; then
  log "synth for N in $NS in the background (log: $OUT/synth.log)"
  ( for n in $NS; do make_data "$n"; done ) >"$OUT/synth.log" 2>&1 &
  SYNPID=$!
fi

# ---------------------------------------------------------------- 5. gpu-check
if [ "$RSCVI_OK" = 1 ] && [ "$SKIP_GPU_CHECK" != 1 ] && [ -n "$CELLBENCH" ]; then
  log "gpu-check"
  t=$(now_ms)
  FAMILY=()   # MULTIVI and SPLICEVI on real data too, when stage.sh exported them
  if [ "$FAMILY_CHECK" = 1 ]; then
    [ -f "$ROOT/.gpu/snareseq2/matrix.mtx.gz" ] && FAMILY+=(--multivi "$ROOT/.gpu/snareseq2")
    [ -f "$ROOT/.gpu/splikit/matrix.mtx.gz" ] && FAMILY+=(--splicevi "$ROOT/.gpu/splikit")
  fi
  capped "$GPU_CHECK_CAP" "${RSCVI[@]}" gpu-check --cellbench "$CELLBENCH" "${FAMILY[@]}" --out "$WORK/gpucheck"
  rc=$?
  log "gpu-check rc=$rc ($(secs_since "$t") s)"
  [ "$rc" = 0 ] || FAILS=$((FAILS + 1))
  jw "$WORK/gpucheck/status.json" rc="$rc" seconds="$(secs_since "$t")" overlapped_synth="$OVERLAP_SYNTH"
  [ -f "$WORK/gpucheck/gpu-check.json" ] && cp "$WORK/gpucheck/gpu-check.json" "$OUT/gpu-check.json"
  summarize --quiet
fi
if [ -n "$SYNPID" ]; then
  log "waiting for synth"
  wait "$SYNPID"; SYNPID=
  log "synth log:"; cat "$OUT/synth.log"
fi

# ---------------------------------------------------------------- 6. benchmark runs
bench_run() {
  local tool=$1 n=$2 b=$3 e=$4
  local tag="$tool-N$n-B$b"
  local d="$WORK/runs/$tag" data="$WORK/data/N$n" cap=240 base t rc src
  [ "$n" = 1000000 ] && cap=330
  if past_budget; then log "SKIP $tag: past the ${BUDGET}s budget"; return; fi
  if [ ! -f "$data/meta.json" ]; then log "SKIP $tag: no data for N=$n"; return; fi
  src=$("$PY" -I -c 'import json,sys; print(json.load(open(sys.argv[1])).get("source","?"))' \
        "$WORK/data/N$n.status.json" 2>/dev/null || echo "?")
  rm -rf "$d"; mkdir -p "$d"
  base=$(mem_now)
  log "RUN $tag: $e epochs (GPU memory before: ${base:-?} MiB)"
  mem_start "$d/mem.txt"
  t=$(now_ms)
  if [ "$tool" = rscvi ]; then
    capped "$cap" "${RSCVI[@]}" bench --data "$data" --epochs "$e" --batch-size "$b" --device "$RSCVI_DEVICE" --out "$d"
  else
    capped "$cap" env PYTHONPATH="$SCVI_PYTHONPATH" "$PY" "$ROOT/bench/gpu/scvi_tools_synthetic.py" \
      --data "$data" --epochs "$e" --batch-size "$b" --out "$d" --accelerator "$SCVI_ACCEL"
  fi
  rc=$?
  mem_stop
  log "END $tag rc=$rc ($(secs_since "$t") s)"
  [ "$rc" = 0 ] || FAILS=$((FAILS + 1))
  jw "$d/run.json" tool="$tool" n_cells="$n" batch_size="$b" epochs="$e" rc="$rc" \
    wall_seconds="$(secs_since "$t")" baseline_mib="${base:-null}" data_source="$src"
  summarize --quiet
}
for n in $NS; do
  if [ "$OVERLAP_SYNTH" != 1 ]; then
    if past_budget; then log "SKIP synth N=$n: past budget"; continue; fi
    make_data "$n"
  fi
  bsv="BS_$n"; epv="EPOCHS_$n"
  case $n in 1000000) dbs="1024"; dep=4 ;; 100000) dbs="128 1024"; dep=5 ;; *) dbs="128 1024"; dep=10 ;; esac
  for b in ${!bsv:-$dbs}; do
    [ "$RSCVI_OK" = 1 ] && bench_run rscvi "$n" "$b" "${!epv:-$dep}"
    [ "$SCVI_OK" = 1 ] && bench_run scvi-tools "$n" "$b" "${!epv:-$dep}"
  done
  rm -rf "$WORK/data/N$n"/*.npy   # free disk / page cache for the next size
done

# ------------------------------------------- 6b. the autotune build's cold start, SCVI only
if [ -n "$AUTOTUNE_BIN" ] && [ "$RSCVI_OK" = 1 ] && [ -n "$CELLBENCH" ]; then
  if past_budget; then
    log "SKIP autotune gpu-check: past the ${BUDGET}s budget"
  else
    log "gpu-check with the autotune build (its own, cold kernel cache)"
    t=$(now_ms)
    mkdir -p "$WORK/gpucheck-autotune"
    capped "$AUTOTUNE_CAP" env LD_LIBRARY_PATH="$RLD" RSCVI_GPU_CACHE=/tmp/rscvi-autotune-cache \
      "$AUTOTUNE_BIN" gpu-check --cellbench "$CELLBENCH" --epochs 10 --out "$WORK/gpucheck-autotune"
    log "autotune gpu-check rc=$? ($(secs_since "$t") s)"
    [ -f "$WORK/gpucheck-autotune/gpu-check.json" ] &&
      cp "$WORK/gpucheck-autotune/gpu-check.json" "$OUT/gpu-check-autotune.json"
  fi
fi

# ---------------------------------------------------------------- 7. summary
trap - EXIT
mem_stop
log "done; $FAILS failed step(s); files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
echo
summarize
exit $(( FAILS > 0 ? 1 : 0 ))

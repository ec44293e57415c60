#!/usr/bin/env bash
# Installs what building and testing rscvi needs. Idempotent: a second run only checks
# (dpkg -s, rustc --version) and returns in about a second; apt runs only when something
# is missing. CRAN is not used: every R package comes from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PKGS="r-base-dev r-cran-testthat r-bioc-singlecellexperiment r-bioc-scater
  r-cran-seurat r-cran-seuratobject r-cran-knitr r-cran-rmarkdown pandoc pkg-config
  r-cran-uwot r-cran-jsonlite r-cran-matrix r-cran-roxygen2 libhdf5-dev r-bioc-hdf5array"
# Minimum rustc: the workspace's rust-version (burn 0.21 needs 1.92).
MSRV=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' src/rust/Cargo.toml 2>/dev/null | head -n 1)
MSRV=${MSRV:-1.92}

missing=""
for p in $DEBIAN_PKGS; do
  # dpkg -s also succeeds for removed-but-not-purged packages: look at the Status line.
  status=$(dpkg -s "$p" 2>/dev/null | sed -n 's/^Status: //p' || true)
  case "$status" in
    *"install ok installed"*) ;;
    *) missing="$missing $p" ;;
  esac
done

if [ -n "$missing" ]; then
  echo "install-deps: installing Debian packages:$missing"
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  # --no-install-recommends matters: with recommends the R packages pull ~1.7 GB.
  $SUDO apt-get update -q
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
else
  echo "install-deps: Debian packages present"
fi

# Rust: rustup cannot be downloaded on this network, so only check and explain.
export PATH="$PATH:$HOME/.cargo/bin"
for tool in cargo rustc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "install-deps: ERROR: '$tool' not found on PATH or in \$HOME/.cargo/bin." >&2
    echo "  rscvi needs Rust >= $MSRV (cargo + rustc); install it with rustup" >&2
    echo "  (https://rustup.rs) and re-run." >&2
    exit 1
  fi
done
rustc_v=$(rustc --version | sed 's/^rustc \([0-9][0-9.]*\).*/\1/')
if [ "$(printf '%s\n%s\n' "$MSRV" "$rustc_v" | sort -V | head -n 1)" != "$MSRV" ]; then
  echo "install-deps: ERROR: rustc $rustc_v is older than the required $MSRV;" >&2
  echo "  run 'rustup update stable'." >&2
  exit 1
fi
echo "install-deps: $(cargo --version), $(rustc --version)"

# Download all crates now so later builds can run with RSCVI_OFFLINE=true / --offline.
# Quick no-op when the registry cache already holds them.
if [ -f src/rust/Cargo.toml ]; then
  cargo fetch --quiet --manifest-path src/rust/Cargo.toml
fi

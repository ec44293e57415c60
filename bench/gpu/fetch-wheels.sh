#!/usr/bin/env bash
# Download, into .whl/ at the repo root, the wheels that scvi-tools 1.5.1 needs on the
# GPU device machine beyond what its image already holds (torch, lightning, numpy,
# scipy, pandas, scikit-learn, numba, h5py, ... are there; see
# /work/.library/device/KINDS.md, "Python packages already there").
#
# The list below is the dependency closure of scvi-tools==1.5.1 (scanpy[skmisc] extra
# included, as scvi-tools asks for it) minus the device image's packages, at the
# versions of the tested CPU venv (bench/requirements-reference.txt), plus two small
# pure-Python ones the image may hold too old (see the end of the list). One version each:
# two versions of one package stop the device-side install.
#
#   bash bench/gpu/fetch-wheels.sh          # idempotent; run from anywhere
#
# .whl/ is git-ignored through .git/info/exclude (added here if missing) and is carried
# to the device with carry [".gpu", ".whl"]; it counts towards the 64 MiB tree limit.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
py="${RSCVI_WHEEL_PYTHON:-python3}"   # any python with pip: --python-version pins 3.12

wheels=(
  scvi-tools==1.5.1
  anndata==0.13.4
  annotated-types==0.8.0
  array-api-compat==1.16.0
  docrep==0.3.2
  donfig==0.8.1.post1
  fast-array-utils==1.5.1
  google-crc32c==1.9.0
  legacy-api-wrap==1.5
  ml-collections==1.1.0
  msgspec==0.22.0
  mudata==0.4.1
  natsort==8.4.0
  numcodecs==0.17.1
  pydantic==2.14.3
  pydantic-core==2.50.4
  pydantic-settings==2.16.3
  pynndescent==0.7.0
  pyro-api==0.1.2
  pyro-ppl==1.9.2
  python-dotenv==1.2.4
  scanpy==1.12.4
  scikit-misc==0.5.3
  scverse-misc==0.1.7
  session-info2==0.4.2
  sparse==0.19.3
  typing-inspection==0.4.5
  umap-learn==0.5.12
  zarr==3.4.2
  # on the image too, but the wheels above need newer than may be there
  # (pydantic-core: typing-extensions>=4.16; scanpy: packaging>=25); both are pure
  # Python and backwards compatible, so shadowing the image's copy is harmless
  typing-extensions==4.16.0
  packaging==26.3
)

exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
more=()
for n in 24 31 34 35 39; do more+=(--platform "manylinux_2_${n}_x86_64"); done

tmp=".whl.tmp"
rm -rf "$tmp"; mkdir -p "$tmp"
for w in "${wheels[@]}"; do
  base=(-m pip download -q --no-deps --only-binary=:all: --python-version 3.12
        --implementation cp -d "$tmp")
  if ! "$py" "${base[@]}" "${plat[@]}" "$w"; then
    echo "retrying $w with more manylinux tags" >&2
    if ! "$py" "${base[@]}" "${plat[@]}" "${more[@]}" "$w"; then
      # sdist-only on PyPI (docrep): build the wheel here; only a pure-Python
      # (py3-none-any) result is portable to the device
      echo "building $w from its sdist" >&2
      "$py" -m pip wheel -q --no-deps --no-binary=:all: -w "$tmp" "$w"
      stem="$(echo "${w%%==*}" | tr -- '-.' '__')"
      compgen -G "$tmp/$stem-*-none-any.whl" >/dev/null ||
        { echo "$w did not build a pure-Python wheel" >&2; exit 1; }
    fi
  fi
done

# exactly one wheel per requested name
n_want=${#wheels[@]}; n_got=$(ls "$tmp"/*.whl | wc -l)
if [ "$n_got" -ne "$n_want" ]; then
  echo "expected $n_want wheels, got $n_got:" >&2; ls "$tmp" >&2; exit 1
fi
rm -rf .whl; mv "$tmp" .whl
ls -1 .whl
du -sh .whl
echo "total bytes: $(du -sb .whl | cut -f1)"

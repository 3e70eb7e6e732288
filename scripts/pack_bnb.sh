#!/usr/bin/env bash
# Build .gpu_deps/: what the GPU suite needs that the H200 image lacks, small enough to carry.
#
#   scripts/pack_bnb.sh [PYTHON]      # default .venv/bin/python
#
# - bitsandbytes: its .py files plus libbitsandbytes_cuda130.so (torch there is 2.11+cu130)
#   and libbitsandbytes_cpu.so, copied from the installed package (~5.5 MB of its 125 MB);
#   BNB_CUDA=cuda128 (say) picks another library for another CUDA build of torch.
# - msgspec, if stagewatch/, trainer/ or benchmarks/ import it: a cp312 manylinux wheel (Python 3.12 there),
#   fetched with pip and unpacked.
# .gpu_deps/ is git-ignored: name it in the device tool's `carry` (see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
CUDA="${BNB_CUDA:-cuda130}"
OUT=.gpu_deps
src="$("$PY" -c 'import os, importlib.util as u; print(os.path.dirname(u.find_spec("bitsandbytes").origin))')"
for lib in "libbitsandbytes_${CUDA}.so" libbitsandbytes_cpu.so; do
  [[ -f "$src/$lib" ]] || { echo "pack_bnb: $src/$lib not found (bitsandbytes $("$PY" -c 'import importlib.metadata as m; print(m.version("bitsandbytes"))'))" >&2; exit 1; }
done
rm -rf "$OUT/bitsandbytes"
mkdir -p "$OUT/bitsandbytes"
(cd "$src" && find . -name '*.py' -o -name 'py.typed') | while read -r f; do
  mkdir -p "$OUT/bitsandbytes/$(dirname "$f")"
  cp "$src/$f" "$OUT/bitsandbytes/$f"
done
cp "$src/libbitsandbytes_${CUDA}.so" "$src/libbitsandbytes_cpu.so" "$OUT/bitsandbytes/"
ver="$("$PY" -c 'import importlib.metadata as m; print(m.version("bitsandbytes"))')"
# the package reads its own version from its metadata: carry a minimal dist-info
rm -rf "$OUT"/bitsandbytes-*.dist-info
mkdir -p "$OUT/bitsandbytes-$ver.dist-info"
printf 'Metadata-Version: 2.1\nName: bitsandbytes\nVersion: %s\n' "$ver" > "$OUT/bitsandbytes-$ver.dist-info/METADATA"
if grep -rqE '^\s*(import|from) msgspec' stagewatch trainer benchmarks 2>/dev/null; then
  mver="$("$PY" -c 'import importlib.metadata as m; print(m.version("msgspec"))')"
  tmp="$(mktemp -d)"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$tmp" "msgspec==$mver"
  rm -rf "$OUT/msgspec"
  "$PY" -m zipfile -e "$tmp"/msgspec-*.whl "$OUT"
  rm -rf "$tmp"
fi
du -sh "$OUT"
echo "pack_bnb: $OUT ready (bitsandbytes $ver, $CUDA); carry it: [\"$OUT\"]"

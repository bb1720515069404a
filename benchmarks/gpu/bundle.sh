#!/usr/bin/env bash
# Build .gpu/ for a GPU machine that has torch + torchvision but no mmengine/mmcv/mmdet and
# no package registry (this project's lent H200: Python 3.12, torch 2.11). Run here, in a
# checkout with a set-up .venv; then, on the GPU machine (the `device` tool, carrying
# .gpu/site and .gpu/shims):
#   export PYTHONPATH=$PWD/.gpu/shims:$PWD/.gpu/site:$PWD
#   python3 benchmarks/gpu/check_cuda.py out.json
#   python3 benchmarks/benchmark.py --device cuda --depth 50 --batch 2 --size 800 --width 1344 \
#       --channels-last --amp-dtype bfloat16 --json out.json
# mmengine and mmdet travel as their pure-Python wheels, mmcv as its Python files (its
# compiled ops are never called by a ResNet); sitecustomize.py stubs what is left.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
G="$ROOT/.gpu"
grep -qx '/.gpu/' "$(git -C "$ROOT" rev-parse --git-path info/exclude)" 2>/dev/null \
    || echo '/.gpu/' >>"$(git -C "$ROOT" rev-parse --git-path info/exclude)"
rm -rf "$G/site" "$G/wheels" && mkdir -p "$G/site" "$G/wheels" "$G/shims"
PIP_CONFIG_FILE=/dev/null "$ROOT/.venv/bin/pip" download -q --no-deps --only-binary :all: \
    --python-version 3.12 --platform manylinux2014_x86_64 -d "$G/wheels" \
    mmengine==0.10.7 mmdet==3.3.0 addict yapf==0.43.0 termcolor rich markdown-it-py mdurl \
    pygments terminaltables platformdirs six python-dateutil packaging tqdm
for w in "$G"/wheels/*.whl; do unzip -q -o "$w" -d "$G/site"; done
"$ROOT/.venv/bin/python" - "$G/site/mmcv" <<'PY'
import os, shutil, sys
import mmcv
shutil.copytree(os.path.dirname(mmcv.__file__), sys.argv[1], ignore=shutil.ignore_patterns(
    '*.so', '__pycache__', 'csrc', '*.cu', '*.cpp', '*.h', '*.cuh'))
PY
cp "$ROOT/benchmarks/gpu/sitecustomize.py" "$G/shims/"
du -sh "$G/site"

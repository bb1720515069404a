#!/usr/bin/env bash
# One idempotent setup step for resnet_backbone.
#
#   bash tools/setup.sh          # create/refresh .venv/ with the pinned OpenMMLab stack
#
# It creates .venv/ in the repo root and installs, in this order and pinned by
# constraints.txt: torch + torchvision (the registry build, whose torchvision ops
# load), mmengine, mmcv built from source with its compiled ops, mmdet, then this
# project in editable mode with its dev extra. A second run with nothing to do only
# checks the stamp and the imports, and finishes in a few seconds.
#
# Every failure ends in ONE line saying what broke and how to fix it; the full
# output of the failing step is kept in .venv/setup-logs/.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
LOGS="$VENV/setup-logs"
CONSTRAINTS="$ROOT/constraints.txt"
STAMP="$VENV/.setup-stamp"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

say() { printf '[setup] %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

pin() {  # pin NAME -> version from constraints.txt
    local v
    v=$(grep -E "^$1==" "$CONSTRAINTS" | head -n1 | cut -d= -f3)
    [ -n "$v" ] || die "constraints.txt has no pin for $1; add a line '$1==VERSION'."
    printf '%s' "$v"
}

# run_step NAME HINT CMD... : runs CMD with its output in a log; on failure prints one
# line naming the step, the likely cause and the fix (plus the log path).
run_step() {
    local name="$1" hint="$2"; shift 2
    local log="$LOGS/${name// /_}.log"
    local t0=$SECONDS
    say "$name ..."
    if "$@" >"$log" 2>&1; then
        say "$name done ($((SECONDS - t0)) s)"
        return 0
    fi
    local why="$hint"
    if grep -qiE 'No matching distribution|Could not find a version|Failed to establish|Connection(Error| refused)|Max retries exceeded|HTTP error|403 Forbidden|Temporary failure in name resolution|ReadTimeout' "$log"; then
        why="a download was refused or failed (no access to the package registry?); check the network/proxy and re-run 'bash tools/setup.sh'"
    elif grep -qiE 'No space left on device' "$log"; then
        why="the disk is full (the venv needs about 5 GB); free space and re-run 'bash tools/setup.sh'"
    fi
    printf 'setup: ERROR in step "%s": %s. Full log: %s\n' "$name" "$why" "$log" >&2
    exit 1
}

# ---- preconditions ---------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' on PATH; install Python >= 3.10 or set PYTHON=/path/to/python3."
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "Python $("$PYTHON" -c 'import platform; print(platform.python_version())') is too old; resnet_backbone needs >= 3.10 (set PYTHON=/path/to/python3.11)."
[ -f "$CONSTRAINTS" ] || die "constraints.txt is missing from $ROOT; restore it from git."

want_stamp=$(cat "$CONSTRAINTS" "$ROOT/pyproject.toml" "$ROOT/tools/setup.sh" | sha256sum | cut -d' ' -f1)

quick_check() {
    "$PY" - <<'EOF' >/dev/null 2>&1
import torchvision, torch, mmengine, mmcv, mmdet, resnet_backbone  # noqa: F401
import mmcv._ext  # noqa: F401  compiled ops
torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
EOF
}

if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ] && quick_check; then
    say "environment is up to date (.venv), nothing to do"
    exit 0
fi

T_START=$SECONDS
if [ ! -x "$PY" ]; then
    "$PYTHON" -m venv "$VENV" 2>"/tmp/resnet_backbone_venv.log" \
        || die "could not create .venv ($(tail -n1 /tmp/resnet_backbone_venv.log)); on Debian/Ubuntu: apt-get install python3-venv."
    say "created $VENV"
fi
mkdir -p "$LOGS"
PIP=("$PY" -m pip install -c "$CONSTRAINTS")

run_step "pip and build tools" "could not install pip/setuptools/wheel/ninja" \
    "${PIP[@]}" --upgrade pip setuptools wheel ninja

# torch + torchvision: must come from the registry, and must really import together.
TV_CHECK='import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)'
if ! "$PY" -c "$TV_CHECK" >/dev/null 2>&1; then
    # A CPU-only torch (+cpu local version) cannot load torchvision's ops: replace it.
    if "$PY" -c 'import torch, sys; sys.exit(0 if "+cpu" in torch.__version__ else 1)' >/dev/null 2>&1; then
        run_step "remove CPU-only torch" "could not uninstall the CPU-only torch wheel" \
            "$PY" -m pip uninstall -y torch torchvision
    fi
    # This machine's pip is pointed (by PIP_FIND_LINKS and pip.conf) at a local folder
    # holding a CPU-only torch wheel, with which torchvision cannot import (`operator
    # torchvision::nms does not exist`). Only the registry build pairs with torchvision,
    # so this one step reads no pip config at all (pip ignores an empty PIP_FIND_LINKS).
    run_step "torch and torchvision" "could not install torch $(pin torch) + torchvision $(pin torchvision) (about 2.7 GB of wheels)" \
        env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "${PIP[@]}" "torch==$(pin torch)" "torchvision==$(pin torchvision)"
    "$PY" -c "$TV_CHECK" >"$LOGS/torchvision_check.log" 2>&1 \
        || die "torchvision $(pin torchvision) does not work with the installed torch ($(tail -n1 "$LOGS/torchvision_check.log")); remove .venv and re-run 'bash tools/setup.sh'."
fi

run_step "mmengine" "could not install mmengine $(pin mmengine)" \
    "${PIP[@]}" "mmengine==$(pin mmengine)"

# mmcv: no registry wheels for this torch; build from source with compiled ops.
if ! "$PY" -c "import mmcv, mmcv._ext, sys; sys.exit(0 if mmcv.__version__ == '$(pin mmcv)' else 1)" >/dev/null 2>&1; then
    command -v "${CC:-gcc}" >/dev/null 2>&1 && command -v "${CXX:-g++}" >/dev/null 2>&1 \
        || die "no C/C++ compiler found, needed to build mmcv's ops; install one (Debian/Ubuntu: apt-get install build-essential) and re-run."
    "$PY" -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' \
        || die "Python headers (Python.h) are missing, needed to build mmcv's ops; install them (Debian/Ubuntu: apt-get install python3-dev) and re-run."
    "$PY" -m pip uninstall -y mmcv mmcv-lite >/dev/null 2>&1
    say "building mmcv $(pin mmcv) with compiled ops: about 13 min on 2 cores the first time, seconds when pip's wheel cache has it"
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" run_step "mmcv build" \
        "the mmcv $(pin mmcv) build failed (compiler error or missing headers: see the log); fix the cause and re-run 'bash tools/setup.sh'" \
        "${PIP[@]}" --no-build-isolation "mmcv==$(pin mmcv)"
    "$PY" -c 'import mmcv._ext' >"$LOGS/mmcv_check.log" 2>&1 \
        || die "mmcv was installed but its compiled ops do not load ($(tail -n1 "$LOGS/mmcv_check.log")); run 'pip cache remove mmcv' and re-run 'bash tools/setup.sh'."
fi

run_step "mmdet" "could not install mmdet $(pin mmdet)" \
    "${PIP[@]}" "mmdet==$(pin mmdet)"

run_step "resnet_backbone (editable, dev extra)" "could not install this project; check pyproject.toml" \
    "${PIP[@]}" --no-build-isolation -e "$ROOT[dev]"

quick_check || die "the stack installed but does not import; run '.venv/bin/python -m resnet_backbone.doctor' to see which piece is broken."
echo "$want_stamp" >"$STAMP"
say "done in $((SECONDS - T_START)) s; check it any time with: .venv/bin/python -m resnet_backbone.doctor"

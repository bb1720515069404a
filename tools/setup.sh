#!/usr/bin/env bash
# One idempotent setup step for resnet_backbone.
#
#   bash tools/setup.sh          # create/refresh .venv/ with the pinned OpenMMLab stack
#   PYTHON=/path/to/python3.13 bash tools/setup.sh     # the interpreter for a new venv
#   VENV=/tmp/venv313 bash tools/setup.sh              # another venv folder
#   STACK=latest bash tools/setup.sh                   # pins from constraints-latest.txt
#   STACK=onedl bash tools/setup.sh                    # the onedl-* forks (constraints-onedl.txt)
#   MMCV_OPS=compiled bash tools/setup.sh              # mmcv's own compiled ops (a C++ compiler, 13+ min)
#
# It creates .venv/ in the repo root and installs, in this order and pinned by
# constraints.txt: torch + torchvision (the registry build, whose torchvision ops
# load), mmengine, mmcv, mmdet, then this project in editable mode with its dev extra.
# A second run with nothing to do only checks the stamp and the imports, and finishes
# in a few seconds.
#
# mmcv comes one of two ways (MMCV_OPS):
#   torchvision (default)  mmcv-lite, mmcv's Python without compiled ops (a pure-Python
#                          wheel; the onedl fork is built from its sdist without ops, no
#                          compiler either). This project's install adds the .pth import
#                          hook that answers `import mmcv._ext` with resnet_backbone/ops/
#                          mmcv_ext.py, torchvision's ops in mmcv's calling convention
#                          (docs/ops.md). No C/C++ compiler, no nvcc.
#   compiled               mmcv built from source with its compiled ops, as below. Where a
#                          compiled mmcv._ext is installed it wins over the hook.
#
# With MMCV_OPS=compiled, mmcv is built once per torch build: `pip wheel` writes it to
# $RB_WHEEL_CACHE/torch-<torch version>/ (default ~/.cache/resnet_backbone/wheels), and
# only that folder is installed from, so a wheel built against another torch is never
# reused (pip's own wheel cache keys on the sdist, not on torch). The torch it was built
# for is recorded next to the package (mmcv/BUILT_WITH_TORCH.json), which the doctor
# checks. On Python >= 3.13 or torch >= 2.14 the sdist is patched first (tools/patches/,
# each patch says why).
#
# Every failure ends in ONE line saying what broke and how to fix it; the full
# output of the failing step is kept in .venv/setup-logs/.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
LOGS="$VENV/setup-logs"
CONSTRAINTS="$ROOT/constraints${STACK:+-$STACK}.txt"
WHEELS="${RB_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/resnet_backbone/wheels}"
STAMP="$VENV/.setup-stamp"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

say() { printf '[setup] %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

# dist NAME: the distribution that provides the import package NAME (mmengine, mmcv, mmdet)
# on this stack. constraints-onedl.txt pins the maintained forks, which install the same
# import packages under other names (onedl-mmengine, onedl-mmcv, onedl-mmdetection).
dist() {
    local fork="onedl-$1"
    [ "$1" = mmdet ] && fork=onedl-mmdetection
    if grep -qE "^$fork==" "$CONSTRAINTS" 2>/dev/null; then printf '%s' "$fork"; else printf '%s' "$1"; fi
}

pin() {  # pin NAME -> version from constraints.txt
    local v
    # (only unmarked pins are read here; a '; python_version ...' marker is pip's business)
    v=$(grep -E "^$1==[^;]*$" "$CONSTRAINTS" | head -n1 | cut -d= -f3 | tr -d ' ')
    [ -n "$v" ] || die "$(basename "$CONSTRAINTS") has no pin for $1; add a line '$1==VERSION'."
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
    if grep -qE 'metadata-generation-failed|Getting requirements to build (wheel|editable) did not run successfully|Preparing metadata \((setup\.py|pyproject\.toml)\) did not run successfully|setup\.py egg_info did not run successfully' "$log"; then
        # pip ran the package's setup.py to read its name/version/requirements, and
        # that died: nothing was compiled yet, so "compiler error" would mislead.
        local last
        last=$(grep -E '^[[:space:]]*[A-Za-z_][A-Za-z0-9_.]*(Error|Exception|Exit|Interrupt)(:|$)' "$log" | tail -n1 | sed -e 's/^[[:space:]]*//')
        why="pip's metadata generation failed (${last:-no Python error in the log}): the package's setup.py crashed on Python ${PY_VERSION:-?} before anything was compiled; use a Python it supports (PYTHON=/path/to/python3.11) or a patch in tools/patches/, then re-run 'bash tools/setup.sh'"
    elif grep -q 'The user requested (constraint)' "$log" && grep -qE 'conflicting dependencies|ResolutionImpossible' "$log"; then
        # e.g. constraints-latest.txt's torchvision==0.29.2 against a pip.conf cap <=0.29.1
        local specs spec needs=''
        specs=$(grep -o 'The user requested (constraint) [^ ]*' "$log" | sed 's/.* //' | sort -u | paste -sd, - | sed 's/,/, /g')
        # or a pin with no release for this Python (numpy==2.4.6 on 3.10): the resolver
        # names only the pin, so ask pip about each pin alone, which names Requires-Python
        for spec in $(grep -o 'The user requested (constraint) [^ ]*==[^ ]*' "$log" | sed 's/.* //' | sort -u); do
            needs=$("$PY" -m pip install --dry-run --no-deps --ignore-installed "$spec" 2>&1 \
                | grep -oE "(^|[ ,:;])${spec#*==} Requires-Python [^;,]+" | head -n1 | sed 's/.* Requires-Python //')
            [ -n "$needs" ] && break
        done
        if [ -n "$needs" ]; then
            why="$spec ($(basename "$CONSTRAINTS")) has no release for Python $PY_VERSION: it requires Python $needs; use such a Python (PYTHON=/path/to/python3.11), then re-run 'bash tools/setup.sh'"
        else
            why="pip's constraints conflict ($specs): a pip configuration outside this repo adds its own constraints (see 'pip config list'; on the build machines /etc/xdg/pip/pip.conf caps torch/torchvision); lift it or use the default stack, then re-run 'bash tools/setup.sh'"
        fi
    elif grep -qiE 'No matching distribution|Could not find a version|Failed to establish|Connection(Error| refused)|Max retries exceeded|HTTP error|403 Forbidden|Temporary failure in name resolution|ReadTimeout' "$log"; then
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
# Run it once: a command that exists but does not run (a pyenv shim of a version that
# is not active exits 127, a broken install crashes) is named as such, not as "too old".
py_out=$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>&1)
py_rc=$?
py_first=$(printf '%s\n' "$py_out" | grep -m1 '[^[:space:]]' | sed -e 's/^[[:space:]]*//')  # the cause, where it failed
py_out=$(printf '%s\n' "$py_out" | tail -n1)
if [ "$py_rc" -ne 0 ] || ! [[ "$py_out" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
    die "PYTHON='$PYTHON' ($(command -v "$PYTHON")) does not run (exit $py_rc: ${py_first:-no output}); set PYTHON to a working interpreter, e.g. PYTHON=\$(pyenv root)/versions/3.11.7/bin/python3.11 (a pyenv shim runs only for an active version)."
fi
PY_VERSION="$py_out"
IFS=. read -r py_major py_minor _ <<<"$PY_VERSION"
[ "$py_major" -eq 3 ] && [ "$py_minor" -ge 10 ] \
    || die "Python $PY_VERSION ($PYTHON) is too old; resnet_backbone needs >= 3.10 (set PYTHON=/path/to/python3.11)."
[ -f "$CONSTRAINTS" ] || die "$(basename "$CONSTRAINTS") is missing from $ROOT; restore it from git (or unset STACK)."

MMCV_OPS="${MMCV_OPS:-torchvision}"
case "$MMCV_OPS" in
    torchvision|compiled) ;;
    *) die "MMCV_OPS='$MMCV_OPS' is not a choice: use MMCV_OPS=torchvision (the default: mmcv-lite with torchvision's ops, no compiler) or MMCV_OPS=compiled (builds mmcv's own ops: a C++ compiler and 13+ min)." ;;
esac

want_stamp=$( (echo "MMCV_OPS=$MMCV_OPS"; cat "$CONSTRAINTS" "$ROOT/pyproject.toml" "$ROOT/tools/setup.sh" "$ROOT"/tools/patches/* "$ROOT/setup.py" "$ROOT/resnet_backbone_ops_hook.pth" 2>/dev/null) | sha256sum | cut -d' ' -f1)

# quick_check: the stack imports, mmcv's ops run, and mmcv._ext is the backend asked for
# (a compiled one, or resnet_backbone's torchvision one through the .pth hook)
quick_check() {
    "$PY" - "$MMCV_OPS" <<'EOF' >/dev/null 2>&1
import sys
import torchvision, torch, mmengine, mmcv, mmdet, resnet_backbone  # noqa: F401
import mmcv._ext, mmcv.ops
assert getattr(mmcv._ext, 'BACKEND', 'compiled') == sys.argv[1]
mmcv.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
EOF
}

# mmcv_for_this_torch: mmcv at the pinned version, its compiled ops load, and the
# record written at its install says it was built against the installed torch.
MMCV_RECORD=BUILT_WITH_TORCH.json
mmcv_for_this_torch() {
    "$PY" - "$(pin "$(dist mmcv)")" "$MMCV_RECORD" <<'EOF' >/dev/null 2>&1
import hashlib, json, os, sys
import torch, mmcv, mmcv._ext  # noqa: F401
assert mmcv.__version__ == sys.argv[1]
pkg = os.path.dirname(mmcv.__file__)
with open(os.path.join(pkg, sys.argv[2])) as f:
    record = json.load(f)
assert record['torch'] == torch.__version__
with open(os.path.join(pkg, record['ext']), 'rb') as f:  # the record is about this build
    assert hashlib.sha256(f.read()).hexdigest() == record['ext_sha256']
EOF
}

# mmcv_lite_ready: mmcv's Python at the pinned version and no compiled ops in its folder
# (a compiled mmcv._ext would win over the hook)
mmcv_lite_ready() {
    "$PY" - "$(pin "$(dist mmcv)")" <<'EOF' >/dev/null 2>&1
import glob, os, sys
import mmcv
assert mmcv.__version__ == sys.argv[1]
assert not glob.glob(os.path.join(os.path.dirname(mmcv.__file__), '_ext*'))
EOF
}
mmcv_ready() {
    if [ "$MMCV_OPS" = compiled ]; then mmcv_for_this_torch; else mmcv_lite_ready; fi
}

if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ] && quick_check && mmcv_ready; then
    say "environment is up to date ($VENV), nothing to do"
    exit 0
fi

T_START=$SECONDS
if [ ! -x "$PY" ]; then
    venv_log=$(mktemp)
    "$PYTHON" -m venv "$VENV" 2>"$venv_log" \
        || die "could not create $VENV ($(tail -n1 "$venv_log")); on Debian/Ubuntu: apt-get install python3-venv."
    say "created $VENV"
fi
mkdir -p "$LOGS"
PIP=("$PY" -m pip install -c "$CONSTRAINTS")
PY_VERSION=$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || echo "$PY_VERSION")

# onedl-mmcv's build also imports packaging (>= 24.2): installed where the stack pins it
BUILD_TOOLS=(pip setuptools wheel)
[ "$MMCV_OPS" = compiled ] && BUILD_TOOLS+=(ninja)
grep -qE '^packaging==' "$CONSTRAINTS" && BUILD_TOOLS+=(packaging)
run_step "pip and build tools" "could not install ${BUILD_TOOLS[*]}" \
    "${PIP[@]}" --upgrade "${BUILD_TOOLS[@]}"

# torch + torchvision: must come from the registry, and must really import together.
TV_CHECK='import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)'
# ... and at the pinned versions (a changed pin replaces them; local labels like +cu130 aside)
TV_PINNED="import sys, torch, torchvision; sys.exit(0 if (torch.__version__.split('+')[0], torchvision.__version__.split('+')[0]) == ('$(pin torch)', '$(pin torchvision)') else 1)"
if ! { "$PY" -c "$TV_CHECK" && "$PY" -c "$TV_PINNED"; } >/dev/null 2>&1; then
    # A CPU-only torch (+cpu local version) cannot load torchvision's ops: replace it.
    if "$PY" -c 'import torch, sys; sys.exit(0 if "+cpu" in torch.__version__ else 1)' >/dev/null 2>&1; then
        run_step "remove CPU-only torch" "could not uninstall the CPU-only torch wheel" \
            "$PY" -m pip uninstall -y torch torchvision
    fi
    # This machine's pip is pointed (by PIP_FIND_LINKS and pip.conf) at a local folder
    # holding a CPU-only torch wheel, with which torchvision cannot import (`operator
    # torchvision::nms does not exist`). Only the registry build pairs with torchvision,
    # so this one step reads no pip config at all (pip ignores an empty PIP_FIND_LINKS).
    TORCH_REINSTALLED=1
    run_step "torch and torchvision" "could not install torch $(pin torch) + torchvision $(pin torchvision) (about 2.7 GB of wheels)" \
        env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "${PIP[@]}" "torch==$(pin torch)" "torchvision==$(pin torchvision)"
    "$PY" -c "$TV_CHECK" >"$LOGS/torchvision_check.log" 2>&1 \
        || die "torchvision $(pin torchvision) does not work with the installed torch ($(tail -n1 "$LOGS/torchvision_check.log")); remove .venv and re-run 'bash tools/setup.sh'."
fi

# Switching a venv between the upstream stack and the onedl forks: both install the
# packages mmengine/mmcv/mmdet, so the other family's distributions go first.
if [ "$(dist mmengine)" = mmengine ]; then
    OTHER_FAMILY=(onedl-mmengine onedl-mmcv onedl-mmcv-lite onedl-mmdetection)
else
    OTHER_FAMILY=(mmengine mmcv mmcv-lite mmdet)
fi
if "$PY" -m pip show "${OTHER_FAMILY[@]}" 2>/dev/null | grep -q '^Name:'; then
    run_step "remove the other OpenMMLab family" "could not uninstall ${OTHER_FAMILY[*]}" \
        "$PY" -m pip uninstall -y "${OTHER_FAMILY[@]}"
fi

MMENGINE_DIST=$(dist mmengine)
run_step "mmengine" "could not install $MMENGINE_DIST $(pin "$MMENGINE_DIST")" \
    "${PIP[@]}" "$MMENGINE_DIST==$(pin "$MMENGINE_DIST")"

# mmcv: no registry wheels for this torch; build from source with compiled ops, once per
# torch build (see the top of this file), and record the torch it was built against.
MMCV_DIST=$(dist mmcv)
MMCV_V=$(pin "$MMCV_DIST")
TORCH_V=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)
record_mmcv_build() {  # record_mmcv_build SOURCE: mmcv/BUILT_WITH_TORCH.json for the doctor
    "$PY" - "$TORCH_V" "$1" "$MMCV_RECORD" <<'EOF' || die "could not record the torch mmcv was built against (in mmcv's package folder); check that the venv is writable."
import glob, hashlib, json, os, sys
import mmcv
pkg = os.path.dirname(mmcv.__file__)
ext = sorted(glob.glob(os.path.join(pkg, '_ext*.so')))[0]
with open(ext, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
with open(os.path.join(pkg, sys.argv[3]), 'w') as f:
    json.dump({'torch': sys.argv[1], 'ext': os.path.basename(ext), 'ext_sha256': digest,
               'source': sys.argv[2]}, f, indent=1)
EOF
}
MMCV_PKG=$("$PY" -c 'import os, mmcv; print(os.path.dirname(mmcv.__file__))' 2>/dev/null)
if [ "$MMCV_OPS" = torchvision ]; then
    if ! mmcv_lite_ready; then
        # a compiled mmcv (or the other kind of the fork) goes first: its _ext would win
        "$PY" -m pip uninstall -y mmcv mmcv-lite onedl-mmcv onedl-mmcv-lite >/dev/null 2>&1
        if [ "$MMCV_DIST" = mmcv ]; then
            run_step "mmcv-lite" "could not install mmcv-lite $MMCV_V (a pure-Python wheel)" \
                "${PIP[@]}" "mmcv-lite==$MMCV_V"
        else
            # the fork has no -lite wheel: its sdist built without ops is one (no compiler).
            # Its setup.py has no MMCV_WITH_OPS switch: it compiles mmcv._ext whenever it
            # can import torch, and leaves the ops out only where torch is absent. So this
            # build runs in pip's isolated build environment (setuptools, wheel, packaging
            # from the sdist's pyproject, pinned by --build-constraint; no torch), never
            # with --no-build-isolation. With its dependencies: onedl-mmengine does not
            # bring opencv-python, which mmcv imports. --no-cache-dir keeps this ops-less
            # wheel out of pip's cache, where a later compiled install could pick it up.
            run_step "$MMCV_DIST (no ops)" \
                "could not build $MMCV_DIST $MMCV_V without ops (see the log)" \
                "${PIP[@]}" --build-constraint "$CONSTRAINTS" --no-cache-dir "$MMCV_DIST==$MMCV_V"
        fi
        mmcv_lite_ready || die "mmcv $MMCV_V was installed but does not import as mmcv-lite (see $LOGS); remove $VENV and re-run 'bash tools/setup.sh'."
    fi
elif [ "${TORCH_REINSTALLED:-0}" = 0 ] && [ "${RB_REBUILD_MMCV:-0}" = 0 ] && [ -n "$MMCV_PKG" ] \
        && [ ! -e "$MMCV_PKG/$MMCV_RECORD" ] \
        && "$PY" -c "import sys, mmcv, mmcv._ext; sys.exit(0 if mmcv.__version__ == '$MMCV_V' else 1)" >/dev/null 2>&1; then
    # An mmcv installed before setup kept records (torch untouched by this run): adopt
    # it rather than rebuild for 13 min; the record says so and the doctor shows it.
    say "$MMCV_DIST $MMCV_V is installed without a record of its torch: assuming torch $TORCH_V (RB_REBUILD_MMCV=1 bash tools/setup.sh rebuilds it)"
    record_mmcv_build "adopted: installed before tools/setup.sh recorded builds"
fi
if [ "$MMCV_OPS" = compiled ] && ! mmcv_for_this_torch; then
    PY_TAG=$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
    WHEEL_DIR="$WHEELS/torch-$TORCH_V"
    find_wheel() { ls "$WHEEL_DIR"/"${MMCV_DIST//-/_}"-"$MMCV_V"-"$PY_TAG"-*.whl 2>/dev/null | head -n1; }
    wheel=$(find_wheel)
    if [ -n "$wheel" ]; then
        say "$MMCV_DIST $MMCV_V for torch $TORCH_V ($PY_TAG) is in the wheel cache: $wheel"
    else
        command -v "${CC:-gcc}" >/dev/null 2>&1 && command -v "${CXX:-g++}" >/dev/null 2>&1 \
            || die "no C/C++ compiler found, needed by MMCV_OPS=compiled to build mmcv's ops; install one (Debian/Ubuntu: apt-get install build-essential), or use the default (no MMCV_OPS: mmcv-lite with torchvision's ops, no compiler), and re-run."
        "$PY" -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' \
            || die "Python headers (Python.h) are missing, needed to build mmcv's ops; install them (Debian/Ubuntu: apt-get install python3-dev) and re-run."
        mkdir -p "$WHEEL_DIR" || die "cannot create the wheel cache $WHEEL_DIR; set RB_WHEEL_CACHE to a writable folder."
        # Patches the sdist needs here (tools/patches/, each file says why); with none
        # (Python 3.10-3.12 and torch 2.13, the default stack) the registry sdist is built
        # unchanged.
        PATCHES=()
        # (onedl-mmcv reads its version from its metadata: no py313 patch for it)
        if [ "$MMCV_DIST" = mmcv ] && "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 13) else 1)'; then
            PATCHES+=("$ROOT/tools/patches/mmcv-$MMCV_V-py313.patch")  # PEP 667 locals()
        fi
        if [ "$(printf '%s\n' 2.14 "${TORCH_V%%+*}" | sort -V | head -n1)" = 2.14 ]; then
            PATCHES+=("$ROOT/tools/patches/$MMCV_DIST-$MMCV_V-torch2.14.patch")  # C++20 headers
        fi
        target="$MMCV_DIST==$MMCV_V"
        if [ "${#PATCHES[@]}" -gt 0 ]; then
            for p in "${PATCHES[@]}"; do
                [ -f "$p" ] || die "$MMCV_DIST $MMCV_V needs tools/patches/$(basename "$p") on Python $PY_VERSION with torch $TORCH_V, and it is missing; use Python 3.10-3.12 with the default stack (PYTHON=/path/to/python3.11, no STACK) or add the patch."
            done
            command -v patch >/dev/null 2>&1 || die "the 'patch' command is missing, needed to patch mmcv's sdist; install it (Debian/Ubuntu: apt-get install patch) and re-run."
            sdist_sha=$(sed -n 's/^# sdist-sha256: *\([0-9a-f]\{64\}\).*/\1/p' "${PATCHES[0]}" | head -n1)
            [ -n "$sdist_sha" ] || die "${PATCHES[0]} has no '# sdist-sha256: ...' line; restore it from git."
            index_url=$("$PY" -m pip config get global.index-url 2>/dev/null || true)
            run_step "mmcv sdist" "could not download $MMCV_DIST $MMCV_V's sdist (see the log); check the network/proxy and re-run 'bash tools/setup.sh'" \
                "$PY" "$ROOT/tools/patches/fetch_sdist.py" "$MMCV_DIST" "$MMCV_V" "$sdist_sha" "$WHEELS/sdist" "$index_url"
            SRC="$VENV/build/mmcv-$MMCV_V-patched"
            say "Python $PY_VERSION, torch $TORCH_V: patching $MMCV_DIST $MMCV_V's sdist with $(for p in "${PATCHES[@]}"; do printf 'tools/patches/%s ' "$(basename "$p")"; done)"
            run_step "mmcv patch" "a patch in tools/patches/ does not apply to $MMCV_DIST $MMCV_V's sdist (see the log); fix it and re-run 'bash tools/setup.sh'" \
                bash -c 'set -e; src=$1 tarball=$2; shift 2; rm -rf "$src"; mkdir -p "$src"; tar xzf "$tarball" -C "$src" --strip-components=1; cd "$src"; for p; do echo "applying ${p##*/}"; patch -p1 --forward <"$p"; done' \
                _ "$SRC" "$WHEELS/sdist/${MMCV_DIST//-/_}-$MMCV_V.tar.gz" "${PATCHES[@]}"
            sed 's/^/[setup]   mmcv patch: /' "$LOGS/mmcv_patch.log"
            target="$SRC"
        fi
        say "building $MMCV_DIST $MMCV_V with compiled ops for torch $TORCH_V: about 13 min on 2 cores, once per torch build (wheel kept in $WHEEL_DIR)"
        # --no-cache-dir: pip's own cache could hand back a wheel built against another torch
        MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" run_step "mmcv build" \
            "the $MMCV_DIST $MMCV_V build failed (compiler error or missing headers: see the log); fix the cause and re-run 'bash tools/setup.sh'" \
            "$PY" -m pip wheel -c "$CONSTRAINTS" --no-deps --no-build-isolation --no-cache-dir -w "$WHEEL_DIR" "$target"
        wheel=$(find_wheel)
        [ -n "$wheel" ] || die "the mmcv build wrote no ${MMCV_DIST//-/_}-$MMCV_V-$PY_TAG wheel into $WHEEL_DIR; see $LOGS/mmcv_build.log."
        rm -rf "$VENV/build"
    fi
    "$PY" -m pip uninstall -y mmcv mmcv-lite onedl-mmcv >/dev/null 2>&1
    run_step "mmcv install" "could not install $wheel" \
        "${PIP[@]}" "$wheel"
    "$PY" -c 'import mmcv._ext' >"$LOGS/mmcv_check.log" 2>&1 \
        || die "mmcv was installed but its compiled ops do not load ($(tail -n1 "$LOGS/mmcv_check.log")); delete $WHEEL_DIR and re-run 'bash tools/setup.sh'."
    record_mmcv_build "$wheel"
fi

MMDET_DIST=$(dist mmdet)
run_step "mmdet" "could not install $MMDET_DIST $(pin "$MMDET_DIST")" \
    "${PIP[@]}" "$MMDET_DIST==$(pin "$MMDET_DIST")"

if [ "$MMDET_DIST" = mmdet ]; then
    run_step "resnet_backbone (editable, dev extra)" "could not install this project; check pyproject.toml" \
        "${PIP[@]}" --no-build-isolation -e "$ROOT[dev]"
else
    # pyproject.toml's dependencies name the upstream distributions (mmengine, mmcv<2.2,
    # mmdet<3.4); pip cannot know that the onedl-* forks provide the same packages and
    # would install (and build) upstream mmcv beside them. So: the project without its
    # dependencies (the steps above installed them), then its dev extra by name.
    run_step "resnet_backbone (editable, no deps)" "could not install this project; check pyproject.toml" \
        "${PIP[@]}" --no-build-isolation --no-deps -e "$ROOT"
    mapfile -t DEV_EXTRA < <("$PY" - "$ROOT/pyproject.toml" <<'EOF'
import sys
try:
    import tomllib
except ImportError:  # Python 3.10: pip's vendored copy
    from pip._vendor import tomli as tomllib
with open(sys.argv[1], 'rb') as f:
    print('\n'.join(tomllib.load(f)['project']['optional-dependencies']['dev']))
EOF
)
    [ "${#DEV_EXTRA[@]}" -gt 0 ] || die "could not read the dev extra from pyproject.toml; check its [project.optional-dependencies]."
    run_step "dev extra" "could not install ${DEV_EXTRA[*]}" \
        "${PIP[@]}" "${DEV_EXTRA[@]}"
fi

quick_check && mmcv_ready || die "the stack installed but does not import; run '.venv/bin/python -m resnet_backbone.doctor' to see which piece is broken."
echo "$want_stamp" >"$STAMP"
say "done in $((SECONDS - T_START)) s; check it any time with: .venv/bin/python -m resnet_backbone.doctor"

"""tools/setup.sh's one-line diagnoses and its mmcv wheel cache, with no network.

setup.sh runs against stand-ins: a stub PYTHON on PATH, or a fake interpreter (a
Python script) that creates a fake venv, answers the import probes from rules and
logs every pip call instead of running pip. Each run gets its own VENV and wheel
cache under tmp_path, so the repo's .venv is never touched.
"""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / 'tools' / 'setup.sh'

# The fake interpreter. `-c CODE` / `- < CODE`: code that imports the stack (torch,
# mmcv, ...) is not run: it exits 1 if it matches the rule FAIL, else 0 (printing a
# torch version where asked); other code (version probes) runs with sys.version_info
# set to VERSION. `-m venv DIR` makes DIR/bin/python a copy of this script.
# `-m pip ARGS` is logged; it fails with PIP_OUTPUT when ARGS match PIP_FAIL, and
# `pip wheel ... -w DIR` writes an (empty) wheel file named for VERSION into DIR.
FAKE_PYTHON = r'''#!{python}
import json, os, re, shutil, sys
cfg = json.loads(os.environ['FAKE_PY'])
args = sys.argv[1:]
def log(line):
    with open(cfg['log'], 'a') as f:
        f.write(line + '\n')
def run(code, argv):
    if cfg.get('fail') and re.search(cfg['fail'], code):
        sys.exit(1)
    if re.search(r'\b(torch|torchvision|mmcv|mmdet|mmengine|resnet_backbone)\b', code) \
            or 'Python.h' in code:
        if 'print(torch.__version__)' in code:
            print(cfg['torch'])
        sys.exit(0)
    sys.version_info = tuple(cfg['version']) + ('final', 0)
    sys.argv = argv
    exec(compile(code, '<fake>', 'exec'), {{'__name__': '__main__'}})
    sys.exit(0)
if args[:1] == ['-c']:
    run(args[1], ['-c'] + args[2:])
if args[:1] == ['-']:
    run(sys.stdin.read(), args)
if args[:2] == ['-m', 'venv']:
    os.makedirs(os.path.join(args[2], 'bin'), exist_ok=True)
    shutil.copy(__file__, os.path.join(args[2], 'bin', 'python'))
    sys.exit(0)
if args[:2] == ['-m', 'pip']:
    line = ' '.join(args[2:])
    log('pip ' + line)
    if '--dry-run' in args and cfg.get('dry_run_output'):
        print(cfg['dry_run_output'])
        sys.exit(1)
    if cfg.get('pip_fail') and re.search(cfg['pip_fail'], line):
        print(cfg['pip_output'])
        sys.exit(1)
    if args[2] == 'wheel' and '-w' in args:
        tag = 'cp%d%d' % tuple(cfg['version'][:2])
        out = args[args.index('-w') + 1]
        # named for a NAME==VERSION target (onedl-mmcv==2.3.6), else mmcv 2.1.0 (a patched dir)
        m = re.match(r'([A-Za-z0-9_.-]+)==(\S+)$', args[-1])
        name, version = (m.group(1).replace('-', '_'), m.group(2)) if m else ('mmcv', '2.1.0')
        open(os.path.join(out, '%s-%s-%s-%s-linux_x86_64.whl' % (name, version, tag, tag)),
             'w').close()
    sys.exit(0)
sys.exit('fake python: unexpected arguments %r' % (args,))
'''

# What pip 24 prints when an sdist's setup.py dies while pip reads its metadata
# (here mmcv 2.1.0 on Python 3.13, trimmed).
METADATA_FAILURE = """\
Collecting mmcv==2.1.0
  Downloading mmcv-2.1.0.tar.gz (471 kB)
  Preparing metadata (setup.py): started
  Preparing metadata (setup.py): finished with status 'error'
  error: subprocess-exited-with-error

  × python setup.py egg_info did not run successfully.
  │ exit code: 1
  ╰─> [8 lines of output]
      Traceback (most recent call last):
        File "<string>", line 2, in <module>
        File "<pip-setuptools-caller>", line 34, in <module>
        File "/tmp/pip-install-x/mmcv_1/setup.py", line 481, in <module>
          version=get_version(),
        File "/tmp/pip-install-x/mmcv_1/setup.py", line 43, in get_version
          return locals()['__version__']
      KeyError: '__version__'
      [end of output]

  note: This error originates from a subprocess, and is likely not a problem with pip.
error: metadata-generation-failed

× Encountered error while generating package metadata.
╰─> See above for output.
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _setup(tmp_path: Path, python: str, path_dirs=(), stack=None, ops=None,
           **fake) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=python, VENV=str(tmp_path / 'venv'),
               RB_WHEEL_CACHE=str(tmp_path / 'wheels'), CC='true', CXX='true',
               PATH=os.pathsep.join([*map(str, path_dirs), os.environ['PATH']]))
    env.pop('STACK', None)
    env.pop('MMCV_OPS', None)
    if stack:
        env['STACK'] = stack
    if ops:
        env['MMCV_OPS'] = ops
    if fake:
        cfg = {'version': [3, 12, 1], 'torch': '2.13.0+cu130', 'log': str(tmp_path / 'calls')}
        cfg.update(fake)
        env['FAKE_PY'] = json.dumps(cfg)
    return subprocess.run(['bash', str(SETUP)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


def _fake_python(tmp_path: Path) -> str:
    return str(_executable(tmp_path / 'fakepython', FAKE_PYTHON.format(python=sys.executable)))


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith('setup: ERROR')]
    assert len(errors) == 1, r.stderr
    return errors[0]


@pytest.mark.parametrize('stub,says', [
    # a pyenv shim whose version is not active: the command exists but exits 127
    # (pyenv's whole message: its first line is the cause, its last a footnote)
    ('printf "pyenv: python3.12: command not found\\n\\nThe \\`python3.12\' command exists in '
     'these Python versions:\\n  3.12.1\\n\\nNote: See \'pyenv help global\' for tips on allowing '
     'both\\n      python2 and python3 to be found at the same time.\\n" >&2; exit 127',
     'exit 127: pyenv: python3.12: command not found)'),
    # an interpreter that crashes at start (a broken install)
    ('echo "Fatal Python error: init_fs_encoding: failed to get the Python codec" >&2; exit 1',
     'exit 1: Fatal Python error: init_fs_encoding'),
])
def test_python_that_does_not_run_is_named(tmp_path, stub, says):
    """Before: 'Python  is too old' (an empty version, the wrong cause)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    _executable(bin_dir / 'python3.12', '#!/bin/sh\n' + stub + '\n')
    line = _one_error_line(_setup(tmp_path, 'python3.12', [bin_dir]))
    assert "PYTHON='python3.12'" in line and 'does not run' in line and says in line, line
    assert 'too old' not in line and 'PYTHON=' in line.split(';', 1)[1], line
    assert not (tmp_path / 'venv').exists()


def test_metadata_generation_failure_is_named_with_its_error(tmp_path):
    """Before: 'the mmcv 2.1.0 build failed (compiler error or missing headers ...)'."""
    r = _setup(tmp_path, _fake_python(tmp_path), ops='compiled', fail=r'\bmmcv\b',
               pip_fail=r'mmcv==2\.1\.0|mmcv-2\.1\.0-patched', pip_output=METADATA_FAILURE)
    line = _one_error_line(r)
    assert line.startswith('setup: ERROR in step "mmcv build": '), line
    assert "metadata generation failed (KeyError: '__version__')" in line, line
    assert 'before anything was compiled' in line and 'compiler error' not in line, line
    assert 'mmcv_build.log' in line


def test_mmcv_wheel_of_another_torch_is_not_reused(tmp_path):
    """A wheel cached for torch 2.14.1 is left alone when torch 2.13.0 is installed: mmcv
    is built (pip's own cache bypassed) into the folder of this torch and installed from
    there. Before: `pip install mmcv==2.1.0`, which takes any wheel pip has cached."""
    other = tmp_path / 'wheels' / 'torch-2.14.1+cu130'
    other.mkdir(parents=True)
    (other / 'mmcv-2.1.0-cp312-cp312-linux_x86_64.whl').write_text('')
    # the record check fails: mmcv is not built for this torch yet
    _setup(tmp_path, _fake_python(tmp_path), ops='compiled', fail=r"record\['torch'\]")
    pip = (tmp_path / 'calls').read_text().splitlines()
    mmcv = [c for c in pip if 'mmcv' in c and c.split()[1] in ('wheel', 'install')]
    here = tmp_path / 'wheels' / 'torch-2.13.0+cu130'
    assert len(mmcv) == 2, pip
    assert mmcv[0].startswith('pip wheel ') and '--no-cache-dir' in mmcv[0], mmcv
    assert f'-w {here} mmcv==2.1.0' in mmcv[0], mmcv
    assert mmcv[1].startswith('pip install ') and mmcv[1].endswith(
        f'{here}/mmcv-2.1.0-cp312-cp312-linux_x86_64.whl'), mmcv
    assert str(other) not in '\n'.join(pip)


def test_mmcv_wheel_of_this_torch_is_reused(tmp_path):
    """The second venv on a machine installs the wheel built for its torch: no build."""
    here = tmp_path / 'wheels' / 'torch-2.13.0+cu130'
    here.mkdir(parents=True)
    (here / 'mmcv-2.1.0-cp312-cp312-linux_x86_64.whl').write_text('')
    r = _setup(tmp_path, _fake_python(tmp_path), ops='compiled', fail=r"record\['torch'\]")
    pip = (tmp_path / 'calls').read_text().splitlines()
    assert not any(c.startswith('pip wheel') for c in pip), pip
    assert f'pip install -c {ROOT}/constraints.txt {here}/mmcv-2.1.0-cp312-cp312-linux_x86_64.whl' \
        in pip, pip
    assert 'is in the wheel cache' in r.stdout


# pip's resolver when a pip.conf outside the repo caps what constraints-latest.txt pins
CONSTRAINT_CONFLICT = """\
ERROR: Cannot install torchvision==0.29.2 because these package versions have \
conflicting dependencies.

The conflict is caused by:
    The user requested (constraint) torchvision==0.29.2
    The user requested (constraint) torchvision<=0.29.1

To fix this you could try to:
1. loosen the range of package versions you've specified
2. remove package versions to allow pip to attempt to solve the dependency conflict

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/#dealing-with-dependency-conflicts
"""


def test_constraint_conflict_is_named(tmp_path):
    """Before: the step's generic hint ('could not install pip/setuptools/wheel/ninja')."""
    r = _setup(tmp_path, _fake_python(tmp_path), pip_fail=r'--upgrade pip',
               pip_output=CONSTRAINT_CONFLICT)
    line = _one_error_line(r)
    assert line.startswith('setup: ERROR in step "pip and build tools": '), line
    assert ("pip's constraints conflict (torchvision<=0.29.1, torchvision==0.29.2)" in line
            and 'pip config list' in line), line


# What pip 24 prints on Python 3.10 for the default stack (numpy 2.4.6 needs >= 3.11; a
# 3.10 row of the matrix, 2026-11-30), and what it says about the pin alone.
PIN_TOO_NEW = """\
ERROR: Cannot install h5py==3.16.0 because these package versions have conflicting \
dependencies.

The conflict is caused by:
    h5py 3.16.0 depends on numpy>=1.21.2
    The user requested (constraint) numpy==2.4.6

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/#dealing-with-dependency-conflicts
"""
PIN_ALONE = """\
ERROR: Ignored the following versions that require a different python version: 2.3.0 \
Requires-Python >=3.11; 2.4.6 Requires-Python >=3.11; 2.5.0 Requires-Python >=3.12
ERROR: Could not find a version that satisfies the requirement numpy==2.4.6
ERROR: No matching distribution found for numpy==2.4.6
"""


def test_pin_without_a_release_for_this_python_is_named(tmp_path):
    """Before: 'a pip configuration outside this repo adds its own constraints' (the
    wrong cause: numpy 2.4.6 has no release for Python 3.10)."""
    r = _setup(tmp_path, _fake_python(tmp_path), version=[3, 10, 13],
               pip_fail=r'--upgrade pip', pip_output=PIN_TOO_NEW, dry_run_output=PIN_ALONE)
    line = _one_error_line(r)
    assert line.startswith('setup: ERROR in step "pip and build tools": '), line
    assert ('numpy==2.4.6 (constraints.txt) has no release for Python 3.10.13: it requires '
            'Python >=3.11' in line and 'pip config' not in line), line


def test_onedl_stack_installs_the_forks_by_their_names(tmp_path):
    """STACK=onedl: onedl-mmengine, onedl-mmcv (built from its sdist, cached under its own
    wheel name) and onedl-mmdetection, and the project without its upstream dependencies
    (pyproject.toml names mmcv<2.2, which pip would build beside the fork). Before: 'no pin
    for mmengine'."""
    _setup(tmp_path, _fake_python(tmp_path), stack='onedl', ops='compiled',
           fail=r"record\['torch'\]")
    pip = (tmp_path / 'calls').read_text().splitlines()
    c = f'-c {ROOT}/constraints-onedl.txt'
    here = tmp_path / 'wheels' / 'torch-2.13.0+cu130'
    wheel = here / 'onedl_mmcv-2.3.6-cp312-cp312-linux_x86_64.whl'
    assert f'pip install {c} --upgrade pip setuptools wheel ninja packaging' in pip, pip
    assert f'pip install {c} onedl-mmengine==0.10.12' in pip, pip
    assert any(x.startswith('pip wheel ') and x.endswith(f'-w {here} onedl-mmcv==2.3.6')
               for x in pip), pip
    assert f'pip install {c} {wheel}' in pip, pip
    assert f'pip install {c} onedl-mmdetection==3.5.1' in pip, pip
    assert f'pip install {c} --no-build-isolation --no-deps -e {ROOT}' in pip, pip
    dev = [x for x in pip if x.startswith(f'pip install {c} timm ')]
    assert len(dev) == 1 and ' pytest ' in dev[0] and 'onnx' in dev[0], pip
    upstream = [x for x in pip if x.startswith('pip install') and re.search(
        r' (mmengine|mmcv|mmdet)==|\[dev\]', x)]
    assert not upstream, upstream


@pytest.mark.skipif(shutil.which('make') is None, reason='no make')
def test_make_test_matrix_lists_every_row():
    """`make test-matrix` has a row for each Python 3.10-3.13 on the default stack, one
    for each constraints-<STACK>.txt and one for MMCV_OPS=compiled (make -n: nothing is
    run)."""
    env = {k: v for k, v in os.environ.items() if k not in ('MATRIX', 'MAKEFLAGS')}
    r = subprocess.run(['make', '-n', '-s', 'test-matrix'], cwd=ROOT, capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = re.search(r'for row in ([^;]+); do', r.stdout).group(1).split()
    default = {row[2:].rsplit('.', 1)[0] for row in rows if ':' not in row}
    assert default == {'3.10', '3.11', '3.12', '3.13'}, rows
    stacks = {p.stem.split('-', 1)[1] for p in ROOT.glob('constraints-*.txt')}
    # and the compiled-ops choice (MMCV_OPS=compiled) is a row of its own
    assert {row.split(':', 1)[1] for row in rows if ':' in row} == stacks | {'compiled'}, rows


@pytest.mark.skipif(shutil.which('make') is None, reason='no make')
def test_make_keeps_python_for_setup_only(tmp_path):
    """`PYTHON=/path/to/python3.13 make test`: PYTHON reaches setup, not the recipes' other
    commands (tools/dist_train.sh runs $PYTHON, a bare interpreter, instead of .venv's: the
    README walk failed that way on the 3.13 row)."""
    probe = tmp_path / 'probe.mk'
    probe.write_text('probe:\n\t@echo "recipe sees PYTHON=[$$PYTHON]"\n')
    # run as a top-level make: under `make test` MAKELEVEL is set and a nested make prints
    # "Entering directory" lines (CI, 2026-11-30)
    env = {k: v for k, v in os.environ.items() if k not in ('MAKEFLAGS', 'MFLAGS', 'MAKELEVEL')}
    env['PYTHON'] = '/opt/python3.13'
    r = subprocess.run(['make', '-s', '-f', 'Makefile', '-f', str(probe), 'probe'], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.stdout.strip() == 'recipe sees PYTHON=[]', r.stdout + r.stderr
    r = subprocess.run(['make', '-n', 'setup', 'setup-latest'], cwd=ROOT, capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.stdout.splitlines() == ["PYTHON='/opt/python3.13' bash tools/setup.sh",
                                     "PYTHON='/opt/python3.13' STACK=latest bash tools/setup.sh"]


def test_default_installs_mmcv_lite_and_builds_nothing(tmp_path):
    """No MMCV_OPS: mmcv-lite (pure Python) from the registry, no `pip wheel`, no ninja,
    and no compiler asked for (CC/CXX point nowhere and none is on PATH)."""
    r = _setup(tmp_path, _fake_python(tmp_path), fail=r'glob\.glob')
    pip = (tmp_path / 'calls').read_text().splitlines()
    c = f'-c {ROOT}/constraints.txt'
    assert f'pip install {c} --upgrade pip setuptools wheel' in pip, pip
    assert f'pip install {c} mmcv-lite==2.1.0' in pip, pip
    assert not [x for x in pip if x.startswith('pip wheel') or 'ninja' in x], pip
    assert 'compiler' not in r.stderr
    # the stand-in mmcv never stops looking compiled: one line says so
    assert 'does not import as mmcv-lite' in _one_error_line(r)


def test_onedl_default_builds_the_fork_without_ops_in_an_isolated_build(tmp_path):
    """STACK=onedl, no MMCV_OPS: onedl-mmcv has no -lite wheel, and its setup.py has no
    MMCV_WITH_OPS switch (it compiles mmcv._ext whenever it can import torch), so its sdist
    is built in pip's isolated build environment (no torch there: no ops), pinned by
    --build-constraint, and with its dependencies (onedl-mmengine brings no opencv-python).
    Before: MMCV_WITH_OPS=0 and --no-build-isolation --no-deps, which compiled the ops
    (no compiler: 'Error compiling objects for extension')."""
    r = _setup(tmp_path, _fake_python(tmp_path), stack='onedl', fail=r'glob\.glob')
    pip = (tmp_path / 'calls').read_text().splitlines()
    c = f'{ROOT}/constraints-onedl.txt'
    assert [x for x in pip if 'onedl-mmcv==' in x] == [
        f'pip install -c {c} --build-constraint {c} --no-cache-dir onedl-mmcv==2.3.6'], pip
    assert not [x for x in pip if x.startswith('pip wheel') or 'ninja' in x], pip
    assert 'does not import as mmcv-lite' in _one_error_line(r)


def test_mmcv_ops_choice_is_checked(tmp_path):
    line = _one_error_line(_setup(tmp_path, _fake_python(tmp_path), ops='cuda', version=[3, 12, 1]))
    assert line.startswith("setup: ERROR: MMCV_OPS='cuda' is not a choice: use "
                           'MMCV_OPS=torchvision (the default'), line

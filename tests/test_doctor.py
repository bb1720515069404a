"""``python -m resnet_backbone.doctor`` on the good stack and on a broken one."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_backbone import doctor


def test_doctor_good_stack_exits_zero():
    r = subprocess.run([sys.executable, '-m', 'resnet_backbone.doctor'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for piece in ('python', 'torch', 'torchvision', 'mmengine', 'mmcv._ext', 'mmdet',
                  'numpy', 'cuda', 'registry'):
        assert f'] {piece}' in r.stdout
    assert 'ResNetV1Custom -> resnet_backbone.models.resnet.ResNetV1Custom' in r.stdout


def test_doctor_names_missing_ops(monkeypatch, capsys):
    # A None entry in sys.modules makes `import mmcv._ext` fail, as with mmcv-lite and
    # no hook (this project's .pth not installed).
    monkeypatch.setitem(sys.modules, 'mmcv._ext', None)
    assert doctor.main() == 1
    out = capsys.readouterr().out
    fixes = [line for line in out.splitlines() if line.startswith('FIX:')]
    assert len(fixes) == 1, out
    assert fixes[0].startswith('FIX: mmcv._ext is broken') and 'tools/setup.sh' in fixes[0]
    assert 'MMCV_OPS=compiled' in fixes[0]


def test_doctor_names_the_ops_backend(monkeypatch, capsys):
    """Which mmcv._ext is active; for the torchvision backend, the ops it lacks."""
    from resnet_backbone.ops import mmcv_ext
    monkeypatch.setitem(sys.modules, 'mmcv._ext', mmcv_ext)
    checks = {c.name: c for c in doctor.run_checks()}
    line = checks['mmcv._ext'].detail
    assert checks['mmcv._ext'].ok and line.startswith('torchvision backend'), line
    assert "of mmcv's 112 ops" in line and 'psamask' in line and 'roi_align_rotated' in line
    assert ' nms,' not in line and 'carafe' not in line  # provided, so not listed
    assert checks['mmcv build'].detail.startswith('nothing built: mmcv-lite')


def test_doctor_names_missing_module(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'torchvision', None)
    assert doctor.main() == 1
    out = capsys.readouterr().out
    assert '[BAD] torchvision' in out
    assert any(line.startswith('FIX: torchvision is broken') for line in out.splitlines())


# ---------------------------------------------------------------- a broken stack
# The doctor runs in a subprocess whose PYTHONPATH puts a fake package first. Python
# imports resnet_backbone/__init__.py (and with it mmcv.cnn, mmengine, torch) before
# the doctor; that import must not crash it.
ROOT = Path(__file__).resolve().parents[1]

FAKES = {
    # mmcv whose import fails (e.g. built against another torch)
    'mmcv': ('mmcv', "raise ImportError('mmcv is broken: undefined symbol _ZN3c10')"),
    # mmcv-like package without mmcv.cnn (a half-removed install)
    'mmcv-no-cnn': ('mmcv', "__version__ = '2.1.0'"),
    'torch': ('torch', "raise OSError('libtorch_cpu.so: cannot open shared object file')"),
    'mmengine': ('mmengine', "raise ImportError('mmengine is broken')"),
}


def _with_fake(tmp_path: Path, which: str, *args: str) -> subprocess.CompletedProcess:
    package, body = FAKES[which]
    (tmp_path / package).mkdir()
    (tmp_path / package / '__init__.py').write_text(body + '\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    env.pop('RESNET_BACKBONE_DEBUG', None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


@pytest.mark.parametrize('which,bad,fix', [
    ('mmcv', 'mmcv', 'FIX: mmcv is broken (ImportError: mmcv is broken'),
    ('mmcv-no-cnn', 'mmcv', "FIX: mmcv is broken (ModuleNotFoundError: No module named "
                            "'mmcv.cnn')"),
    ('torch', 'torch', 'FIX: torch is broken (OSError: libtorch_cpu.so'),
    ('mmengine', 'mmengine', 'FIX: mmengine is broken (ImportError: mmengine is broken)'),
])
def test_doctor_runs_whatever_is_broken(tmp_path, which, bad, fix):
    """Before: a traceback through resnet_backbone/__init__.py, no [BAD] or FIX: line."""
    r = _with_fake(tmp_path, which, '-m', 'resnet_backbone.doctor')
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert 'Traceback' not in out, out
    assert f'[BAD] {bad} ' in r.stdout, out
    fixes = [line for line in r.stdout.splitlines() if line.startswith('FIX:')]
    assert fixes and fixes[0].startswith(fix) and 'tools/setup.sh' in fixes[0], out


def test_import_still_fails_loudly_with_broken_mmcv(tmp_path):
    """Regular users get one ImportError naming mmcv and the fix, not a silent package."""
    r = _with_fake(tmp_path, 'mmcv', '-c', 'import resnet_backbone')
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('ImportError: resnet_backbone cannot be imported: mmcv is broken '
                           '(ImportError: mmcv is broken'), r.stderr
    assert "'bash tools/setup.sh'" in last and "'python -m resnet_backbone.doctor'" in last


@pytest.mark.parametrize('argv,doctor', [
    (['python', '-m', 'resnet_backbone.doctor'], True),
    (['python', '-X', 'dev', '-mresnet_backbone.doctor', '--debug'], True),
    (['python', '-m', 'resnet_backbone.doctor_x'], False),
    (['python', '-m', 'pytest', '-m', 'resnet_backbone.doctor'], False),
    (['python', 'script.py', '-m', 'resnet_backbone.doctor'], False),
    (['python', '-c', 'import resnet_backbone', '-m', 'resnet_backbone.doctor'], False),
    (['/x/.venv/bin/python', '/x/.venv/bin/rb-doctor'], True),  # the console script
    (['/x/.venv/bin/python', '/x/.venv/bin/rb-train'], False),
])
def test_started_as_doctor(argv, doctor):
    import resnet_backbone
    assert resnet_backbone._started_as_doctor(argv) is doctor


# ------------------------------------------------- mmcv built for another torch
def _fake_mmcv_build(tmp_path: Path, monkeypatch, torch_version: str, ext_bytes=b'ops'):
    """An mmcv package folder whose setup record says it was built for torch_version."""
    import hashlib
    import json
    pkg = tmp_path / 'mmcv'
    pkg.mkdir()
    (pkg / '_ext.cpython-3x.so').write_bytes(ext_bytes)
    (pkg / 'BUILT_WITH_TORCH.json').write_text(json.dumps({  # tools/setup.sh writes it
        'torch': torch_version, 'ext': '_ext.cpython-3x.so',
        'ext_sha256': hashlib.sha256(b'ops').hexdigest(), 'source': 'mmcv-2.1.0.whl'}))
    # the real mmcv stays (its submodules load); only where it says it lives changes
    import types

    import mmcv
    monkeypatch.setattr(mmcv, '__file__', str(pkg / '__init__.py'))
    # and its _ext is a compiled one (on the default install it is the torchvision backend)
    compiled = types.ModuleType('mmcv._ext')
    compiled.__file__ = str(pkg / '_ext.cpython-3x.so')
    monkeypatch.setitem(sys.modules, 'mmcv._ext', compiled)


def test_doctor_names_mmcv_built_for_another_torch(tmp_path, monkeypatch, capsys):
    """Before: no such check; an mmcv wheel cached for torch 2.13 reused under 2.14 passed."""
    import torch
    _fake_mmcv_build(tmp_path, monkeypatch, '1.0.0+old')
    assert doctor.main() == 1
    out = capsys.readouterr().out
    assert '[BAD] mmcv build' in out, out
    fixes = [line for line in out.splitlines() if line.startswith('FIX:')]
    assert len(fixes) == 1, out
    assert fixes[0].startswith('FIX: mmcv build is broken (RuntimeError: mmcv._ext was built '
                               f'for torch 1.0.0+old, but torch {torch.__version__} is '
                               'installed); rebuild mmcv for the installed torch'), fixes
    assert 'tools/setup.sh' in fixes[0]


def test_doctor_mmcv_build_record(tmp_path, monkeypatch):
    import torch
    _fake_mmcv_build(tmp_path, monkeypatch, torch.__version__)
    assert doctor._mmcv_built_for_torch() == (
        f'mmcv._ext built for torch {torch.__version__}, the installed one')
    # a record of another build (mmcv reinstalled behind setup's back) proves nothing
    (tmp_path / 'mmcv' / '_ext.cpython-3x.so').write_bytes(b'other ops')
    assert doctor._mmcv_built_for_torch().startswith('unknown: BUILT_WITH_TORCH.json '
                                                     'describes another build')


def test_doctor_names_the_matrix_row(tmp_path):
    """The row of the tested version matrix (docs/versions.md): Python X.Y + the stack."""
    installed = doctor._installed_versions()  # works on the upstream and the onedl venv
    pins = {n: installed[n] for n in doctor.STACK_PINS}
    (tmp_path / 'constraints.txt').write_text(
        '# default\n' + ''.join(f'{n}=={v}\n' for n, v in pins.items()) + 'pytest==1.0\n')
    (tmp_path / 'constraints-latest.txt').write_text('torch==99.0\ntorchvision==99.1\n')
    py = f'Python {sys.version_info[0]}.{sys.version_info[1]}'
    assert doctor._matrix_row(str(tmp_path)) == (
        f"{py} + default stack (constraints.txt: torch {pins['torch']}, "
        f"torchvision {pins['torchvision']})")
    (tmp_path / 'constraints.txt').write_text('torch==98.0\n')
    with pytest.raises(LookupError, match=rf"{py}, but no constraints file matches: "
                       rf"constraints.txt differs in torch {pins['torch']} \(pinned 98.0\)"):
        doctor._matrix_row(str(tmp_path))
    (tmp_path / 'constraints-latest.txt').write_text(f"torch=={pins['torch']}\n")
    assert doctor._matrix_row(str(tmp_path)).startswith(f'{py} + STACK=latest')


def test_doctor_names_the_onedl_row(tmp_path, monkeypatch):
    """STACK=onedl: the forks install mmengine/mmcv/mmdet as onedl-mmengine, onedl-mmcv and
    onedl-mmdetection; constraints-onedl.txt pins those names, and they are compared."""
    fake = dict(doctor._installed_versions(), mmengine='not installed', mmcv='not installed',
                mmdet='not installed', **{'onedl-mmengine': '0.10.12', 'onedl-mmcv': '2.3.6',
                                          'onedl-mmdetection': '3.5.1'})
    monkeypatch.setattr(doctor, '_installed_versions', lambda: fake)
    (tmp_path / 'constraints.txt').write_text(
        f"torch=={fake['torch']}\nmmengine==0.10.7\nmmcv==2.1.0\nmmdet==3.3.0\n")
    onedl = f"torch=={fake['torch']}\nonedl-mmengine==0.10.12\nonedl-mmdetection==3.5.1\n"
    (tmp_path / 'constraints-onedl.txt').write_text(onedl + 'onedl-mmcv==2.3.6\n')
    py = f'Python {sys.version_info[0]}.{sys.version_info[1]}'
    assert doctor._matrix_row(str(tmp_path)).startswith(f'{py} + STACK=onedl (constraints-onedl')
    # another fork version is another row, not this one
    (tmp_path / 'constraints-onedl.txt').write_text(onedl + 'onedl-mmcv==2.3.5\n')
    with pytest.raises(LookupError, match=r'no constraints file matches: constraints.txt'):
        doctor._matrix_row(str(tmp_path))
    (tmp_path / 'constraints.txt').unlink()
    with pytest.raises(LookupError, match=r'onedl-mmcv 2\.3\.6 \(pinned 2\.3\.5\)'):
        doctor._matrix_row(str(tmp_path))


def test_constraints_pin_each_piece_once_on_every_supported_python():
    """numpy, onnxruntime and keras are pinned per Python (their pinned releases need >= 3.11):
    on each of 3.10-3.13 every constraints file pins each name exactly once, as pip reads it,
    and 3.10 gets the releases that exist for it."""
    for path in sorted(ROOT.glob('constraints*.txt')):
        names = {line.split('#')[0].split('==')[0].strip() for line in path.read_text().splitlines()
                 if '==' in line.split('#')[0]}
        for minor in (10, 11, 12, 13):
            pins = doctor.read_pins(str(path), (3, minor))
            assert set(pins) == names, (path.name, minor, names - set(pins))
    default = doctor.read_pins(str(ROOT / 'constraints.txt'), (3, 10))
    assert (default['numpy'], default['onnxruntime'], default['keras']) == (
        '2.2.6', '1.23.2', '3.12.4')
    assert doctor.read_pins(str(ROOT / 'constraints.txt'), (3, 11))['numpy'] == '2.4.6'


def test_doctor_reads_marked_pins_and_names_a_marker_it_cannot(tmp_path):
    f = tmp_path / 'constraints.txt'
    f.write_text('numpy==2.4.6 ; python_version>="3.11"\nnumpy==2.2.6; python_version < "3.11"\n'
                 'torch==2.13.0\n')
    assert doctor.read_pins(str(f), (3, 10)) == {'numpy': '2.2.6', 'torch': '2.13.0'}
    assert doctor.read_pins(str(f), (3, 12)) == {'numpy': '2.4.6', 'torch': '2.13.0'}
    f.write_text('numpy==2.4.6; sys_platform == "linux"\n')
    with pytest.raises(LookupError, match=r"constraints.txt line 1: the doctor understands only "
                                          r"python_version markers, not 'sys_platform"):
        doctor.read_pins(str(f))


def test_a_mistyped_argument_is_one_line_not_a_silent_check(capsys):
    """``rb-doctor --bogus`` used to run every check and exit 0; now one line, exit 2."""
    with pytest.raises(SystemExit) as info:
        doctor.cli(['--bogus'])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.strip().splitlines() == [err.strip()] and 'unrecognized arguments: --bogus' in err

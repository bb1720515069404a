"""The package imports cleanly and lightly; its installed commands resolve and run."""
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import resnet_backbone
from resnet_backbone.spec import ARCH_LAYOUT

ROOT = Path(__file__).resolve().parents[1]
#: the installed commands ([project.scripts]) and the checkout's file each one mirrors
COMMANDS = {'rb-train': 'tools/train.py', 'rb-test': 'tools/test.py',
            'rb-dump': 'tools/dump_features.py', 'rb-convert': 'tools/convert_weights.py',
            'rb-export': 'tools/export.py', 'rb-benchmark': 'benchmarks/benchmark.py',
            'rb-benchmark-dump': 'benchmarks/benchmark_dump.py',
            'rb-compare-dumps': 'tools/compare_dumps.py', 'rb-demo': 'tools/demo.py',
            'rb-doctor': None}


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10: pytest's own dependency tomli is the same parser
        import tomli as tomllib
    return tomllib.loads((ROOT / 'pyproject.toml').read_text())


def test_version_is_one_number_everywhere():
    """pyproject.toml, the installed metadata and ``__version__`` agree (a version bump
    in one place only, or a stale install, fails here)."""
    declared = _pyproject()['project']['version']
    assert resnet_backbone.__version__ == declared == metadata.version('resnet-backbone')


def test_every_export_resolves():
    from mmdet.registry import MODELS
    for name in resnet_backbone.__all__:
        value = getattr(resnet_backbone, name)
        assert getattr(value, '__name__', name) == name, name
    assert resnet_backbone.ARCH_SETTINGS.keys() == ARCH_LAYOUT.keys()
    assert MODELS.get('ResNetV1Custom') is resnet_backbone.ResNetV1Custom


def _entry_points() -> dict:
    return {ep.name: ep for ep in metadata.entry_points(group='console_scripts')
            if ep.dist is not None and ep.dist.name == 'resnet-backbone'}


def test_entry_points_are_installed_and_match_pyproject():
    declared = _pyproject()['project']['scripts']
    eps = _entry_points()
    assert set(eps) == set(declared) == set(COMMANDS), (
        "stale install: run '.venv/bin/pip install -e . --no-deps --no-build-isolation'")
    for name, ep in eps.items():
        assert ep.value == declared[name]
        assert callable(ep.load()), name
        assert (Path(sys.executable).parent / name).is_file(), f'no {name} script'


@pytest.mark.parametrize('name', sorted(n for n, f in COMMANDS.items() if f))
def test_entry_point_help(name, capsys, monkeypatch):
    """Each command's ``--help`` runs and names the command; the tools/ file is a shim
    that runs the same module (one ``runpy`` call: no sys.path tricks, nothing of its own);
    a benchmarks/ file is the code itself, which the command runs from the checkout."""
    run = _entry_points()[name].load()
    monkeypatch.setattr(sys, 'argv', [name, '--help'])
    with pytest.raises(SystemExit) as info:
        run()
    out = capsys.readouterr().out
    assert info.value.code == 0 and out.startswith(f'usage: {name} '), out
    path = ROOT / COMMANDS[name]
    shim = path.read_text()
    assert 'sys.path' not in shim
    if path.parent.name == 'benchmarks':
        entry = Path(sys.modules[run.__module__].__file__).read_text()
        assert f"benchmark_script('{path.stem}')" in entry, entry
        return
    assert f"runpy.run_module('{run.__module__}', run_name='__main__'" in shim, shim


def test_installed_commands_run(tmp_path):
    """The generated scripts themselves, outside the checkout: a usage error is one line
    naming the command, and rb-doctor checks the stack."""
    bindir = Path(sys.executable).parent
    r = subprocess.run([str(bindir / 'rb-export'), str(tmp_path / 'x.bin')], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        'rb-export: error: --format: cannot tell it from'), r.stderr
    r = subprocess.run([str(bindir / 'rb-doctor')], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and 'ResNetV1Custom -> resnet_backbone' in r.stdout, r.stdout


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)


def test_import_needs_neither_mmdet_models_nor_mmcv_ops():
    r = _run('import sys, resnet_backbone, torch\n'
             'm = resnet_backbone.ResNetV1Custom(depth=18, base_channels=4).eval()\n'
             'm(torch.rand(1, 3, 32, 32))\n'
             'bad = [k for k in ("mmdet.models", "mmcv.ops", "mmcv._ext") if k in sys.modules]\n'
             'print(bad); sys.exit(1 if bad else 0)')
    assert r.returncode == 0, r.stdout + r.stderr


def test_works_as_plain_module_without_mmdet():
    # sys.modules[name] = None makes "import mmdet" raise ImportError, as if uninstalled.
    r = _run('import sys; sys.modules["mmdet"] = None\n'
             'import torch, resnet_backbone\n'
             'from mmengine.registry import MODELS\n'
             'assert resnet_backbone.registry.PARENT is MODELS\n'
             'm = MODELS.build(dict(type="ResNetV1Custom", depth=18, base_channels=4)).eval()\n'
             'print([tuple(o.shape) for o in m(torch.rand(1, 3, 32, 32))])')
    assert r.returncode == 0, r.stderr
    assert '(1, 32, 1, 1)' in r.stdout


def test_ruff_clean():
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, '-m', 'ruff', 'check', 'resnet_backbone', 'tools',
                        'tests', 'benchmarks'], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def _run_with(options: list[str], code: str, env: dict | None = None
              ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *options, '-c', code], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def test_import_emits_no_deprecation_warning_and_installs_no_filter():
    """Before: 67 DeprecationWarnings under -W always (torch's, as mmengine.model imports
    torch.distributed.optim), and under -W error::DeprecationWarning the import failed
    with 'mmengine is broken ... run setup', a wrong diagnosis."""
    r = _run_with(['-W', 'error::DeprecationWarning'], 'import resnet_backbone')
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run_with(['-W', 'always'], 'import warnings\n'
                  'import resnet_backbone\n'
                  'left = [f for f in warnings.filters if f[1] is not None\n'
                  '        and ("jit" in f[1].pattern or "pkg_resources" in f[1].pattern)]\n'
                  'assert not left, left')
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'DeprecationWarning' not in r.stderr, r.stderr[-2000:]


def test_a_warning_raised_as_an_error_on_import_is_not_called_a_broken_install(tmp_path):
    """Only an install fault (ImportError, OSError, SyntaxError) is blamed on the install;
    a dependency's warning that -W error turned into an exception is raised as it is,
    with a note saying what it is."""
    import os
    fake = tmp_path / 'mmengine'
    fake.mkdir()
    (fake / '__init__.py').write_text("import warnings\n"
                                      "warnings.warn('old api', DeprecationWarning)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    env.pop('RESNET_BACKBONE_DEBUG', None)
    r = _run_with(['-W', 'error::DeprecationWarning'], 'import resnet_backbone', env)
    assert r.returncode == 1, r.stderr
    assert 'is broken' not in r.stderr and 'tools/setup.sh' not in r.stderr, r.stderr
    assert '\nDeprecationWarning: old api\n' in r.stderr, r.stderr
    if sys.version_info >= (3, 11):
        assert 'raised as an exception by a warnings filter' in r.stderr, r.stderr
    # a real install fault still gets the one-line diagnosis
    (fake / '__init__.py').write_text("raise ImportError('mmengine is broken here')\n")
    r = _run_with([], 'import resnet_backbone', env)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('ImportError: resnet_backbone cannot be imported: mmengine is '
                           'broken (ImportError: mmengine is broken here)'), r.stderr

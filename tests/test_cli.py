"""resnet_backbone.tools.runner: how every tool ends (one line, exit codes, --debug)."""
from __future__ import annotations

import importlib
import io

import pytest
import torch

from resnet_backbone.tools.runner import DEBUG_ENV, one_line, run_tool


def _fail(exc):
    def main(argv):
        raise exc
    return main


def test_error_is_one_line_and_exit_1(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as e:
        run_tool('x.py', _fail(ValueError('--foo: bad value; use 3\nsecond line')), argv=[])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('x.py: error: --foo: bad value; use 3')


def test_ctrl_c_is_exit_130_with_the_resume_hint(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as e:
        run_tool('x.py', _fail(KeyboardInterrupt()), argv=[], resume_hint='run it again')
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == 'x.py: interrupted (Ctrl-C); run it again'


def test_debug_flag_and_env_show_the_traceback(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    seen = []
    with pytest.raises(ValueError):
        run_tool('x.py', lambda argv: seen.append(argv) or _fail(ValueError('x'))(argv),
                 argv=['a', '--debug'])
    assert seen == [['a']]  # the tool's own parser never sees --debug
    monkeypatch.setenv(DEBUG_ENV, '1')
    with pytest.raises(ValueError):
        run_tool('x.py', _fail(ValueError('x')), argv=[])


class Custom:
    """A class a weights-only load refuses."""


def test_torch_weights_only_advice_is_never_passed_on():
    """torch's hint to retry with weights_only=False would run the file's code."""
    buf = io.BytesIO()
    torch.save({'a': Custom()}, buf)
    buf.seek(0)
    with pytest.raises(Exception) as e:
        torch.load(buf, weights_only=True)
    line = one_line(e.value)
    assert 'weights_only' not in line and '\n' not in line
    assert 'Custom' in line and 'state_dict' in line


def test_the_runner_imports_only_the_standard_library():
    """The doctor ends through :func:`run_tool` and must run when torch or mmcv is broken:
    the tools package's ``__init__``, its runner and the error class they use import
    nothing but the standard library."""
    import ast
    import sys
    from pathlib import Path

    import resnet_backbone.tools.runner as runner
    pkg = Path(runner.__file__).resolve().parents[1]
    found = []
    for path in (pkg / 'tools' / '__init__.py', pkg / 'tools' / 'runner.py', pkg / 'errors.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                found.append(('.' * node.level) + (node.module or ''))
            elif isinstance(node, ast.Import):
                found += [a.name for a in node.names]
    allowed = set(sys.stdlib_module_names) | {'__future__'}
    assert [m for m in found if m != '..errors' and m.split('.')[0] not in allowed] == []
    assert '..errors' in found  # the runner's one import of our own: a leaf


@pytest.mark.parametrize('module,argv', [
    ('dump_features', ['cfg.py', '--input', 'x', '--out', 'y', '--dtype', 'float8']),
    ('train', ['cfg.py', '--max-iters', 'abc']),
    ('export', ['x.onnx', '--size', 'big']),
])
def test_command_line_mistakes_are_one_line(module, argv, capsys):
    """A flag argparse rejects is one line naming the flag and what it takes (exit 2, as
    argparse's), not the usage block and then the error."""
    tool = importlib.import_module(f'resnet_backbone.tools.{module}')
    with pytest.raises(SystemExit) as info:
        tool.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and ': error: argument --' in err, err

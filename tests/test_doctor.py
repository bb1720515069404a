"""``python -m resnet_backbone.doctor`` on the good stack and on a broken one."""
import subprocess
import sys

from resnet_backbone import doctor


def test_doctor_good_stack_exits_zero():
    r = subprocess.run([sys.executable, '-m', 'resnet_backbone.doctor'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for piece in ('python', 'torch', 'torchvision', 'mmengine', 'mmcv._ext', 'mmdet',
                  'numpy', 'cuda', 'registry'):
        assert f'] {piece}' in r.stdout
    assert 'ResNetV1Custom -> resnet_backbone.resnet.ResNetV1Custom' in r.stdout


def test_doctor_names_missing_compiled_ops(monkeypatch, capsys):
    # A None entry in sys.modules makes `import mmcv._ext` fail, as with mmcv-lite.
    monkeypatch.setitem(sys.modules, 'mmcv._ext', None)
    assert doctor.main() == 1
    out = capsys.readouterr().out
    fixes = [line for line in out.splitlines() if line.startswith('FIX:')]
    assert len(fixes) == 1, out
    assert fixes[0].startswith('FIX: mmcv._ext is broken') and 'MMCV_WITH_OPS=1' in fixes[0]


def test_doctor_names_missing_module(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'torchvision', None)
    assert doctor.main() == 1
    out = capsys.readouterr().out
    assert '[BAD] torchvision' in out
    assert any(line.startswith('FIX: torchvision is broken') for line in out.splitlines())

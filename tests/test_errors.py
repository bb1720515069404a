"""Every bad argument gets a one-line ValueError/TypeError naming it and the allowed values."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_cli

import resnet_backbone.apis.export as export_lib
from resnet_backbone import ResNetV1cCustom, ResNetV1Custom, ResNetV1dCustom
from resnet_backbone.registry import check_backbone_kwargs

#: every bad constructor argument, with the one line it raises
BAD_CONSTRUCTOR = [
    (dict(depth=42), ValueError, r"^depth=42 is not supported; allowed values: 18, 34, 50, "
                                 r"101, 152, 200$"),
    (dict(depth=18, stem_type='wide'), ValueError,
     r"^stem_type='wide' is not supported; allowed values: 'classic', 'deep', 'small'$"),
    (dict(depth=50, style='tf'), ValueError,
     r"^style='tf' is not supported; allowed values: 'pytorch', 'caffe'$"),
    (dict(depth=18, out_indices=(0, 4)), ValueError,
     r"^out_indices=\(0, 4\) out of range; allowed values: 0, 1, 2, 3 \(num_stages=4\)$"),
    (dict(depth=18, out_indices=(2, 1)), ValueError,
     r"^out_indices=\(2, 1\) must be sorted and unique, e\.g\. \(1, 2\)$"),
    (dict(depth=18, out_indices=3), TypeError, r"^out_indices must be a non-empty sequence"),
    (dict(depth=18, frozen_stages=5), ValueError,
     r"^frozen_stages=5 is out of range; allowed values: -1\.\.4 \(num_stages=4\)$"),
    (dict(depth=18, num_stages=2, strides=(1, 2), dilations=(1, 1), out_indices=(0, 1),
          frozen_stages=3),
     ValueError, r"^frozen_stages=3 is out of range; allowed values: -1\.\.2"),
    (dict(depth=18, num_stages=5), ValueError,
     r"^num_stages=5 is not supported; allowed values: 1, 2, 3, 4$"),
    (dict(depth=18, strides=(1, 2, 2)), ValueError,
     r"^strides must have one entry per stage: num_stages=4 but len\(strides\)=3"),
    (dict(depth=18, dilations=(1, 1, 1, 1, 1)), ValueError,
     r"^dilations must have one entry per stage: num_stages=4 but len\(dilations\)=5"),
    (dict(depth=50, stage_with_dcn=(False, True)), ValueError,
     r"^stage_with_dcn must have one entry per stage: num_stages=4"),
    (dict(depth=18, with_cp=(True, False)), ValueError,
     r"^with_cp must have one entry per stage: num_stages=4 but len\(with_cp\)=2"),
    (dict(depth=18, with_cp='yes'), TypeError, r"^with_cp must be a sequence of 4 bools"),
    (dict(depth=18, deep_stem=True, stem_type='small'), ValueError,
     r"^deep_stem=True conflicts with stem_type='small'"),
    (dict(depth=18, dcn=dict(type='DCN'), stage_with_dcn=(True,) * 4), ValueError,
     r"^dcn is only supported by Bottleneck blocks \(depth >= 50\)"),
    (dict(depth=50, pretrained=3), TypeError, r"^pretrained must be a str"),
    (dict(depth=50, pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='a')),
     ValueError, r"^init_cfg and pretrained cannot both be set"),
    (dict(depth=50, plugins=[dict(cfg=dict(type='ContextBlock', ratio=0.25),
                                  position='after_conv4')]),
     ValueError, r"^plugin position='after_conv4' is not supported; allowed values: "
                 r"after_conv1, after_conv2, after_conv3$"),
    # mmcv said "Cannot find None in registry" (its lookup result, not the name)
    (dict(depth=18, norm_cfg=dict(type='Nope')), ValueError,
     r"^norm_cfg type='Nope' is not a registered norm layer; allowed values: 'BN', "
     r"'FrozenBN', 'GN', 'SyncBN', .*'LN'"),
    # mmcv: a bare assert
    (dict(depth=18, norm_cfg=dict(type='GN')), ValueError,
     r"^norm_cfg type='GN' needs num_groups, e\.g\. dict\(type='GN', num_groups=32"),
    # mmdet (and before: this backbone) built no DCN at all, silently
    (dict(depth=50, dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False)),
     ValueError, r"^dcn is set but stage_with_dcn=\(False, False, False, False\) selects no "
                 r"stage, so no DCN would be built; set stage_with_dcn, e\.g\. "
                 r"stage_with_dcn=\(False, True, True, True\), or drop dcn$"),
    (dict(depth=101, dcn=dict(type='DCNv2'), stage_with_dcn=(False,) * 4), ValueError,
     r"^dcn is set but stage_with_dcn=\(False, False, False, False\) selects no stage"),
    (dict(depth=34, dcn=dict(type='DCN')), ValueError,
     r"^dcn is only supported by Bottleneck blocks \(depth >= 50\); got dcn with depth=34$"),
]


@pytest.mark.parametrize('kwargs,exc,pattern', BAD_CONSTRUCTOR,
                         ids=[str(b[0])[:60] for b in BAD_CONSTRUCTOR])
def test_constructor_errors_name_the_argument_and_the_fix(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        ResNetV1Custom(**kwargs)
    assert '\n' not in str(info.value)


def test_preset_clash():
    with pytest.raises(ValueError, match=r"^ResNetV1dCustom fixes avg_down=True; use "
                                         r"ResNetV1Custom to change avg_down$"):
        ResNetV1dCustom(depth=50, avg_down=False)


@pytest.mark.parametrize('shape,pattern', [
    ((3, 32, 32), r"^ResNetV1Custom expects a 4-D \(N, C, H, W\) input; got shape \(3, 32, 32\)$"),
    ((1, 1, 32, 32), r"^input has 1 channels but in_channels=3; pass \(N, 3, H, W\)$"),
])
def test_forward_input_errors(shape, pattern):
    model = ResNetV1Custom(depth=18, base_channels=4)
    with pytest.raises(ValueError, match=pattern):
        model(torch.rand(shape))


def test_forward_levels_level_error():
    model = ResNetV1Custom(depth=18, base_channels=4, num_stages=3, strides=(1, 2, 2),
                           dilations=(1, 1, 1), out_indices=(0, 1, 2))
    with pytest.raises(ValueError, match=r"^levels \['c5'\] are not available; allowed "
                                         r"values: 'c1', 'c2', 'c3', 'c4'$"):
        model.forward_levels(torch.rand(1, 3, 32, 32), levels=['c2', 'c5'])


def test_registered_norm_types_still_build():
    for cfg in (dict(type='BN'), dict(type='SyncBN'), dict(type='FrozenBN'),
                dict(type='GN', num_groups=2), dict(type=torch.nn.BatchNorm2d)):
        ResNetV1Custom(depth=18, base_channels=4, norm_cfg=cfg)


@pytest.mark.parametrize('dtype,model_dtype,fix', [
    (torch.float16, torch.float32, r'pass x\.float\(\), convert the model with model\.half\(\), '
                                   r'or run under torch\.autocast$'),
    (torch.float64, torch.float32, r'pass x\.float\(\), convert the model with model\.double'),
    (torch.float32, torch.bfloat16, r'pass x\.bfloat16\(\), convert the model with '
                                    r'model\.float\(\)'),
    (torch.uint8, torch.float32, r'pass x\.float\(\)$'),
])
@pytest.mark.parametrize('stem_type', ['classic', 'deep'])
def test_forward_dtype_mismatch_is_one_line(dtype, model_dtype, fix, stem_type):
    """Before: a 23-line traceback from the first conv ('Input type ... should be the same')."""
    model = ResNetV1Custom(depth=18, base_channels=4, stem_type=stem_type).to(model_dtype)
    x = (torch.rand(1, 3, 32, 32) * 255).to(dtype)
    pattern = (rf"^input dtype is {dtype} but the model's parameters are {model_dtype}; "
               + fix)
    for call in (model, model.forward_levels):
        with pytest.raises(TypeError, match=pattern) as info:
            call(x)
        assert '\n' not in str(info.value)
        # raised by the backbone, before any conv ran
        assert info.traceback[-1].name == '_check_input'


@pytest.mark.parametrize('dtype', [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('train', [False, True])
def test_forward_matching_dtypes_still_work(dtype, train):
    model = ResNetV1Custom(depth=18, base_channels=4).to(dtype).train(train)
    outs = model(torch.rand(2, 3, 32, 32, dtype=dtype))
    assert all(o.dtype == dtype for o in outs)


def test_forward_under_autocast_takes_other_dtypes():
    model = ResNetV1Custom(depth=18, base_channels=4).eval()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(torch.rand(1, 3, 32, 32, dtype=torch.bfloat16))
    assert outs[-1].dtype == torch.bfloat16


# ---------------------------------------------------------------- config key typos
def test_check_backbone_kwargs():
    with pytest.raises(ValueError, match=r"^model\.backbone\.dept: unknown key for "
                                         r"ResNetV1Custom; did you mean 'depth'\? \(allowed "
                                         r"keys: depth, in_channels, .*, fast, drop_path_rate\)$"):
        check_backbone_kwargs('ResNetV1Custom', dict(type='ResNetV1Custom', dept=50))
    with pytest.raises(ValueError, match=r"^backbone\.norm_evl: unknown key for "
                                         r"ResNetV1dCustom; did you mean 'norm_eval'\?; "
                                         r"backbone\.zzz: unknown key for ResNetV1dCustom \("):
        check_backbone_kwargs('resnet_backbone.ResNetV1dCustom',
                              dict(depth=50, norm_evl=True, zzz=1), prefix='backbone')
    with pytest.raises(ValueError, match=r"^model\.backbone\.depth is missing: ResNetV1cCustom "
                                         r"needs it; allowed values: 18, 34, 50"):
        check_backbone_kwargs(ResNetV1cCustom, dict(base_channels=8))
    check_backbone_kwargs('ResNetV1Custom', dict(depth=50, frozen_stages=1, fast=False))
    check_backbone_kwargs('ResNet', dict(dept=50))  # not ours: mmdet's own errors
    check_backbone_kwargs('mmdet.ResNet', dict(dept=50))
    # the registry's own keys are no typos; the mmdet scope names ours too
    check_backbone_kwargs('ResNetV1Custom', dict(depth=50, _scope_='mmdet', _delete_=True))
    with pytest.raises(ValueError, match=r"^model\.backbone\.frozen_stage: unknown key for "
                                         r"ResNetV1Custom; did you mean 'frozen_stages'\?"):
        check_backbone_kwargs('mmdet.ResNetV1Custom', dict(depth=50, frozen_stage=1))


# ---------------------------------------------------------------- tools/export.py
EXPORT = Path(__file__).resolve().parents[1] / 'tools' / 'export.py'


def _run_export(monkeypatch, capsys, *argv):
    monkeypatch.delenv('RESNET_BACKBONE_DEBUG', raising=False)
    code, _, err = run_cli(capsys, monkeypatch, EXPORT, *argv)
    return code, err


def test_export_tool_error_is_one_line(tmp_path, monkeypatch, capsys):
    """Before: a traceback ending in FileExistsError (the output's parent is a file)."""
    (tmp_path / 'file').write_text('')
    out = tmp_path / 'file' / 'm.pt'
    code, err = _run_export(monkeypatch, capsys, str(out), '--depth', '18', '--size', '32')
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('export.py: error: '), err
    assert str(tmp_path / 'file') in lines[0] and lines[0].endswith(
        '(full traceback: --debug or RESNET_BACKBONE_DEBUG=1)'), err


def test_export_tool_debug_shows_traceback(tmp_path, monkeypatch, capsys):
    (tmp_path / 'file').write_text('')
    with pytest.raises(OSError):
        _run_export(monkeypatch, capsys, str(tmp_path / 'file' / 'm.pt'), '--depth', '18',
                    '--size', '32', '--debug')


def test_export_tool_ctrl_c_exits_130_without_partial_file(tmp_path, monkeypatch, capsys):
    class Traced:
        def save(self, path):
            Path(path).write_bytes(b'half a file')
            raise KeyboardInterrupt

    monkeypatch.setattr(export_lib, 'trace', lambda model, x: Traced())
    code, err = _run_export(monkeypatch, capsys, str(tmp_path / 'm.pt'), '--depth', '18',
                            '--size', '32')
    assert code == 130, err
    assert err.strip().splitlines()[-1].startswith('export.py: interrupted (Ctrl-C)'), err
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


DUMP = Path(__file__).resolve().parents[1] / 'tools' / 'dump_features.py'
SHAPES = str(Path(__file__).resolve().parents[1] / 'configs/shapes/retinanet_r18_fpn_shapes.py')


@pytest.mark.parametrize('launcher,missing,hint', [
    ('pytorch', 'RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT', 'bash tools/dist_dump.sh'),
    ('slurm', 'SLURM_PROCID, SLURM_NTASKS', 'srun -n NPROC python tools/dump_features.py')])
def test_dump_launcher_without_the_launcher_is_one_line(tmp_path, monkeypatch, capsys,
                                                        launcher, missing, hint):
    """Before: torch's (or SLURM's) own error from init_process_group."""
    for var in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', 'SLURM_PROCID',
                'SLURM_NTASKS', 'RESNET_BACKBONE_DEBUG'):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / 'a.png').write_bytes(b'')  # never read: the check comes first
    out = tmp_path / 'out'
    code, _, err = run_cli(capsys, monkeypatch, DUMP, SHAPES, '--input', str(tmp_path / 'a.png'),
                           '--out', str(out), '--launcher', launcher)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f'dump_features.py: error: --launcher {launcher}: {missing} not set'), err
    assert hint in lines[0] and 'drop --launcher' in lines[0], err
    assert not out.exists()


@pytest.mark.parametrize('flag', ['--report-only', '--rebuild-index'])
def test_dump_index_only_without_a_folder_is_one_line(monkeypatch, capsys, flag):
    code, _, err = run_cli(capsys, monkeypatch, DUMP, flag)
    assert code == 2, err
    assert err.strip().splitlines()[-1] == (
        f'dump_features.py: error: {flag} needs the dump folder: {flag} DIR (or --out DIR)')


@pytest.mark.parametrize('cls', ['v1', 'v2'])
@pytest.mark.parametrize('method', ['forward', 'forward_levels'])
def test_forward_non_tensor_input_is_one_line(cls, method):
    """Before: a numpy array gave AttributeError: 'numpy.ndarray' object has no attribute
    'dim' from deep inside the input check."""
    import numpy as np

    from resnet_backbone import ResNetV2Custom
    model = (ResNetV1Custom(depth=18, base_channels=4) if cls == 'v1'
             else ResNetV2Custom(depth=50, base_channels=4)).eval()
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    with pytest.raises(TypeError, match=r'^x must be a torch\.Tensor \(N, C, H, W\), got '
                                        r'numpy\.ndarray; convert it with '
                                        r'torch\.from_numpy\(x\)\.float\(\)') as info:
        getattr(model, method)(x)
    assert '\n' not in str(info.value)
    with pytest.raises(TypeError, match=r'^x must be a torch\.Tensor \(N, C, H, W\), got '
                                        r'list; convert it with torch\.tensor\(x\)'):
        getattr(model, method)(x.tolist())
    with torch.no_grad():  # the conversion it names works
        getattr(model, method)(torch.from_numpy(x).float())

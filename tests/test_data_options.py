"""Issue 21, findings 2, 3, 4, 10, 14, 15: how the tools point a config at data.

Config-level checks (no training): what the user typed wins, the evaluator follows its
data set, class names reach every split and head, missing data is one line before the
Runner is built. Each test names the finding it reproduces.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import run_cli

import resnet_backbone.engine.training as training
from resnet_backbone.engine.training import load_config, setup_environment

ROOT = Path(__file__).resolve().parents[1]
SHAPES = str(ROOT / 'configs/shapes/retinanet_r18_fpn_shapes.py')
MASK = str(ROOT / 'configs/shapes/mask-rcnn_r18_fpn_shapes.py')
FASTER = str(ROOT / 'configs/shapes/faster-rcnn_r18_fpn_shapes.py')
COCO = str(ROOT / 'configs/coco/retinanet_rv1custom-r50_fpn_1x_coco.py')


cli = run_cli  # the shared in-process tool runner (tests/conftest.py)


def _datasets(cfg):
    return [cfg[f'{s}_dataloader'].dataset for s in ('train', 'val', 'test')]


# -- finding 2: what the user sets in --cfg-options wins over --data-root ---------------

def test_cfg_options_win_and_the_evaluator_follows_the_dataset():
    cfg = load_config(SHAPES, data_root='/d', cfg_options={
        'test_dataloader.dataset.ann_file': 'annotations/val_small.json',
        'train_dataloader.dataset.data_root': '/mine/'})
    assert cfg.test_dataloader.dataset.ann_file == 'annotations/val_small.json'
    assert cfg.test_dataloader.dataset.data_root == '/d/'
    assert cfg.train_dataloader.dataset.data_root == '/mine/'  # typed, so kept
    # the evaluator scores against the file the test set reads
    assert cfg.test_evaluator.ann_file == '/d/annotations/val_small.json'
    assert cfg.val_evaluator.ann_file == '/d/annotations/instances_val.json'
    # without --data-root too
    cfg = load_config(SHAPES, cfg_options={
        'test_dataloader.dataset.ann_file': 'annotations/val_small.json'})
    assert cfg.test_evaluator.ann_file == 'data/shapes/annotations/val_small.json'


def test_an_explicit_evaluator_file_is_kept():
    cfg = load_config(SHAPES, data_root='/d',
                      cfg_options={'val_evaluator.ann_file': '/abs/path.json'})
    assert cfg.val_evaluator.ann_file == '/abs/path.json'
    assert cfg.test_evaluator.ann_file == '/d/annotations/instances_val.json'


def test_dataset_and_evaluator_on_different_files_is_one_warning(
        tiny_shapes, tmp_path, capsys):
    small = tmp_path / 'val_small.json'
    shutil.copy(tiny_shapes / 'annotations/instances_val.json', small)
    cfg = load_config(SHAPES, data_root=str(tiny_shapes),
                      cfg_options={'test_evaluator.ann_file': str(small)})
    capsys.readouterr()
    training.prepare_data(cfg, ('test',), tool='test.py')
    lines = [ln for ln in capsys.readouterr().err.splitlines() if 'WARNING' in ln]
    assert len(lines) == 1, lines
    assert str(small) in lines[0]
    assert str(tiny_shapes / 'annotations/instances_val.json') in lines[0]
    # the same file: no warning
    cfg = load_config(SHAPES, data_root=str(tiny_shapes))
    training.prepare_data(cfg, ('test',), tool='test.py')
    assert 'WARNING' not in capsys.readouterr().err


# -- finding 3: --cfg-options data_root=X is --data-root --------------------------------

def test_cfg_options_data_root_is_applied_as_data_root():
    cfg = load_config(SHAPES, cfg_options={'data_root': '/d'})
    for ds in _datasets(cfg):
        assert ds.data_root == '/d/'
    assert cfg.val_evaluator.ann_file == '/d/annotations/instances_val.json'
    assert cfg.test_evaluator.ann_file == '/d/annotations/instances_val.json'
    with pytest.raises(Exception, match=r'^--cfg-options data_root=/a and --data-root /b '
                                        r'disagree; give the data root once, as --data-root$'):
        load_config(SHAPES, data_root='/b', cfg_options={'data_root': '/a'})


# -- finding 10: class names of one's own --------------------------------------------

@pytest.mark.parametrize('how', ['flag', 'cfg-options'])
def test_classes_for_every_split_and_head(how):
    kw = (dict(classes='blob,bar') if how == 'flag'
          else dict(cfg_options={'metainfo.classes': ['blob', 'bar']}))
    cfg = load_config(MASK, **kw)
    for ds in _datasets(cfg):
        assert tuple(ds.metainfo.classes) == ('blob', 'bar')
        assert len(ds.metainfo.palette) == 2
    assert cfg.model.roi_head.bbox_head.num_classes == 2
    assert cfg.model.roi_head.mask_head.num_classes == 2
    assert 'num_classes' not in cfg.model.rpn_head
    cfg = load_config(SHAPES, **kw)
    assert cfg.model.bbox_head.num_classes == 2
    cfg = load_config(FASTER, **kw)
    assert cfg.model.roi_head.bbox_head.num_classes == 2


def test_no_image_left_lists_the_files_categories(tiny_shapes):
    setup_environment()
    from mmdet.datasets import CocoDataset
    for test_mode in (False, True):
        with pytest.raises(Exception) as info:
            CocoDataset(data_root=str(tiny_shapes), ann_file='annotations/instances_train.json',
                        data_prefix=dict(img='train/'), metainfo=dict(classes=('blob', 'bar')),
                        filter_cfg=dict(filter_empty_gt=True), test_mode=test_mode,
                        pipeline=[])
        msg = str(info.value)
        assert len(msg.splitlines()) == 1, msg
        assert "the file's categories are: square, circle, triangle" in msg, msg
        assert '--classes square,circle,triangle' in msg
    # classes that are in the file still load
    ds = CocoDataset(data_root=str(tiny_shapes), ann_file='annotations/instances_train.json',
                     data_prefix=dict(img='train/'), metainfo=dict(classes=('circle',)),
                     filter_cfg=dict(filter_empty_gt=True), pipeline=[])
    assert len(ds) > 0


def test_num_classes_contradicting_classes_is_one_line():
    with pytest.raises(Exception, match=r'^model\.bbox_head\.num_classes=5, but the data set '
                                        r'has 2 classes \(blob, bar\)'):
        load_config(SHAPES, classes='blob,bar', cfg_options={'model.bbox_head.num_classes': 5})


# -- finding 14: the embedded data set is made on first use ---------------------------

def test_missing_embedded_data_is_generated_with_one_line(tmp_path, monkeypatch,
                                                                     capsys):
    import resnet_backbone.data.shapes as shapes
    real = shapes.generate
    made = []
    monkeypatch.setattr(training, 'generate', lambda root: made.append(root) or real(
        root, num_train=4, num_val=2, size=64))
    monkeypatch.chdir(tmp_path)  # a fresh clone: no data/ yet
    cfg = load_config(SHAPES)
    capsys.readouterr()
    training.prepare_data(cfg, ('train', 'val'), tool='train.py')
    err = capsys.readouterr().err.strip().splitlines()
    assert made == ['data/shapes/']
    assert err == ['train.py: the embedded shapes data set is not there yet; generating it '
                   'at data/shapes/ (once, a few seconds)']
    assert (tmp_path / 'data/shapes/annotations/instances_train.json').is_file()
    training.prepare_data(cfg, ('train', 'val'), tool='train.py')  # there now: nothing to say
    assert made == ['data/shapes/'] and not capsys.readouterr().err


# -- finding 15: missing COCO data is one line before the Runner -----------------------

def test_missing_coco_is_one_line_naming_the_file_and_data_root(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no data/coco here
    code, out, err = cli(capsys, monkeypatch, 'train.py', COCO, '--work-dir',
                         str(tmp_path / 'w'))
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith('train.py: error: data/coco/annotations/instances_train2017.json'
                               ': no such file'), lines
    assert '--data-root' in lines[0]
    assert not out.strip(), out[:2000]  # no Runner: no config dump, no log lines
    assert not (tmp_path / 'w').exists()
    # test.py: the same, for the test set (with a checkpoint that fits the config)
    import torch
    from mmengine.registry import DefaultScope
    setup_environment()
    with DefaultScope.overwrite_default_scope('mmdet'):
        from mmdet.registry import MODELS
        model = MODELS.build(load_config(SHAPES).model)
    ckpt = tmp_path / 'fits.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    code, out, err = cli(capsys, monkeypatch, 'test.py', SHAPES, str(ckpt),
                         '--data-root', str(tmp_path / 'nothing'))
    assert code == 1, err[-3000:]
    assert err.strip().startswith(f'test.py: error: {tmp_path}/nothing/annotations/'
                                  'instances_val.json: no such file'), err[-3000:]
    assert len(err.strip().splitlines()) == 1
    assert '--data-root' in err


def test_own_data_flags_point_every_split_and_evaluator(tmp_path):
    """Finding 16 at config level: --train-ann/--val-ann/--img-dir for any layout."""
    train, val, pics = tmp_path / 'labels/train.json', tmp_path / 'labels/val.json', tmp_path
    cfg = load_config(SHAPES, data_root='/ignored', train_ann=str(train), val_ann=str(val),
                      img_dir=str(pics / 'pics'), classes='blob,bar')
    assert cfg.train_dataloader.dataset.ann_file == str(train)
    for split in ('val', 'test'):
        assert cfg[f'{split}_dataloader'].dataset.ann_file == str(val)
        assert cfg[f'{split}_evaluator'].ann_file == str(val)
    for ds in _datasets(cfg):
        assert ds.data_prefix.img == str(pics / 'pics') + '/'


def test_readme_onnx_input_is_rgb_normalised_with_the_configs_mean_std():
    """What docs/export.md says the exported ONNX expects: the image as RGB, (x - mean) / std
    with the config's data_preprocessor values (the detector flips mmcv's BGR load)."""
    import numpy as np
    import torch
    setup_environment()
    cfg = load_config(SHAPES)
    dp = cfg.model.data_preprocessor
    assert dp.bgr_to_rgb is True
    assert dp.mean == [123.675, 116.28, 103.53] and dp.std == [58.395, 57.12, 57.375]
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        from mmdet.registry import MODELS
        pre = MODELS.build(dict(dp, pad_size_divisor=1))
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # as LoadImageFromFile reads
    out = pre({'inputs': [torch.from_numpy(bgr).permute(2, 0, 1).contiguous()]})['inputs']
    rgb = bgr[..., ::-1].astype(np.float32)
    mine = (rgb - np.array(dp.mean, np.float32)) / np.array(dp.std, np.float32)
    assert torch.allclose(out[0], torch.from_numpy(mine).permute(2, 0, 1), atol=1e-5)

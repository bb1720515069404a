"""Config helpers shared by the tools: data root, schedule length, train options."""
from __future__ import annotations

from pathlib import Path

import pytest

import resnet_backbone.engine.training as training
from resnet_backbone.engine.training import (
    apply_train_options,
    load_config,
    set_data_root,
    set_max_iters,
)

ROOT = Path(__file__).resolve().parents[1]
SHAPES = str(ROOT / 'configs/shapes/retinanet_r18_fpn_shapes.py')


def test_set_data_root_moves_datasets_and_evaluators():
    cfg = load_config(SHAPES)
    set_data_root(cfg, '/elsewhere/coco')
    assert cfg.train_dataloader.dataset.data_root == '/elsewhere/coco/'
    assert cfg.val_dataloader.dataset.data_root == '/elsewhere/coco/'
    assert cfg.val_evaluator.ann_file == '/elsewhere/coco/annotations/instances_val.json'
    assert cfg.test_evaluator.ann_file == '/elsewhere/coco/annotations/instances_val.json'


def test_set_max_iters_stretches_the_schedule():
    cfg = load_config(SHAPES)
    old = cfg.train_cfg.max_iters
    set_max_iters(cfg, 300)
    assert cfg.train_cfg.max_iters == cfg.train_cfg.val_interval == 300
    warmup, cosine = cfg.param_scheduler
    assert warmup.end == 50 and cosine.end == 300 and cosine.T_max == 250
    assert old != 300
    with pytest.raises(ValueError, match='^max_iters must be >= 1; got 0$'):
        set_max_iters(cfg, 0)


def test_train_options():
    cfg = load_config(SHAPES, work_dir='/tmp/nonexistent-work-dir-xyz')
    apply_train_options(cfg, auto_scale_lr=True, resume='auto')
    assert cfg.auto_scale_lr.enable is True
    assert cfg.resume is False  # nothing to resume from: starts fresh, says so
    cfg.pop('auto_scale_lr')
    with pytest.raises(ValueError, match=r'^--auto-scale-lr needs `auto_scale_lr'):
        apply_train_options(cfg, auto_scale_lr=True)


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='CPU-only behaviour')
def test_amp_on_cpu_is_a_one_line_error():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(ROOT / 'tools/train.py'), SHAPES, '--amp',
                        '--work-dir', '/tmp/nonexistent-work-dir-xyz'],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "train.py: error: --amp needs a CUDA GPU (mmengine's AmpOptimWrapper refuses the CPU); "
        'this machine has none, so drop --amp']


# -- issue 21, finding 4: a shorter run anneals; an outlasting schedule is one WARNING ----

def _lrs(cfg, iters: int) -> list[float]:
    """The learning rate at each iteration of ``cfg``'s schedule (mmengine's schedulers)."""
    import torch
    from mmengine.optim import OptimWrapper
    from mmengine.registry import PARAM_SCHEDULERS
    opt = OptimWrapper(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
    scheds = [PARAM_SCHEDULERS.build(dict(s, optimizer=opt)) for s in
              [{k: v for k, v in s.items() if k != '_scope_'} for s in cfg.param_scheduler]]
    lrs = []
    for _ in range(iters):
        lrs.append(opt.get_lr()['lr'][0])
        for s in scheds:
            s.step()
    return lrs + [opt.get_lr()['lr'][0]]


# the tests step the schedulers without an optimizer step, on purpose (the LR values are
# what is checked); torch warns about that order, which a real run never has
_NO_OPT_STEP = pytest.mark.filterwarnings(r'ignore:Detected call of `scheduler.step\(\)` before')


@_NO_OPT_STEP
@pytest.mark.parametrize('iters', [1, 2, 4, 20, 60, 3000])
def test_max_iters_scales_the_schedule(iters):
    cfg = load_config(SHAPES, max_iters=iters)
    assert cfg.train_cfg.max_iters == iters
    for s in cfg.param_scheduler:
        assert 0 <= s.begin < s.end <= iters, dict(s)
    warmup, cosine = cfg.param_scheduler
    assert cosine.end == iters and cosine.T_max == iters - cosine.begin
    if iters > 100:
        assert warmup.end == 50  # a warm-up that fits keeps its length
    lrs = _lrs(cfg, iters)[:iters]  # the rate of each iteration of the run
    if iters >= 3:
        peak = lrs.index(max(lrs))
        assert max(lrs) == pytest.approx(1.0, rel=1e-6)  # out of warm-up
        after = lrs[peak:]
        assert all(b <= a + 1e-9 for a, b in zip(after, after[1:]))  # then anneals
        assert lrs[-1] < (0.6 if iters < 10 else 0.05)
def test_max_iters_wins_over_cfg_options_and_refuses_epochs():
    cfg = load_config(SHAPES, max_iters=4, cfg_options={'train_cfg.max_iters': 4,
                                                        'train_cfg.val_interval': 4})
    assert [(s.begin, s.end) for s in cfg.param_scheduler] == [(0, 2), (2, 4)]
    assert training.check_schedule(cfg) is None
    with pytest.raises(Exception, match=r'^--max-iters: this config trains by epochs'):
        load_config(str(ROOT / 'configs/coco/retinanet_rv1custom-r50_fpn_1x_coco.py'),
                    max_iters=10)


def test_schedule_beyond_max_iters_is_one_warning_line(capsys):
    cfg = load_config(SHAPES, cfg_options={'train_cfg.max_iters': 20})
    capsys.readouterr()
    msg = training.check_schedule(cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [msg]
    assert msg.startswith('WARNING: the LR schedule outlasts train_cfg.max_iters=20 '
                          '(LinearLR end=50, CosineAnnealingLR end=1200)')
    assert '--max-iters 20' in msg
    cfg = load_config(SHAPES, cfg_options={'param_scheduler': [dict(
        type='MultiStepLR', by_epoch=False, begin=0, end=20, milestones=[10, 30])],
        'train_cfg.max_iters': 20})
    assert 'MultiStepLR milestones [30]' in training.check_schedule(cfg)
    assert training.check_schedule(load_config(SHAPES)) is None  # the config as written: silent


def test_max_iters_is_documented_in_help():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(ROOT / 'tools/train.py'), '--help'],
                       capture_output=True, text=True)
    assert r.returncode == 0
    text = ' '.join(r.stdout.split())
    assert '--max-iters N train for N iterations, the LR schedule scaled to match' in text


@_NO_OPT_STEP
def test_set_max_iters_shorter_than_the_warmup_keeps_a_valid_schedule():
    cfg = load_config(SHAPES)
    set_max_iters(cfg, 20)  # what tools/demo.py --iters 20 does
    for s in cfg.param_scheduler:
        assert 0 <= s.begin < s.end <= 20, dict(s)
    assert _lrs(cfg, 20)[19] < 0.05  # annealed, not stuck in warm-up


# -- issue 29 ------------------------------------------------------------------------------

@_NO_OPT_STEP
@pytest.mark.parametrize('iters, warm', [(40, 10), (60, 15), (200, 50), (1200, 50), (8, 2)])
def test_warmup_keeps_its_iterations_capped_at_a_quarter_of_the_run(iters, warm):
    """Finding 12: --max-iters 40 squeezed the 50-iteration warm-up to 2 iterations (the
    rate jumped to full at iteration 2 and the loss to 9-11); it keeps 10 now."""
    cfg = load_config(SHAPES, max_iters=iters)
    warmup, cosine = cfg.param_scheduler
    assert (warmup.begin, warmup.end) == (0, warm) and cosine.begin == warm
    assert cosine.end == iters and cosine.T_max == iters - warm
    lrs = _lrs(cfg, iters)
    assert lrs[warm - 2] < 1.0 and lrs[warm - 1] == pytest.approx(1.0)  # full rate at its end


@pytest.mark.parametrize('classes, fine', [
    (['face', 'cup', 'helmet'], True), (['face', 'helmet'], True), (['cup'], True),
    (['cup', 'face', 'helmet'], False), (['helmet', 'face'], False),
    (['face', 'cup', 'helmett'], False), (['dog'], False)])
def test_class_names_must_be_categories_in_the_files_order(classes, fine):
    """Findings 1 and 2: mmdet numbers labels in the file's category order, so another
    order names every box wrongly; a misspelt name drops its boxes silently."""
    names = ['face', 'cup', 'helmet']  # ids 7, 3, 12 in the probe's file
    if fine:
        training.check_class_names(classes, names, 'a.json')
        return
    with pytest.raises(training.ClassesMismatchError) as info:
        training.check_class_names(classes, names, 'a.json')
    msg = str(info.value)
    assert msg.startswith('a.json: ') and '\n' not in msg
    if classes == ['cup', 'face', 'helmet']:
        assert 'give --classes face,cup,helmet (every split' in msg
    if classes == ['face', 'cup', 'helmett']:
        assert "class 'helmett' is not a category of this file (its categories, in " \
               'order: face, cup, helmet)' in msg


def test_coco_dataset_refuses_a_class_order_other_than_the_files(tmp_path):
    """Findings 1-2 at the dataset (train, val, test and the dump all build one): mmdet's
    CocoDataset took cup,face,helmet and numbered labels face=0, cup=1, helmet=2."""
    import json

    from mmdet.datasets import CocoDataset
    training.guard_empty_datasets()
    cats = [dict(id=7, name='face'), dict(id=3, name='cup'), dict(id=12, name='helmet')]
    ann = tmp_path / 'a.json'
    ann.write_text(json.dumps(dict(
        images=[dict(id=1, file_name='x.png', width=64, height=64)],
        annotations=[dict(id=k + 1, image_id=1, category_id=c['id'], bbox=[1, 1, 9, 9],
                          area=81, iscrowd=0) for k, c in enumerate(cats)],
        categories=cats)))

    def build(classes):
        return CocoDataset(ann_file=str(ann), metainfo=dict(classes=classes),
                           data_prefix=dict(img=str(tmp_path)), pipeline=[])

    ds = build(('face', 'helmet'))
    assert ds.cat2label == {7: 0, 12: 1}
    assert [i['bbox_label'] for i in ds[0]['instances']] == [0, 1]
    for bad in (('cup', 'face', 'helmet'), ('face', 'cup', 'helmett')):
        with pytest.raises(training.ClassesMismatchError, match=f'^{ann}: '):
            build(bad)
    assert 'COCOAPI' not in vars(ds)  # the dataset's own API class is put back


@pytest.mark.parametrize('scheds, old, iters, want', [
    # a flat first phase of two thirds of the run is not a warm-up: it scales
    ([dict(type='ConstantLR', by_epoch=False, begin=0, end=60000),
      dict(type='CosineAnnealingLR', by_epoch=False, begin=60000, end=90000, T_max=30000)],
     90000, 900, [(0, 600), (600, 900)]),
    # a decay phase, and two cosine cycles, scale with the run
    ([dict(type='PolyLR', by_epoch=False, begin=0, end=1000),
      dict(type='ConstantLR', by_epoch=False, begin=1000, end=1200, factor=0.01)],
     1200, 120, [(0, 100), (100, 120)]),
    ([dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=400, T_max=400),
      dict(type='CosineAnnealingLR', by_epoch=False, begin=400, end=1200, T_max=800)],
     1200, 120, [(0, 40), (40, 120)]),
    # a real warm-up is capped; a milestone at its end still scales
    ([dict(type='LinearLR', by_epoch=False, begin=0, end=200, start_factor=0.001),
      dict(type='MultiStepLR', by_epoch=False, begin=0, end=1000, milestones=[200, 800])],
     1000, 100, [(0, 25), (0, 100)]),
])
def test_only_a_real_warmup_is_capped(scheds, old, iters, want):
    """Review of finding 12's fix: every scheduler from 0 that ended early was taken for a
    warm-up and capped at a quarter of the run (a 60000-iteration flat phase became 225
    of 900 iterations; a milestone at a warm-up's end moved with it)."""
    from mmengine.config import Config
    cfg = Config(dict(train_cfg=dict(max_iters=old, val_interval=old), param_scheduler=scheds))
    set_max_iters(cfg, iters)
    assert [(s.begin, s.end) for s in cfg.param_scheduler] == want
    if scheds[-1]['type'] == 'MultiStepLR':
        assert cfg.param_scheduler[1].milestones == [20, 80]


def test_class_check_takes_one_name_as_mmdet_does_and_refuses_twice_named_categories():
    """Review of findings 1-2: classes=('square') (a string, no comma) is one class to
    mmdet and trained before the check; a category name given twice in the file made
    mmdet label its second id past the last class (background), silently."""
    training.check_class_names('circle', ['square', 'circle'], 'a.json')
    with pytest.raises(training.ClassesMismatchError,
                       match=r"^a\.json: the category name 'square' appears more than once"):
        training.check_class_names(['square', 'circle'], ['square', 'circle', 'square'],
                                   'a.json')

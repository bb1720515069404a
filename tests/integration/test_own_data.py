"""Bring your own data: the README's commands and docs/training.md's section, end to end.

A small COCO-format set laid out unlike ours (images in ``pics/``, annotations in
``labels/train.json`` and ``labels/val.json``) with class names of its own ('blob',
'bar', category ids 3 and 7), trained for 2 iterations and evaluated with exactly the
flags the README gives, run from the data set's folder with relative paths.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

from .conftest import CONFIG, ROOT, tiny_cfg

CLASSES = {3: 'blob', 7: 'bar'}


def make_own_data(root, num_train: int = 6, num_val: int = 3, size: int = 64) -> None:
    rng = np.random.default_rng(0)
    (root / 'pics').mkdir(parents=True)
    (root / 'labels').mkdir()
    for split, num in (('train', num_train), ('val', num_val)):
        images, anns = [], []
        for i in range(num):
            img = Image.fromarray(rng.integers(0, 80, (size, size, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(img)
            for cat in (3, 7):
                x, y = (int(v) for v in rng.integers(2, size // 2, 2))
                w, h = (int(rng.integers(12, 24)), int(rng.integers(12, 24))) if cat == 3 \
                    else (int(rng.integers(20, 30)), 6)
                shape = draw.ellipse if cat == 3 else draw.rectangle
                shape([x, y, x + w - 1, y + h - 1], fill=(200, 40 * cat % 255, 90))
                anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=cat,
                                 bbox=[x, y, w, h], area=w * h, iscrowd=0))
            name = f'{split}_{i:03d}.jpg'
            img.save(root / 'pics' / name)
            images.append(dict(id=i + 1, file_name=name, width=size, height=size))
        coco = dict(images=images, annotations=anns,
                    categories=[dict(id=k, name=v) for k, v in CLASSES.items()])
        (root / 'labels' / f'{split}.json').write_text(json.dumps(coco))


def _run(tool: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / 'tools' / tool), *args],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


def test_own_data_layout_and_class_names_end_to_end(tmp_path):
    data = tmp_path / 'mydata'
    make_own_data(data)
    own = ['--train-ann', 'labels/train.json', '--val-ann', 'labels/val.json',
           '--img-dir', 'pics', '--classes', 'blob,bar']
    opts = {k: v for k, v in tiny_cfg(2).items() if k != 'train_cfg.max_iters'}
    work = tmp_path / 'work'
    r = _run('train.py', CONFIG, '--work-dir', str(work), *own, '--max-iters', '2',
             '--cfg-options', *(f'{k}={v}' for k, v in opts.items()), cwd=data)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert 'Iter(train) [2/2]' in log
    assert 'coco/bbox_mAP' in log  # evaluated on labels/val.json
    assert 'WARNING' not in log, [ln for ln in log.splitlines() if 'WARNING' in ln]
    saved = torch.load(work / 'iter_2.pth', weights_only=True)
    assert tuple(saved['meta']['dataset_meta']['classes']) == ('blob', 'bar')
    assert saved['state_dict']['bbox_head.retina_cls.weight'].shape[0] == 9 * 2  # 2 classes
    assert not (data / 'data').exists()  # nothing of the embedded data set made here

    r = _run('test.py', CONFIG, str(work / 'iter_2.pth'), '--work-dir', str(tmp_path / 't'),
             '--val-ann', 'labels/val.json', '--img-dir', 'pics', '--classes', 'blob,bar',
             '--cfg-options', 'test_dataloader.num_workers=0',
             'test_dataloader.persistent_workers=False', 'model.test_cfg.score_thr=0.0',
             cwd=data)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert 'WARNING' not in log, [ln for ln in log.splitlines() if 'WARNING' in ln]
    line = next(ln for ln in log.splitlines() if 'coco/bbox_mAP:' in ln)
    assert 0.0 <= float(line.split('coco/bbox_mAP:')[1].split()[0]) <= 1.0
    # issue 29, finding 1: the swapped order scored the same mAP under the wrong names
    r = _run('test.py', CONFIG, str(work / 'iter_2.pth'), '--work-dir', str(tmp_path / 't'),
             '--val-ann', 'labels/val.json', '--img-dir', 'pics', '--classes', 'bar,blob',
             '--cfg-options', 'test_dataloader.num_workers=0', cwd=data)
    assert 'give --classes blob,bar' in _one_line_error(r, 'test.py')

    # the wrong class names: one line listing the file's categories, before any training
    r = _run('train.py', CONFIG, '--work-dir', str(tmp_path / 'w2'), *own[:-1],
             'square,circle', '--max-iters', '1', '--cfg-options',
             *(f'{k}={v}' for k, v in opts.items()), cwd=data)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('train.py: error: ') and 'Traceback' not in r.stderr
    assert "the file's categories are: blob, bar; give those with --classes blob,bar" in last


# -- issue 29, findings 1 and 2: a class order other than the file's, or a name the file
# does not have, is one line from every tool (before: trained / scored with wrong names)

def _one_line_error(r, tool: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith(f'{tool}: error: '), r.stderr[-3000:]
    return lines[0].split(' (full traceback: ')[0]


def test_class_order_and_misspelt_class_are_refused_end_to_end(tmp_path):
    data = tmp_path / 'mydata'
    make_own_data(data, num_train=2, num_val=1)  # the file's order: blob (id 3), bar (7)
    opts = ['--max-iters', '2', '--cfg-options',
            *(f'{k}={v}' for k, v in tiny_cfg(2).items() if not k.startswith('train_cfg.'))]
    work = str(tmp_path / 'work')
    own = ['--train-ann', 'labels/train.json', '--val-ann', 'labels/val.json',
           '--img-dir', 'pics']
    # mmdet numbers labels in the file's order: bar,blob would train 'blob' boxes as label
    # 0 and call them 'bar' everywhere
    line = _one_line_error(_run('train.py', CONFIG, '--work-dir', work, *own,
                                '--classes', 'bar,blob', *opts, cwd=data), 'train.py')
    assert 'labels/train.json: the classes bar,blob are not in the file\'s category order ' \
           '(blob, bar)' in line and 'give --classes blob,bar (every split' in line
    line = _one_line_error(_run('train.py', CONFIG, '--work-dir', work, *own,
                                '--classes', 'blob,barr', *opts, cwd=data), 'train.py')
    assert "class 'barr' is not a category of this file (its categories, in order: " \
           'blob, bar)' in line
    # the same through metainfo.classes (test.py: test_own_data_layout_and_class_names...)
    line = _one_line_error(_run('train.py', CONFIG, '--work-dir', work, *own, *opts,
                                'metainfo.classes=[bar,blob]', cwd=data), 'train.py')
    assert 'give --classes blob,bar' in line
    assert not list((tmp_path / 'work').glob('*.pth'))  # nothing was trained

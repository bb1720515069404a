"""Comparing two dumps (issue 20, section 3): real float32 and float16 dumps of the
embedded shapes images, the one-line mismatch errors, RoI features, and the command."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_backbone.apis.dump import collect_images, dump_features, output_path
from resnet_backbone.apis.dump.compare import compare_dumps, compare_maps, format_table
from resnet_backbone.apis.dump.store import load_levels, save_levels
from resnet_backbone.apis.features import FeatureExtractor
from resnet_backbone.data.shapes import generate
from resnet_backbone.errors import ToolError
from resnet_backbone.tools import compare_dumps as tool
from resnet_backbone.tools.runner import run_tool

from .conftest import CONFIG, ROOT

LEVELS = ['c2', 'c5', 'p3']
STATS = ('cosine_mean', 'cosine_min', 'max_rel', 'mean_rel')


@pytest.fixture(scope='module')
def dumps(tmp_path_factory):
    """Dumps of the 4 embedded validation images: float32 (``a``), float16 (``b``), and
    float32 again in npz (``a_npz``: the same arrays, another format and folder)."""
    tmp = tmp_path_factory.mktemp('compare')
    data = generate(tmp / 'shapes', num_train=2, num_val=4, size=64)
    images, root = collect_images(data / 'val')
    assert len(images) == 4
    fx = FeatureExtractor.from_config(CONFIG, levels=LEVELS)
    out = {'tmp': tmp, 'images': images, 'root': root, 'fx': fx}
    for name, kw in (('a', {}), ('b', {'dtype': 'float16'}), ('a_npz', {'fmt': 'npz'})):
        out[name] = tmp / name
        s = dump_features(fx, images, root, out[name], progress=False, **kw)
        assert s.dumped == 4, s.line()
    return out


def _arrays(folder, images, root, fmt='safetensors'):
    return [load_levels(output_path(im, root, folder, fmt))[0] for im in images]


def test_float16_against_float32(dumps):
    """Per level: cosine >= 0.9999 and a small, non-zero relative difference, equal to
    the same metrics computed here with numpy; compare.json holds the fixed schema."""
    res = compare_dumps(dumps['a'], dumps['b'], progress=False)
    assert res['images'] == 4 and list(res['levels']) == LEVELS and res['rois'] is None
    assert res['dtypes'] == {'a': ['float32'], 'b': ['float16']}
    a = _arrays(dumps['a'], dumps['images'], dumps['root'])
    b = _arrays(dumps['b'], dumps['images'], dumps['root'])
    for lv in LEVELS:
        s = res['levels'][lv]
        assert 0.9999 <= s['cosine_min'] <= s['cosine_mean'] < 1.0, (lv, s)
        # float16 rounds each value to within 2**-11 of itself, so of the map's max |a|
        assert 0.0 < s['mean_rel'] < s['max_rel'] <= 2 ** -11, (lv, s)
        cos, max_rel, mean_rel = [], [], []
        for ia, ib in zip(a, b):
            x = ia[lv].double().numpy().ravel()
            y = ib[lv].double().numpy().ravel()
            cos.append(x @ y / np.sqrt((x @ x) * (y @ y)))
            scale = np.abs(x).max()
            max_rel.append(np.abs(x - y).max() / scale)
            mean_rel.append(np.abs(x - y).mean() / scale)
        assert s['cosine_mean'] == pytest.approx(np.mean(cos), abs=1e-12)
        assert s['cosine_min'] == pytest.approx(np.min(cos), abs=1e-12)
        assert s['max_rel'] == pytest.approx(np.max(max_rel), rel=1e-9)
        assert s['mean_rel'] == pytest.approx(np.mean(mean_rel), rel=1e-9)
        assert s['cosine_min_image'] == dumps['images'][int(np.argmin(cos))].name
    saved = json.loads((dumps['b'] / 'compare.json').read_text())
    assert saved == res
    assert saved['a'] == str(dumps['a']) and saved['b'] == str(dumps['b'])
    for lv in LEVELS:
        assert all(isinstance(saved['levels'][lv][k], float) for k in STATS)


def test_identical_dumps_give_cosine_1_and_rel_0_exactly(dumps):
    """Two float32 dumps of the same images (safetensors and npz, so the names match
    without the format suffix): exactly 1 and 0, and the table says so."""
    res = compare_dumps(dumps['a'], dumps['a_npz'], progress=False)
    assert res['images'] == 4
    for lv in LEVELS:
        s = res['levels'][lv]
        assert (s['cosine_mean'], s['cosine_min'], s['max_rel'], s['mean_rel']) == (
            1.0, 1.0, 0.0, 0.0), (lv, s)
    rows = {ln.split()[0]: ln.split()[1:] for ln in format_table(res).splitlines()[4:]}
    assert rows == {lv: ['1.000000000', '1.000000000', '0', '0.0e+00', '0.0e+00']
                    for lv in LEVELS}, rows  # no worst image where nothing differs


def test_a_moved_dump_folder_still_matches(dumps):
    """index.json names files under the folder as it was given to the dump; a copy
    elsewhere is matched through its manifests' relative names."""
    moved = dumps['tmp'] / 'moved' / 'b'
    if not moved.exists():
        shutil.copytree(dumps['b'], moved)
    res = compare_dumps(dumps['a'], moved, progress=False)
    assert res['images'] == 4 and res['levels']['c2']['max_rel'] > 0


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert '\n' not in msg, msg
    return msg


def test_other_images_are_one_line(dumps):
    """A dump of 3 of the 4 images: one line with the counts and an example."""
    fewer = dumps['tmp'] / 'fewer'
    dump_features(dumps['fx'], dumps['images'][:3], dumps['root'], fewer, progress=False)
    with pytest.raises(ToolError) as info:
        compare_dumps(dumps['a'], fewer, progress=False)
    missing = dumps['images'][3].name
    assert _one_line(info).startswith(f'1 image only in A (e.g. {missing}), 0 only in B; '
                                      'compare dumps of the same images'), info.value
    assert not (fewer / 'compare.json').exists()


def test_other_levels_are_one_line(dumps):
    other = dumps['tmp'] / 'other_levels'
    fx = FeatureExtractor.from_config(CONFIG, levels=['c2', 'c5', 'p4'])
    dump_features(fx, dumps['images'], dumps['root'], other, progress=False)
    with pytest.raises(ToolError) as info:
        compare_dumps(dumps['a'], other, progress=False)
    assert _one_line(info).startswith('levels differ: A has c2,c5,p3, B has c2,c5,p4'), (
        info.value)


def test_other_shapes_are_one_line(dumps):
    """The same image names at another size (64x128: resized to another input shape):
    one line naming the first image and level."""
    wide = dumps['tmp'] / 'wide_images'
    wide.mkdir(exist_ok=True)
    for im in dumps['images']:
        Image.open(im).convert('RGB').resize((128, 64)).save(wide / im.name)
    images, root = collect_images(wide)
    out = dumps['tmp'] / 'wide'
    dump_features(dumps['fx'], images, root, out, progress=False)
    with pytest.raises(ToolError) as info:
        compare_dumps(dumps['a'], out, progress=False)
    first = dumps['images'][0].name
    assert _one_line(info).startswith(f'{first}: level c2 has shape 1x64x32x32 in A and '
                                      '1x64x16x32 in B'), info.value


def test_a_folder_without_index_is_one_line(dumps, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(ToolError) as info:
        compare_dumps(dumps['a'], empty, progress=False)
    assert _one_line(info).startswith(f'dump B ({empty}) has no index.json; dump features '
                                      'there first'), info.value
    with pytest.raises(ToolError) as info:
        compare_dumps(tmp_path / 'nowhere', dumps['a'], progress=False)
    assert _one_line(info).startswith(f"dump A ({tmp_path / 'nowhere'}) is not a folder; "
                                      'dump features there first'), info.value


# ---------------------------------------------------------------- RoI features
def _roi_dump(folder, per_image: dict[str, tuple[torch.Tensor, torch.Tensor] | None],
              p3: torch.Tensor, boxes_shift: float = 0.0):
    """A dump written by hand, as the RoI option writes it: level p3 plus ``rois`` and
    ``roi_pooled`` (None: an image without RoI features)."""
    entries = []
    for name, roi in per_image.items():
        meta = {'levels': {'p3': {'shape': list(p3.shape), 'stride': 8,
                                  'dtype': 'float32'}}}
        arrays = {'p3': p3}
        if roi is not None:
            arrays |= {'rois': roi[0], 'roi_pooled': roi[1]}
            meta['rois'] = [{'box': [1.0 + boxes_shift, 2.0, 30.0, 40.0], 'label': 0,
                             'score': 1.0, 'level': 0} for _ in range(roi[0].shape[0])]
        save_levels(folder / f'{name}.safetensors', arrays, meta, 'safetensors')
        entries.append({'image': name, 'file': str(folder / f'{name}.safetensors'), **meta})
    (folder / 'index.json').write_text(json.dumps({'images': entries, 'skipped': []}))
    return folder


def test_roi_features_are_compared_box_by_box(tmp_path):
    """Both dumps have rois/roi_pooled: per-box cosine and relative differences (checked
    against numpy); an image whose box count differs is one note line and left out; the
    RoI keys are not levels."""
    g = torch.Generator().manual_seed(0)
    p3 = torch.rand(1, 8, 4, 4, generator=g)
    rois = torch.rand(3, 8, 7, 7, generator=g)
    pooled = rois.mean((2, 3))
    noise = torch.randn(3, 8, 7, 7, generator=g) * 1e-3
    a = _roi_dump(tmp_path / 'a', {'x.png': (rois, pooled), 'y.png': (rois[:2], pooled[:2])},
                  p3)
    b = _roi_dump(tmp_path / 'b', {'x.png': (rois + noise, (rois + noise).mean((2, 3))),
                                   'y.png': (rois, pooled)}, p3)
    res = compare_dumps(a, b, progress=False)
    assert list(res['levels']) == ['p3'] and res['levels']['p3']['max_rel'] == 0.0
    assert res['roi_images'] == 1
    assert res['notes'] == ['y.png: 2 boxes in A and 3 in B; its RoI features are not '
                            'compared']
    x, y = rois.double().reshape(3, -1).numpy(), (rois + noise).double().reshape(3, -1).numpy()
    cos = (x * y).sum(1) / np.sqrt((x * x).sum(1) * (y * y).sum(1))
    max_rel = np.abs(x - y).max(1) / np.abs(x).max(1)
    s = res['rois']['rois']
    assert s['boxes'] == 3
    assert s['cosine_mean'] == pytest.approx(cos.mean(), abs=1e-12)
    assert s['cosine_min'] == pytest.approx(cos.min(), abs=1e-12)
    assert s['max_rel'] == pytest.approx(max_rel.max(), rel=1e-9)
    assert s['cosine_min_box'] == f'x.png#{int(np.argmin(cos))}'
    assert 0 < res['rois']['roi_pooled']['max_rel'] < s['max_rel']
    table = format_table(res)
    assert '\nrois ' in table and '\nroi_pooled ' in table and table.endswith(
        res['notes'][0]), table
    saved = json.loads((b / 'compare.json').read_text())
    assert set(saved['rois']) == {'rois', 'roi_pooled'}
    assert all(isinstance(saved['rois'][k][s], float) for k in saved['rois'] for s in STATS)


def test_roi_features_in_one_dump_only_or_other_boxes_are_notes(tmp_path):
    p3 = torch.rand(1, 8, 4, 4)
    rois = torch.rand(2, 8, 7, 7)
    a = _roi_dump(tmp_path / 'a', {'x.png': (rois, rois.mean((2, 3))), 'y.png': None}, p3)
    b = _roi_dump(tmp_path / 'b', {'x.png': None, 'y.png': None}, p3)
    res = compare_dumps(a, b, progress=False)
    assert res['rois'] is None
    assert res['notes'] == ['1 image has RoI features only in A; not compared']
    c = _roi_dump(tmp_path / 'c', {'x.png': (rois, rois.mean((2, 3))), 'y.png': None}, p3,
                  boxes_shift=2.5)
    res = compare_dumps(a, c, progress=False)
    assert res['rois']['rois']['cosine_min'] == 1.0
    assert res['notes'] == ['x.png: the boxes differ by up to 2.5 px between A and B; their '
                            'RoI features describe different regions']


def test_real_roi_dumps_float16_against_float32(dumps):
    """``rb-dump --rois gt`` (Faster R-CNN, the shapes boxes) as float32 and float16:
    the RoI arrays are compared box by box, as close as the levels."""
    data = dumps['root'].parent
    outs = []
    for dtype in ('float32', 'float16'):
        outs.append(dumps['tmp'] / f'rois_{dtype}')
        r = subprocess.run(
            [sys.executable, str(ROOT / 'tools' / 'dump_features.py'),
             str(ROOT / 'configs/shapes/faster-rcnn_r18_fpn_shapes.py'), '--input',
             str(dumps['root']), '--out', str(outs[-1]), '--levels', 'p3', '--rois', 'gt',
             '--ann-file', str(data / 'annotations' / 'instances_val.json'), '--dtype', dtype],
            capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-2000:]
    res = compare_dumps(*outs, progress=False)
    assert list(res['levels']) == ['p3'] and res['roi_images'] == 4, res
    boxes = sum(len(load_levels(f)[1]['rois']) for f in sorted(outs[0].glob('*.safetensors')))
    for key in ('rois', 'roi_pooled'):
        s = res['rois'][key]
        assert s['boxes'] == boxes > 0
        assert 0.9999 <= s['cosine_min'] < 1.0 and 0.0 < s['max_rel'] <= 2 ** -11, (key, s)
    assert res['notes'] == []


def test_non_finite_values_are_left_out_and_counted():
    a = torch.tensor([1.0, float('inf'), 2.0, float('nan')])
    b = torch.tensor([1.0, 5.0, 2.5, 1.0])
    r = compare_maps(a, b)
    assert r['nonfinite'] == 2 and r['max_rel'] == pytest.approx(0.25)
    assert r['cosine'] == pytest.approx(6.0 / np.sqrt(5.0 * 7.25))


# ---------------------------------------------------------------- the command
def test_command_prints_the_table_and_writes_compare_json(dumps):
    """The table on stdout, compare.json, and DIR_B's report rebuilt with its comparison
    section (the dump wrote the report before there was anything to compare)."""
    (dumps['b'] / 'compare.json').unlink(missing_ok=True)
    assert 'id="compare"' not in (dumps['b'] / 'index.html').read_text()
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'compare_dumps.py'),
                        str(dumps['a']), str(dumps['b'])], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"A: {dumps['a']} (float32)" and lines[2] == '4 images', r.stdout
    assert lines[3].split() == ['level', 'cosine', 'mean', 'cosine', 'min', '1-cos', 'min',
                                'max', 'rel', 'mean', 'rel', 'worst']
    assert [ln.split()[0] for ln in lines[4:4 + len(LEVELS)]] == LEVELS, r.stdout
    assert lines[-2:] == [f"written: {dumps['b']}/compare.json",
                          f"report: {dumps['b']}/index.html"], r.stdout
    assert '<section id="compare">' in (dumps['b'] / 'index.html').read_text()
    saved = json.loads((dumps['b'] / 'compare.json').read_text())
    assert saved['images'] == 4 and set(saved['levels']) == set(LEVELS)


def test_command_error_is_one_line(dumps, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_tool('compare_dumps.py', tool.main, [str(dumps['a']), str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f'compare_dumps.py: error: dump B ({tmp_path}) has no index.json')

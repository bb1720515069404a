"""Dumping at data-set scale (issue 19): batches, ranks, manifests, bounded overlays,
storage dtypes and faults, on the embedded shapes config."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import resnet_backbone.apis.dump.run as dump
from resnet_backbone.apis.dump import collect_images, dump_features, load_levels, output_path
from resnet_backbone.apis.dump.store import Manifest, manifest_path, read_manifests, record
from resnet_backbone.apis.features import FeatureExtractor
from resnet_backbone.engine.training import load_config
from resnet_backbone.errors import ToolError

from .conftest import CONFIG, ROOT
from .fault_injection.sitecustomize import KILL_ENV, fault_env
from .test_distributed import _free_port

LEVELS = ['c2', 'c5', 'p3']


def make_images(folder, sizes, seed=0):
    """PNGs of the given (h, w) sizes, random pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(
            folder / f'img{i:02d}.png')
    return collect_images(folder)


def arrays(out, images, root):
    return {im.name: load_levels(output_path(im, root, out, 'safetensors'))[0] for im in images}


# two padded shapes, interleaved, so that batches must be formed by shape
SIZES = [(64, 80), (96, 64), (64, 80), (96, 64), (64, 80), (64, 80), (96, 64)]


@pytest.mark.parametrize('fast', [True, False], ids=['fast', 'reference'])
def test_batched_dump_equals_batch_1(fast, tmp_path):
    """Each image's arrays from a batch-4 dump equal its batch-1 dump: bitwise in
    reference mode, within the fast path's tolerance otherwise. (Batching images of
    different padded shapes failed this: the padding changes border activations.)"""
    cfg = load_config(CONFIG, cfg_options={'model.backbone.fast': fast})
    fx = FeatureExtractor.from_config(cfg, levels=LEVELS)
    images, root = make_images(tmp_path / 'in', SIZES)
    one = dump_features(fx, images, root, tmp_path / 'b1', progress=False)
    four = dump_features(fx, images, root, tmp_path / 'b4', progress=False, batch_size=4,
                         writers=2)
    assert one.dumped == four.dumped == len(images)
    a, b = arrays(tmp_path / 'b1', images, root), arrays(tmp_path / 'b4', images, root)
    for name in a:
        for lv in LEVELS:
            if fast:
                torch.testing.assert_close(b[name][lv], a[name][lv], rtol=1e-5, atol=1e-5)
            else:
                assert torch.equal(b[name][lv], a[name][lv]), (name, lv)


def test_out_of_memory_in_a_batch_retries_one_by_one(tmp_path, capsys, monkeypatch):
    fx = FeatureExtractor.from_config(CONFIG, levels=LEVELS)
    images, root = make_images(tmp_path / 'in', [(64, 80)] * 5)
    real = fx.run_batch
    sizes = []

    def run_batch(samples, rois=None):
        sizes.append(len(samples))
        if len(samples) > 1:
            raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
        return real(samples, rois)
    monkeypatch.setattr(fx, 'run_batch', run_batch)
    s = dump_features(fx, images, root, tmp_path / 'out', batch_size=2, progress=False)
    assert s.dumped == 5 and not s.skipped
    err = capsys.readouterr().err
    assert err.count('out of memory in a batch of 2') == 1, err
    assert sizes == [2, 1, 1, 2, 1, 1, 1]


def _dist(out, inputs, nproc, env=None):
    return subprocess.run(
        ['bash', str(ROOT / 'tools' / 'dist_dump.sh'), CONFIG, str(nproc), '--input',
         str(inputs), '--out', str(out), '--levels', ','.join(LEVELS), '--workers', '1'],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, 'PORT': str(_free_port()), 'OMP_NUM_THREADS': '1',
             'PYTHON': sys.executable,  # this interpreter's stack, not whatever .venv holds
             **(env or {})})


def test_torchrun_two_ranks_then_a_killed_rank_and_a_rerun(tmp_path):
    """2 ranks (gloo) write the same files with the same arrays as 1 process, each image
    once, and one index; each rank's skipped image is named once, with its rank (rank
    1's were not shown). Then rank 1 is killed (SIGKILL) after its 2nd image: rank 0's
    files stay, and a re-run does only what is missing."""
    images, root = make_images(tmp_path / 'in', [(64, 80)] * 8 + [(96, 64)] * 4)
    fx = FeatureExtractor.from_config(CONFIG, levels=LEVELS)
    single = tmp_path / 'one'
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks (OMP_NUM_THREADS=1): the neck's fp32 convs
    try:  # differ in the last bit between 1 and 2 threads (p3 by 4e-7 on a 2-core CPU)
        assert dump_features(fx, images, root, single, progress=False).dumped == 12
    finally:
        torch.set_num_threads(threads)

    two = tmp_path / 'two'
    listing = tmp_path / 'list.txt'  # the 12 images, then one gone image for each rank
    listing.write_text(''.join(f'in/{i.name}\n' for i in images) + 'in/gone12.png\n'
                       'in/gone13.png\n')
    r = _dist(two, listing, 2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'dumped 12 on 2 ranks, already there 0, skipped 2 no such file' in r.stderr
    assert r.stderr.count('[dump] dumped') == 1  # one summary, by rank 0
    for k in (0, 1):
        line = f'[rank {k}] WARNING: skipped {tmp_path}/in/gone1{2 + k}.png: no such file'
        assert r.stderr.count(line) == 1, r.stderr[-3000:]
    assert r.stderr.count('WARNING: skipped') == 2  # by rank 0 alone, not in its bar
    names = lambda d: sorted(p.name for p in d.glob('*.safetensors'))  # noqa: E731
    assert names(two) == names(single)
    a, b = arrays(single, images, root), arrays(two, images, root)
    assert all(torch.equal(a[n][lv], b[n][lv]) for n in a for lv in LEVELS)
    lines = [json.loads(ln) for f in sorted((two / 'manifests').glob('*.jsonl'))
             for ln in f.read_text().splitlines()]
    assert sorted(rec['image'] for rec in lines
                  if rec['status'] == 'dumped') == sorted(str(i) for i in images)  # once each
    assert {rec['rank'] for rec in lines} == {0, 1}
    index = json.loads((two / 'index.json').read_text())
    assert sorted(e['image'] for e in index['images']) == sorted(str(i) for i in images)

    killed = tmp_path / 'killed'
    r = _dist(killed, tmp_path / 'in', 2, fault_env(os.environ, **{KILL_ENV: '1:2'}))
    assert r.returncode != 0
    before = {p.name: p.stat().st_mtime_ns for p in killed.glob('*.safetensors')}
    rank1 = [i for k, i in enumerate(images) if k % 2 == 1]
    assert sum(i.name + '.safetensors' in before for i in rank1) == 2  # killed after 2
    assert 2 <= len(before) < 12
    r = _dist(killed, tmp_path / 'in', 2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (f'dumped {12 - len(before)} on 2 ranks, already there {len(before)}'
            in r.stderr), r.stderr[-2000:]
    after = {p.name: p.stat().st_mtime_ns for p in killed.glob('*.safetensors')}
    assert len(after) == 12 and all(after[n] == t for n, t in before.items())
    assert len(json.loads((killed / 'index.json').read_text())['images']) == 12


def test_overlay_of_a_12_megapixel_photo_is_bounded(tmp_path):
    """A 4000x3000 photo: its overlays are at most 1024 px on the long side (they were
    drawn at the photo's full size: 48 s and 2.7 GB for nine levels)."""
    folder = tmp_path / 'in'
    folder.mkdir()
    rng = np.random.default_rng(0)
    small = (rng.random((300, 400, 3)) * 255).astype(np.uint8)
    Image.fromarray(small).resize((4000, 3000)).save(folder / 'phone.jpg', quality=85)
    images, root = collect_images(folder)
    fx = FeatureExtractor.from_config(CONFIG, levels=['c2', 'c3', 'c4', 'c5', 'p3', 'p4'])
    s = dump_features(fx, images, root, tmp_path / 'out', overlay=True, progress=False)
    assert s.dumped == 1
    pngs = sorted((tmp_path / 'out' / 'overlays').glob('phone.jpg.*.png'))
    assert len(pngs) == 7  # six levels and the sheet
    for png in pngs:
        with Image.open(png) as im:
            if png.name.endswith('.sheet.png'):
                assert im.height == 256
            else:
                assert im.size == (1024, 768), png.name
    scale = json.loads((tmp_path / 'out' / 'overlays' / 'scale.json').read_text())
    assert set(scale['ranges']) == {'c2', 'c3', 'c4', 'c5', 'p3', 'p4'}


def test_overlays_share_one_scale_per_level(tmp_path):
    """A dim image looks dim: the colour range is the folder's, not each map's min-max."""
    fx = FeatureExtractor.from_config(CONFIG, levels=['c2'])
    folder = tmp_path / 'in'
    folder.mkdir()
    rng = np.random.default_rng(1)
    noise = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(folder / 'a_bright.png')
    Image.fromarray((noise // 8).astype(np.uint8)).save(folder / 'b_dim.png')
    images, root = collect_images(folder)
    dump_features(fx, images, root, tmp_path / 'out', overlay=True, progress=False)
    scale = json.loads((tmp_path / 'out' / 'overlays' / 'scale.json').read_text())
    assert scale['image'].endswith('a_bright.png')
    _, meta_a = load_levels(output_path(images[0], root, tmp_path / 'out', 'safetensors'))
    _, meta_b = load_levels(output_path(images[1], root, tmp_path / 'out', 'safetensors'))
    assert meta_a['overlay_scale'] == meta_b['overlay_scale'] == scale['ranges']


def test_manifests_rebuild_the_index_and_resume_reads_no_array_file(tmp_path, monkeypatch,
                                                                     capsys):
    fx = FeatureExtractor.from_config(CONFIG, levels=LEVELS)
    images, root = make_images(tmp_path / 'in', [(64, 80)] * 3)
    out = tmp_path / 'out'
    dump_features(fx, images, root, out, progress=False)
    index = (out / 'index.json').read_text()
    (out / 'index.json').unlink()
    with open(out / 'manifests' / 'rank-00000.jsonl', 'a') as f:
        f.write('{"status": "dumped", "image": "cut short by a ki')  # a killed writer
    from resnet_backbone.tools.dump_features import main
    assert main(['--rebuild-index', '--out', str(out)]) == out / 'index.json'
    assert (out / 'index.json').read_text() == index
    (out / 'index.json').unlink()
    assert main(['--rebuild-index', str(out)]) == out / 'index.json'  # DIR given to it
    assert (out / 'index.json').read_text() == index
    assert len(read_manifests(out)) == 3

    def no_reads(path):
        raise AssertionError(f'resume opened {path}')
    monkeypatch.setattr(dump, 'read_meta', no_reads)
    capsys.readouterr()
    s = dump_features(fx, images, root, out, progress=True)
    assert s.already_there == 3 and s.dumped == 0
    assert capsys.readouterr().err == ''  # nothing to do: no empty bar (it printed twice)
    assert s.line().startswith('dumped 0, already there 3; index: ')  # no "skipped 0"

    # two ranks, faked in-process: "rank 1" writes its record as soon as it has the run
    # id, before rank 0 starts its loop; rank 0's bar must count it (its tail used to
    # start after the broadcast, missed it, and waited STALL_S for it: 10 minutes)
    two = tmp_path / 'two'

    def broadcast(run_id):
        m = Manifest(two, 1)
        m.append(record('dumped', str(images[1]), f'{images[1].name}.safetensors', rank=1,
                        run=run_id, bytes=10))
        m.close()
        return run_id
    monkeypatch.setattr(dump, '_dist_info', lambda: (0, 2))
    monkeypatch.setattr(dump, '_broadcast', broadcast)
    monkeypatch.setattr(dump, '_gather', lambda mine: [mine, {'dumped': 1, 'bytes': 10,
                                                              'already': 0, 'skipped': []}])
    monkeypatch.setattr(dump, '_barrier', lambda: None)
    monkeypatch.setattr(dump, 'STALL_S', 2.0)
    capsys.readouterr()
    s = dump_features(fx, images[:2], root, two, progress=True)
    bar = capsys.readouterr().err.strip().splitlines()[-1]
    assert s.dumped == 2 and '| 2/2 ' in bar, bar


def test_a_manifest_line_cut_short_by_a_kill_does_not_swallow_the_next_record(tmp_path):
    manifest_path(tmp_path, 0).parent.mkdir()
    with open(manifest_path(tmp_path, 0), 'w') as f:
        f.write('{"status": "dumped", "image": "a.png", "file": "a.png.safetensors"}\n'
                '{"status": "dumped", "image": "cut short by a ki')  # a killed writer
    m = Manifest(tmp_path, 0)  # the re-run of that rank appends to the same file
    m.append(record('dumped', 'b.png', 'b.png.safetensors', rank=0, run='x'))
    m.close()
    assert sorted(read_manifests(tmp_path)) == ['a.png.safetensors', 'b.png.safetensors']


def test_bfloat16_storage(tmp_path):
    fx = FeatureExtractor.from_config(CONFIG, levels=LEVELS)
    images, root = make_images(tmp_path / 'in', [(64, 80)])
    with pytest.raises(ToolError, match='bfloat16 cannot be stored in --format npz'):
        dump_features(fx, images, root, tmp_path / 'npz', fmt='npz', dtype='bfloat16')
    assert not (tmp_path / 'npz').exists()
    for fmt in ('safetensors', 'pt'):
        dump_features(fx, images, root, tmp_path / fmt, fmt=fmt, dtype='bfloat16',
                      progress=False)
        levels, meta = load_levels(output_path(images[0], root, tmp_path / fmt, fmt))
        ref = fx(images[0]).levels
        for lv in LEVELS:
            assert levels[lv].dtype == torch.bfloat16
            assert torch.equal(levels[lv], ref[lv].to(torch.bfloat16))
        assert meta['levels']['c2']['dtype'] == 'bfloat16'


def test_full_disk_stops_with_one_line_and_no_partial_file(tmp_path, monkeypatch):
    """ENOSPC in a writer thread: one line naming the folder, no file cut short."""
    fx = FeatureExtractor.from_config(CONFIG, levels=LEVELS)
    images, root = make_images(tmp_path / 'in', [(64, 80)] * 4)
    out = tmp_path / 'out'
    import safetensors.torch
    real, calls = safetensors.torch.save_file, []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            with open(filename, 'wb') as f:
                f.write(b'half')  # what a full disk leaves: a short temporary file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real(tensors, filename, metadata=metadata)
    monkeypatch.setattr(safetensors.torch, 'save_file', save_file)
    with pytest.raises(ToolError) as e:
        dump_features(fx, images, root, out, progress=False, writers=2)
    line = str(e.value)
    assert '\n' not in line and line.startswith(f'output folder {out}: cannot write there '
                                                '(No space left on device')
    left = [p for p in out.rglob('*') if p.is_file() and 'manifests' not in p.parts]
    assert all(p.suffix == '.safetensors' and load_levels(p) for p in left), left
    assert not [p for p in out.rglob('*') if p.name.startswith('.')]
    assert len(left) < 4
    monkeypatch.undo()
    s = dump_features(fx, images, root, out, progress=False)
    assert s.dumped == 4 - len(left) and s.already_there == len(left)


def test_bad_batch_flags_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'dump_features.py'), CONFIG,
                        '--input', str(tmp_path), '--out', str(tmp_path / 'o'),
                        '--batch-size', '0'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith('--batch-size must be 1 or more; got 0')

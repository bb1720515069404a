"""Faults around the dump and convert tools (issue 11): Ctrl-C during a dump, stale
results, unreadable checkpoints, an unwritable output folder. Each ends with one line
and writes nothing it should not.

The tools run as on the command line: the SIGINT test in a subprocess, the others
in-process through their ``__main__`` block (``runpy``), which is the same code path
without paying the import time again.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from resnet_backbone.apis.dump import load_levels
from resnet_backbone.apis.features import FeatureExtractor

from .conftest import CONFIG, ROOT, default_sigint

DUMP = ROOT / 'tools' / 'dump_features.py'
CONVERT = ROOT / 'tools' / 'convert_weights.py'
TORCH_HINT = re.compile(r'weights_only`?\s*(=|set to)\s*`?False')


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """Two detector checkpoints of the shapes config with different weights."""
    folder = tmp_path_factory.mktemp('ckpts')
    paths = []
    for seed in (7, 8):
        fx = FeatureExtractor.from_config(CONFIG, seed=seed)
        paths.append(folder / f'model{seed}.pth')
        torch.save({'state_dict': fx.model.state_dict()}, paths[-1])
    return paths


def make_images(folder: Path, n: int, size: int = 64) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(folder / f'img{i:02d}.png')
        Image.fromarray((rng.random((size, size + 16, 3)) * 255).astype(np.uint8)).save(paths[-1])
    return paths


cli = run_cli  # the shared in-process tool runner (tests/conftest.py)


def one_error_line(err: str, prefix: str) -> str:
    """The tool's message: exactly one line starting with ``prefix``, the last one, and
    no traceback."""
    assert 'Traceback' not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    mine = [ln for ln in lines if ln.startswith(prefix)]
    assert len(mine) == 1 and lines[-1] == mine[0], err[-2000:]
    return mine[0]


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob('*') if p.is_file()} if folder.exists() else set()


def complete(out: Path, image: Path, levels: list[str]) -> bool:
    """The image's record exists, loads, and its overlays are all there."""
    record = out / f'{image.name}.safetensors'
    if not record.is_file():
        return False
    arrays, meta = load_levels(record)
    assert sorted(arrays) == sorted(levels) and meta['overlay'] == 'mean'
    pngs = [out / 'overlays' / f'{image.name}.{lv}.png' for lv in levels]
    sheet = out / 'overlays' / f'{image.name}.sheet.png'
    assert sheet.is_file() and all(p.is_file() for p in pngs), image
    return True


# ---------------------------------------------------------------- Ctrl-C during a dump
def test_sigint_during_dump_then_rerun_completes(checkpoints, tmp_path):
    """Ctrl-C once the first record exists: exit 130 with one line and the resume hint,
    no temporary or partial file, every record has its overlays; the same command run
    again finishes the rest. (Before the fix: a traceback, exit 1, and the record was
    written before the overlays.)"""
    images = make_images(tmp_path / 'images', 10, size=80)
    out = tmp_path / 'out'
    levels = ['c2', 'c3', 'c4', 'c5', 'p3', 'p4', 'p5', 'p6', 'p7']
    cmd = [sys.executable, str(DUMP), CONFIG, str(checkpoints[0]), '--input',
           str(tmp_path / 'images'), '--out', str(out), '--levels', ','.join(levels),
           '--overlay']
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_sigint)
    deadline = time.time() + 300
    while not list(out.glob('*.safetensors')) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, 'the dump ended before it could be interrupted'
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert one_error_line(err, 'dump_features.py:') == (
        'dump_features.py: interrupted (Ctrl-C); run the same command again to continue '
        'where it stopped')
    left = files_under(out)
    assert not [p for p in left if p.name.startswith('.') or p.suffix == '.tmp'], left
    done = [im for im in images if complete(out, im, levels)]
    assert 1 <= len(done) < len(images)

    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'dumped {len(images) - len(done)}, already there {len(done)}' in r.stderr
    assert all(complete(out, im, levels) for im in images)
    assert not [p for p in files_under(out) if p.suffix == '.tmp']


# A Ctrl-C that lands inside the handshake by which a DataLoader worker passes a
# tensor's file descriptor (CI, stop 26: one run in hundreds). The wrapper below makes
# it land there every time: the main process signals itself just before it sends its
# half of the handshake, at its third received tensor.
_MID_HANDSHAKE = """
import multiprocessing.connection as mc, os, runpy, signal, sys
main, real, calls = os.getpid(), mc.deliver_challenge, []
def deliver_challenge(*a, **k):
    if os.getpid() == main:
        calls.append(1)
        if len(calls) == 3:
            os.kill(main, signal.SIGINT)
    return real(*a, **k)
mc.deliver_challenge = deliver_challenge
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def test_sigint_inside_a_worker_handshake_is_one_line(checkpoints, tmp_path):
    """Ctrl-C while a batch is being received from a worker: the one line and exit 130,
    no traceback from the worker. (Before the fix the worker's resource-sharer thread
    printed ``answer_challenge`` ... ``EOFError`` under the line.)"""
    make_images(tmp_path / 'images', 6, size=80)
    cmd = [sys.executable, '-c', _MID_HANDSHAKE, str(DUMP), CONFIG, str(checkpoints[0]),
           '--input', str(tmp_path / 'images'), '--out', str(tmp_path / 'out'),
           '--levels', 'c2,c5']
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       preexec_fn=default_sigint)
    assert r.returncode == 130, r.stderr[-3000:]
    assert one_error_line(r.stderr, 'dump_features.py:').startswith(
        'dump_features.py: interrupted (Ctrl-C)')


# ---------------------------------------------------------------- stale results
def test_stale_results_other_checkpoint_or_levels_stop(checkpoints, tmp_path, capsys,
                                                       monkeypatch):
    """A re-run into the same folder with another checkpoint or other --levels stops
    with one line naming --overwrite and writes nothing. (Before the fix: 'dumped 0,
    already there 3', exit 0, the old maps kept.)"""
    make_images(tmp_path / 'images', 3)
    out = tmp_path / 'out'
    base = ['--input', str(tmp_path / 'images'), '--out', str(out)]
    code, _, err = cli(capsys, monkeypatch, DUMP, CONFIG, str(checkpoints[0]), *base,
                       '--levels', 'c2,c3')
    assert code == 0 and 'dumped 3, already there 0' in err, err[-2000:]
    before = {p: p.read_bytes() for p in files_under(out)}

    code, _, err = cli(capsys, monkeypatch, DUMP, CONFIG, str(checkpoints[1]), *base,
                       '--levels', 'c2,c3')
    line = one_error_line(err, 'dump_features.py: error:')
    assert code == 1 and 'were dumped with other weights' in line and '--overwrite' in line
    assert {p: p.read_bytes() for p in files_under(out)} == before  # nothing written

    code, _, err = cli(capsys, monkeypatch, DUMP, CONFIG, str(checkpoints[0]), *base,
                       '--levels', 'c4')
    line = one_error_line(err, 'dump_features.py: error:')
    assert code == 1 and 'levels c2,c3 (now c4)' in line and '--overwrite' in line
    assert {p: p.read_bytes() for p in files_under(out)} == before

    code, _, err = cli(capsys, monkeypatch, DUMP, CONFIG, str(checkpoints[1]), *base,
                       '--levels', 'c2,c3', '--overwrite')
    assert code == 0 and 'dumped 3, already there 0' in err, err[-2000:]
    code, _, err = cli(capsys, monkeypatch, DUMP, CONFIG, str(checkpoints[1]), *base,
                       '--levels', 'c2,c3')
    assert code == 0 and 'dumped 0, already there 3' in err, err[-2000:]


# ---------------------------------------------------------------- unreadable checkpoints
def bad_checkpoint(folder: Path, kind: str) -> Path:
    path = folder / f'{kind}.pth'
    if kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'truncated':
        good = folder / 'good.pth'
        torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7)}, good)
        data = good.read_bytes()
        good.unlink()
        path.write_bytes(data[:len(data) // 2])
    else:
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def assert_one_line_naming(msg: str, path: Path) -> None:
    assert '\n' not in msg.strip() and str(path) in msg, msg
    assert not TORCH_HINT.search(msg), msg  # never advise weights_only=False


@pytest.mark.parametrize('kind', ['empty', 'truncated', 'random'])
def test_unreadable_checkpoint_convert_weights(kind, tmp_path, capsys, monkeypatch):
    """(Before the fix: a traceback; for random bytes ending in torch's advice to retry
    with weights_only=False.)"""
    path = bad_checkpoint(tmp_path, kind)
    code, _, err = cli(capsys, monkeypatch, CONVERT, str(path), str(tmp_path / 'out.pth'))
    assert code == 1
    assert_one_line_naming(one_error_line(err, 'convert_weights.py: error:'), path)
    assert files_under(tmp_path) == {path}  # nothing written


def test_unreadable_checkpoint_convert_weights_subprocess(tmp_path):
    """The same through a real process: the tool's __main__ block prints the one line."""
    path = bad_checkpoint(tmp_path, 'random')
    r = subprocess.run([sys.executable, str(CONVERT), str(path), str(tmp_path / 'out.pth')],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert_one_line_naming(one_error_line(r.stderr, 'convert_weights.py: error:'), path)
    assert files_under(tmp_path) == {path}


@pytest.mark.parametrize('kind', ['empty', 'truncated', 'random'])
def test_unreadable_checkpoint_init_cfg_pretrained(kind, tmp_path):
    """init_cfg=dict(type='Pretrained', checkpoint=...): one line naming the file.
    (Before the fix: torch's message, naming no file, for random bytes multi-line with
    the weights_only=False advice.)"""
    from resnet_backbone import ResNetV1Custom
    path = bad_checkpoint(tmp_path, kind)
    model = ResNetV1Custom(depth=18, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ValueError) as info:
        model.init_weights()
    assert_one_line_naming(str(info.value), path)
    assert files_under(tmp_path) == {path}


# ---------------------------------------------------------------- unwritable output
@pytest.mark.parametrize('how', ['read-only folder', 'path under a file'])
def test_unwritable_output_folder_is_one_line(how, checkpoints, tmp_path, capsys,
                                              monkeypatch):
    """(Before the fix: a PermissionError / NotADirectoryError traceback.)"""
    make_images(tmp_path / 'images', 1)
    if how == 'read-only folder':
        out = tmp_path / 'ro'
        out.mkdir()
        out.chmod(0o555)
        if os.access(out, os.W_OK):
            out.chmod(0o755)
            pytest.skip('running as root: chmod does not make a folder read-only')
    else:
        (tmp_path / 'afile').write_text('x')
        out = tmp_path / 'afile' / 'out'
    before = files_under(tmp_path)
    try:
        code, _, err = cli(capsys, monkeypatch, DUMP, CONFIG, str(checkpoints[0]),
                           '--input', str(tmp_path / 'images'), '--out', str(out))
    finally:
        if how == 'read-only folder':
            out.chmod(0o755)
    assert code == 1
    line = one_error_line(err, 'dump_features.py: error:')
    assert f'output folder {out}' in line, line
    assert files_under(tmp_path) == before  # nothing written


# ---------------------------------------------------------------- issue 21
R50_OPTIONS = ['--cfg-options', 'model.backbone.depth=50',
               'model.neck.in_channels=[256,512,1024,2048]']


def test_checkpoint_that_does_not_fit_the_config(checkpoints, tmp_path, capsys, monkeypatch):
    """Issue 21, finding 1. (Before the fix: a backbone-only file and an R18 detector
    checkpoint on an R50 config both printed 'weights: checkpoint', and the features
    came from random weights.)"""
    make_images(tmp_path / 'images', 1)
    image = tmp_path / 'images' / 'img00.png'
    # a backbone-only file, as tools/convert_weights.py writes it from the detector's
    backbone_file = tmp_path / 'backbone_only.pth'
    code, _, err = cli(capsys, monkeypatch, CONVERT, str(checkpoints[0]), str(backbone_file))
    assert code == 0, err[-2000:]
    code, _, err = cli(capsys, monkeypatch, DUMP, CONFIG, str(backbone_file), '--input',
                       str(image), '--out', str(tmp_path / 'bb'), '--levels', 'c1,c5,p3')
    assert code == 0, err[-2000:]
    assert 'weights: backbone-checkpoint (backbone-only checkpoint: 100.00% of the ' \
           'backbone loaded from it' in err, err[-2000:]
    levels, meta = load_levels(tmp_path / 'bb' / 'img00.png.safetensors')
    w = meta['weights']
    assert w['loaded'] == 'backbone' and w['coverage']['backbone'] == 100.0
    assert 0 < w['coverage']['detector'] < 100 and w['seed'] == 0
    assert meta['fingerprint']['weights']['seed'] == 0
    full = FeatureExtractor.from_config(CONFIG, str(checkpoints[0]), levels=['c1', 'c5'])
    ref = full(image)
    for name in ('c1', 'c5'):  # the backbone's maps are the checkpoint's
        assert torch.equal(levels[name], ref.levels[name]), name

    # an R18 detector checkpoint on an R50 config: one line, nothing written
    out = tmp_path / 'r50'
    code, _, err = cli(capsys, monkeypatch, DUMP, CONFIG, str(checkpoints[0]), '--input',
                       str(image), '--out', str(out), *R50_OPTIONS)
    assert code == 1
    line = one_error_line(err, 'dump_features.py: error:')
    assert f'checkpoint {checkpoints[0]} does not fit this config\'s detector' in line, line
    assert re.search(r'\d+ missing, 0 unexpected, \d+ shape-mismatched', line), line
    assert '--no-strict' in line and not out.exists()
    # --no-strict: the explicit opt-out; the record says what did not load
    code, _, err = cli(capsys, monkeypatch, DUMP, CONFIG, str(checkpoints[0]), '--input',
                       str(image), '--out', str(out), '--no-strict', *R50_OPTIONS)
    assert code == 0, err[-2000:]
    w = load_levels(out / 'img00.png.safetensors')[1]['weights']
    assert w['strict'] is False and w['missing'] > 0 and w['coverage']['detector'] < 100


def test_every_image_skipped_exits_1_and_missing_is_no_such_file(checkpoints, tmp_path,
                                                                 capsys, monkeypatch):
    """Issue 21, finding 11. (Before the fix: exit 0 with nothing dumped, and a path in a
    .txt list that does not exist was reported as 'unreadable'.)"""
    make_images(tmp_path / 'images', 1)
    (tmp_path / 'images' / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n not an image')
    listing = tmp_path / 'list.txt'
    listing.write_text('images/gone.png\nimages/corrupt.png\n')
    code, _, err = cli(capsys, monkeypatch, DUMP, CONFIG, str(checkpoints[0]), '--input',
                       str(listing), '--out', str(tmp_path / 'out'))
    assert code == 1
    warnings = [ln for ln in err.splitlines() if 'WARNING: skipped' in ln]
    assert any(ln.endswith('gone.png: no such file') for ln in warnings), warnings
    line = one_error_line(err, 'dump_features.py: error:')
    assert line.startswith('dump_features.py: error: none of the 2 images could be dumped '
                           '(skipped 2 (1 unreadable, 1 no such file)'), line
    listing.write_text('images/img00.png\nimages/gone.png\n')
    code, _, err = cli(capsys, monkeypatch, DUMP, CONFIG, str(checkpoints[0]), '--input',
                       str(listing), '--out', str(tmp_path / 'out'))
    assert code == 0 and 'dumped 1, already there 0, skipped 1 no such file' in err, err


# ---------------------------------------------------------------- a broken dependency
@pytest.mark.parametrize('debug', [False, True])
def test_broken_mmcv_import_is_one_error_not_two_tracebacks(tmp_path, debug):
    """Issue 11 review: with a broken mmcv, ``import resnet_backbone`` printed the cause's
    traceback, then 'The above exception was the direct cause', then the wrapping one."""
    (tmp_path / 'mmcv').mkdir()
    (tmp_path / 'mmcv' / '__init__.py').write_text("raise ImportError('mmcv is broken')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    env.pop('RESNET_BACKBONE_DEBUG', None)
    if debug:
        env['RESNET_BACKBONE_DEBUG'] = '1'
    r = subprocess.run([sys.executable, '-c', 'import resnet_backbone'], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('ImportError: resnet_backbone cannot be imported: mmcv is broken '
                           '(ImportError: mmcv is broken)') and 'tools/setup.sh' in last, r.stderr
    cause_shown = 'direct cause' in r.stderr
    assert cause_shown == debug, r.stderr
    assert r.stderr.count('Traceback') == (2 if debug else 1), r.stderr

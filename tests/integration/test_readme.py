"""The README's commands, verbatim and in the README's order (issue 21).

Every line of every ```bash block in README.md runs through ``bash`` exactly as written,
with the repository's tracked files copied to a fresh folder (what a fresh clone holds;
``.venv`` is linked in, as ``make`` would have built it there). The files a user brings
(their own data set, a timm checkpoint) are made just before the first command that
reads them. Two commands are not run, each for a stated reason (:data:`NOT_RUN`).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch

from .conftest import ROOT
from .test_distributed import _free_port
from .test_own_data import make_own_data

pytestmark = pytest.mark.integration

#: commands of the README not run here, and why
NOT_RUN = {
    'make test': "CI's own command: this test runs inside it",
    'make demo': 'the 9-minute main job; its tools/demo.py runs here with --iters 20',
}


def _bare(command: str) -> str:
    """The command without its trailing ``# comment``."""
    return command.split(' #')[0].strip()


def readme_commands(text: str) -> list[str]:
    """Each command of the README's ```bash blocks, in order, continuation lines joined."""
    commands = []
    for block in re.findall(r'^```bash\n(.*?)^```', text, flags=re.S | re.M):
        pending = ''
        for line in block.splitlines():
            if not line.strip() or (line.lstrip().startswith('#') and not pending):
                continue
            if line.rstrip().endswith('\\'):
                pending += line.rstrip()[:-1].rstrip() + ' '
                continue
            commands.append(pending + line.strip())
            pending = ''
    return commands


def _prepare(command: str, clone) -> None:
    """What the user brings, made just before the first command that reads it."""
    if '--img-dir pics' in command and not (clone / 'pics').exists():
        make_own_data(clone)  # images in pics/, labels/train.json and labels/val.json
    if 'resnet50d_timm.pth' in command and not (clone / 'resnet50d_timm.pth').exists():
        import timm  # the README's example checkpoint is a timm resnet50d
        torch.manual_seed(0)
        torch.save(timm.create_model('resnet50d', pretrained=False).state_dict(),
                   clone / 'resnet50d_timm.pth')


def test_readme_commands_parse():
    """The walk below sees the README's commands (a parser that found none would pass
    vacuously): the training tour, the own-data flags, the converter and export."""
    commands = readme_commands((ROOT / 'README.md').read_text())
    assert set(NOT_RUN) <= {_bare(c) for c in commands}
    for needle in ('tools/train.py', '--resume', 'tools/test.py', 'dist_train.sh',
                   '--img-dir pics', 'convert_weights.py', 'export.py', 'doctor',
                   'dist_dump.sh', 'compare_dumps.py', '--rois gt', '--rebuild-index'):
        assert any(needle in c for c in commands), needle
    assert all('\\' not in c and '\n' not in c for c in commands)


@pytest.mark.timeout(2400)  # about 5 min on a quiet 2-core machine; 3x that under load
def test_readme_commands_run_verbatim(tmp_path):
    clone = tmp_path / 'clone'
    files = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split('\0')
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, clone / name)
    (clone / '.venv').symlink_to(ROOT / '.venv')
    env = {k: v for k, v in os.environ.items() if not k.startswith(('PYTEST', 'RESNET_BACKBONE'))}
    env.setdefault('PORT', str(_free_port()))  # dist_train.sh's and dist_dump.sh's rendezvous

    commands = readme_commands((ROOT / 'README.md').read_text())
    commands = [c for c in commands if _bare(c) not in NOT_RUN]
    commands.append(f'{sys.executable} tools/demo.py --iters 20 --work-dir work_dirs/demo')
    log = []
    for command in commands:
        _prepare(command, clone)
        t0 = time.time()
        r = subprocess.run(['bash', '-c', command], cwd=clone, env=env, capture_output=True,
                           text=True, timeout=900)
        log.append(f'{time.time() - t0:6.1f} s  rc={r.returncode}  {command}')
        out = r.stdout + r.stderr
        assert r.returncode == 0, '\n'.join(log) + f'\n--- output ---\n{out[-4000:]}'
        assert 'Traceback' not in out, f'{command}\n{out[-4000:]}'
    print('\n'.join(log))
    # what the commands promise to leave behind
    for path in ('work_dirs/r18/iter_60.pth', 'work_dirs/r18/preds.pkl',
                 'work_dirs/ddp/iter_20.pth', 'work_dirs/mine/iter_40.pth',
                 'checkpoints/r50d.pth', 'work_dirs/r50_fpn.onnx', 'work_dirs/retina.onnx',
                 'work_dirs/demo/predictions.png'):
        assert (clone / path).is_file(), path

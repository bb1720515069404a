"""``make demo`` (tools/demo.py) is reproducible and resumes (issue 29, findings 7-8).

Before: the demo was unseeded (mAP 0.477 to 0.556 between fresh clones), and a re-run
after a stop at iteration 540 started again from 0.
"""
from __future__ import annotations

import re

import pytest
import torch

from .conftest import run_tool


def _demo(tmp_path, work: str, *args: str):
    r = run_tool('demo.py', '--data-root', str(tmp_path / 'shapes'), '--work-dir',
                 str(tmp_path / work), *args, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    return log


def _map(log: str) -> str:
    return re.search(r'\[demo\] bbox mAP +(\S+)', log).group(1)


@pytest.mark.timeout(1800)
def test_demo_same_seed_same_weights_and_a_rerun_resumes(tmp_path):
    a = _demo(tmp_path, 'a', '--iters', '2')
    b = _demo(tmp_path, 'b', '--iters', '2')
    assert '(seed 0)' in a and '(seed 0)' in b
    wa = torch.load(tmp_path / 'a' / 'iter_2.pth', weights_only=True)['state_dict']
    wb = torch.load(tmp_path / 'b' / 'iter_2.pth', weights_only=True)['state_dict']
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), 'the same seed trained other weights'
    assert _map(a) == _map(b)
    assert 'resuming' not in a

    # a longer run in the same work dir continues from iteration 2, and says so
    log = _demo(tmp_path, 'a', '--iters', '3')
    assert f"[demo] resuming from {tmp_path / 'a' / 'iter_2.pth'} (iteration 2 of 3; " \
           '--fresh starts over)' in log
    assert 'resumed epoch: 0, iter: 2' in log
    saved = torch.load(tmp_path / 'a' / 'iter_3.pth', weights_only=True)
    assert saved['meta']['iter'] == 3

    # the finished run: evaluated, not trained again
    log = _demo(tmp_path, 'a', '--iters', '3')
    assert '[demo] iter_3.pth is already trained; evaluating it' in log
    assert 'resumed' not in log and '[demo] bbox mAP' in log


def test_demo_refuses_another_runs_checkpoints(tmp_path):
    """A re-run with another seed (or config) in the same work dir evaluated the other
    run's weights under its own settings; now one line (the check runs before any
    training, on the work dir's stamp)."""
    from resnet_backbone.tools.demo import RUN_STAMP
    work = tmp_path / 'a'
    work.mkdir()
    torch.save({'meta': {'iter': 2}}, work / 'iter_2.pth')
    (work / RUN_STAMP).write_text('{"seed": 0}')
    r = run_tool('demo.py', '--data-root', str(tmp_path / 'shapes'), '--work-dir', str(work),
                 '--iters', '2', '--seed', '1')
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f'demo.py: error: {work} holds checkpoints of another demo '
                               'run (its config, seed, data_root differ')
    assert "give --fresh to start over there, or another --work-dir" in lines[0]

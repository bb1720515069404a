"""Fault injection for tools/train.py and tools/test.py: kill -9 at random moments (also
inside the checkpoint write window), Ctrl-C, damaged checkpoint files, mistyped options.

What is guaranteed, and checked here:
- a kill loses at most one checkpoint interval, for any ``max_keep_ckpts``: the old
  checkpoint is removed only after the new one is complete (``SafeCheckpointHook``), and
  ``--resume`` continues from it; the temporary files a kill leaves are removed by the
  next start; the final checkpoint loads and evaluates;
- Ctrl-C exits 130 with one line that says how to resume, and leaves no partial file;
- a truncated, empty or random-bytes checkpoint given to ``--resume``, ``load_from`` or
  tools/test.py ends in one line that names the file, exit 1, and nothing is written;
- a misspelt backbone argument, or ``--launcher`` outside a launcher, is one line.

The write window is held open by the test's fault injection (``PAUSE_ENV`` through the
``sitecustomize`` in ``fault_injection/``, on the run's ``PYTHONPATH``): each checkpoint
write sleeps that long after its temporary file is complete and before it is renamed.
The test polls for the temporary file and kills the run while it exists. Random moments
come from ``random.Random(SEED)``; set ``FAULT_SEED`` to try others (the seed is in every
failure message).
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnet_backbone.io.checkpoint_io import find_resumable_checkpoint

from .conftest import CONFIG, ROOT, default_sigint, run_tool, tiny_options
from .fault_injection.sitecustomize import PAUSE_ENV, fault_env

SEED = int(os.environ.get('FAULT_SEED', '11'))
MAX_ITERS, INTERVAL = 8, 2
PAUSE_S = '1.5'
# the kill plan of each max_keep_ckpts (5 kills in all); see the test's docstring
PLANS = {1: ('window', 'random', 'window'), 2: ('random', 'window')}


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ('RESNET_BACKBONE_DEBUG', PAUSE_ENV)}
    env['PYTHONUNBUFFERED'] = '1'
    env.update(extra)
    return env


def _paused_env() -> dict:
    """:func:`_env` with every checkpoint write held open ``PAUSE_S`` in its window."""
    return fault_env(_env(), **{PAUSE_ENV: PAUSE_S})


def _train_cmd(work: Path, data: Path, *extra: str, max_keep: int = 2,
               iters: int = MAX_ITERS, interval: int = INTERVAL) -> list[str]:
    opts = tiny_options(iters, interval)
    opts += [f'default_hooks.checkpoint.max_keep_ckpts={max_keep}',
             'train_dataloader.batch_size=1']
    return [sys.executable, str(ROOT / 'tools/train.py'), CONFIG, '--work-dir', str(work),
            '--data-root', str(data), *extra, *opts]


def _iters_logged(text: str, iters: int = MAX_ITERS) -> list[int]:
    return [int(m) for m in re.findall(rf'Iter\(train\) \[\s*(\d+)/{iters}\]', text)]


def _temps(work: Path) -> set[str]:
    return {p.name for p in work.glob('.*.tmp')} if work.is_dir() else set()


def _run_until(cmd, log: Path, trigger, sig=signal.SIGKILL, env=None, timeout=240):
    """Start ``cmd``; send ``sig`` once ``trigger(log_text)`` is true. Returns
    (returncode, log text, whether the signal was sent)."""
    with open(log, 'w') as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=env or _env(), preexec_fn=default_sigint)
        sent = False
        deadline = time.time() + timeout
        try:
            while proc.poll() is None and time.time() < deadline:
                if trigger(log.read_text()):
                    os.kill(proc.pid, sig)
                    sent = True
                    break
                time.sleep(0.02)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, log.read_text(), sent


def _in_write_window(work: Path, step: int):
    """Trigger: the temporary file of ``iter_{step}.pth`` exists (the write window)."""
    return lambda _text: any(work.glob(f'.iter_{step}.pth.*.tmp'))


def _after_iter(step: int, delay: float):
    """Trigger: ``delay`` seconds after iteration ``step`` was logged."""
    seen = []

    def trigger(text: str) -> bool:
        if not seen and step in _iters_logged(text):
            seen.append(time.time())
        return bool(seen) and time.time() - seen[0] >= delay
    return trigger


def _resumed_at(text: str) -> int:
    m = re.search(r'resumed epoch: \d+, iter: (\d+)', text)
    return int(m.group(1)) if m else 0


@pytest.mark.timeout(600)
@pytest.mark.parametrize('max_keep', sorted(PLANS))
def test_kill9_at_random_moments_loses_at_most_one_interval(tiny_shapes, tmp_path, max_keep):
    """kill -9 (``PLANS``: inside the write window of a random checkpoint, or a random
    moment of a random iteration), each followed by --resume; the last --resume finishes
    and its checkpoint evaluates. Before SafeCheckpointHook, a kill inside the write
    window with max_keep_ckpts=1 left no complete checkpoint (resume restarted at 0), and
    no run removed the temporary files the kills left."""
    rng = random.Random(SEED * 10 + max_keep)
    work = tmp_path / 'work'
    resume_point, reached, stale = 0, 0, set()
    for i, kind in enumerate(PLANS[max_keep]):
        last = i == len(PLANS[max_keep]) - 1
        # Bounds that leave the next kill something to hit: a random kill lands before
        # the second-to-last checkpoint can be passed; a window kill that is not the last
        # one targets a checkpoint before the final one.
        if kind == 'window':  # one with a predecessor to lose (the first run's first has none)
            first = max(resume_point + INTERVAL, 2 * INTERVAL)
            step = rng.choice(range(first, MAX_ITERS + 1 - (0 if last else INTERVAL),
                                    INTERVAL))
            what = f'inside the write window of iter_{step}.pth'
            trigger, env = _in_write_window(work, step), _paused_env()
        else:
            step = rng.randint(resume_point + 1, MAX_ITERS - INTERVAL - 1)
            delay = rng.uniform(0, 0.5)
            what = f'{delay:.2f} s after iteration {step}'
            trigger, env = _after_iter(step, delay), None
        extra = ('--resume',) if i else ()
        rc, text, sent = _run_until(_train_cmd(work, tiny_shapes, *extra, max_keep=max_keep),
                                    tmp_path / f'run{i}.log', trigger, env=env)
        ctx = f'seed {SEED}, max_keep_ckpts={max_keep}, kill {i + 1} {what}'
        if i:
            _check_resumed(text, reached, stale, work, ctx)
        assert sent and rc == -signal.SIGKILL, f'{ctx}: not killed (rc {rc}):\n{text[-2000:]}'
        reached = max(_iters_logged(text), default=resume_point)
        stale = _temps(work)
        found = find_resumable_checkpoint(work)
        resume_point = torch.load(found, weights_only=True)['meta']['iter'] if found else 0
        assert reached - resume_point <= INTERVAL, (
            f'{ctx}: reached iteration {reached}, but the newest complete checkpoint is '
            f'{found} (iteration {resume_point}): more than one interval would be lost')
    # the last --resume runs to the end
    r = subprocess.run(_train_cmd(work, tiny_shapes, '--resume', max_keep=max_keep),
                       capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _check_resumed(r.stdout + r.stderr, reached, stale, work, f'seed {SEED}: final resume')
    assert not _temps(work), _temps(work)
    kept = sorted(work.glob('iter_*.pth'))
    assert len(kept) <= max_keep, f'more than max_keep_ckpts={max_keep} kept: {kept}'
    final = work / f'iter_{MAX_ITERS}.pth'
    assert torch.load(final, weights_only=True)['meta']['iter'] == MAX_ITERS
    assert (work / 'last_checkpoint').read_text().strip() == str(final)
    r = run_tool('test.py', CONFIG, str(final), '--work-dir', str(tmp_path / 'test'),
                 '--data-root', str(tiny_shapes), '--cfg-options', 'test_dataloader.num_workers=0',
                 'test_dataloader.persistent_workers=False', 'model.test_cfg.score_thr=0.0',
                 env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'coco/bbox_mAP:' in r.stdout + r.stderr


def _check_resumed(text: str, reached: int, stale: set, work: Path, ctx: str) -> None:
    resumed = _resumed_at(text)
    assert reached - resumed <= INTERVAL, (
        f'{ctx}: the killed run had reached iteration {reached}, but --resume restarted '
        f'at {resumed}: more than one checkpoint interval ({INTERVAL}) lost')
    assert not (stale & _temps(work)), (
        f'{ctx}: the temporary files {sorted(stale & _temps(work))} of the killed run were '
        'not removed when the next run started')


@pytest.mark.timeout(600)
def test_ctrl_c_during_training_is_one_line_and_resumable(tiny_shapes, tmp_path):
    """SIGINT inside the write window of iter_4: exit 130, one line saying how to resume,
    no partial file; --resume continues from iter_2. Before run_tool: a traceback, and
    the exit status of a process killed by SIGINT."""
    work = tmp_path / 'work'
    cmd = _train_cmd(work, tiny_shapes, iters=4, interval=2)
    rc, text, sent = _run_until(cmd, tmp_path / 'run.log', _in_write_window(work, 4),
                                sig=signal.SIGINT, env=_paused_env())
    assert sent and rc == 130, f'rc {rc}:\n{text[-3000:]}'
    assert 'Traceback' not in text, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last == ('train.py: interrupted (Ctrl-C); re-run the same command with --resume '
                    'to continue from the last complete checkpoint'), last
    assert not _temps(work), f'partial files left: {_temps(work)}'
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_2.pth']
    assert find_resumable_checkpoint(work) == work / 'iter_2.pth'
    r = subprocess.run(cmd + ['--resume'], capture_output=True, text=True, cwd=ROOT,
                       env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _resumed_at(r.stdout + r.stderr) == 2
    assert torch.load(work / 'iter_4.pth', weights_only=True)['meta']['iter'] == 4


def _damaged(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    good = folder / 'good.pth'
    torch.save({'state_dict': {'w': torch.ones(1000)}, 'meta': {'iter': 3}}, good)
    data = good.read_bytes()
    files = {'truncated': (data[: len(data) * 2 // 3], 'is truncated'),
             'empty': (b'', 'is empty'),
             'random': (random.Random(SEED).randbytes(5000), 'is not a PyTorch checkpoint')}
    out = {}
    for kind, (content, _problem) in files.items():
        path = folder / f'{kind}.pth'
        path.write_bytes(content)
        out[kind] = path
    good.unlink()
    return out


_PROBLEM = {'truncated': 'is truncated', 'empty': 'is empty',
            'random': 'is not a PyTorch checkpoint'}


# Runs each tool's ``__main__`` block (runpy) in one interpreter, its stdout and stderr
# caught at the file-descriptor level, and records (exit status, output). One process
# for all cases saves ~10 s of imports per case; killed runs above are real processes.
_DRIVER = r"""
import json, os, runpy, sys, tempfile
cases, out = json.loads(sys.argv[1]), sys.argv[2]
results = []
for argv in cases:
    env = argv.pop(0)
    saved_env = dict(os.environ)
    os.environ.update(env)
    sys.argv = argv
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile('w+') as cap:
        os.dup2(cap.fileno(), 1); os.dup2(cap.fileno(), 2)
        try:
            runpy.run_path(argv[0], run_name='__main__')
            code = 0
        except SystemExit as e:
            code = e.code
            if isinstance(code, str):  # what the interpreter does for sys.exit('text')
                print(code, file=sys.stderr); code = 1
            code = 0 if code is None else code
        except BaseException as e:  # noqa: BLE001 - an escaped exception is a failure too
            import traceback; traceback.print_exc(); code = f'raised {type(e).__name__}'
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        cap.seek(0)
        results.append([code, cap.read()])
    os.environ.clear(); os.environ.update(saved_env)
with open(out, 'w') as f:
    json.dump(results, f)
"""


def _run_cases(cases: dict, tmp_path: Path) -> dict:
    """``{key: (env overrides, argv)}`` -> ``{key: (exit status, output lines)}``."""
    keys = list(cases)
    payload = json.dumps([[cases[k][0], *cases[k][1]] for k in keys])
    out = tmp_path / 'driver.json'
    r = subprocess.run([sys.executable, '-c', _DRIVER, payload, str(out)], capture_output=True,
                       text=True, cwd=ROOT, env=_env(), timeout=300)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
        f'driver rc {r.returncode}; output not caught per case:\n{r.stdout}\n{r.stderr}')
    results = json.loads(out.read_text())
    return {k: (code, text.strip().splitlines()) for k, (code, text) in zip(keys, results)}


def test_damaged_checkpoint_is_one_line_and_nothing_is_written(tiny_shapes, tmp_path):
    """A truncated, an empty and a random-bytes .pth, each given to train.py --resume,
    to train.py via load_from and to test.py: one line naming the file and the problem,
    exit 1, no file written. Before check_checkpoint_file: a 30-line traceback that does
    not name the file, and the Runner had written its work dir."""
    files = _damaged(tmp_path / 'ckpts')
    before = {p: p.read_bytes() for p in files.values()}
    train, test = str(ROOT / 'tools/train.py'), str(ROOT / 'tools/test.py')
    cases = {}
    for kind, path in files.items():
        for how in ('--resume', 'load_from', 'test.py'):
            work = tmp_path / f'work-{kind}-{how.strip("-").replace(".", "_")}'
            data = ['--data-root', str(tiny_shapes)]
            if how == '--resume':
                argv = [train, CONFIG, '--work-dir', str(work), *data, '--resume', str(path)]
            elif how == 'load_from':
                argv = [train, CONFIG, '--work-dir', str(work), *data,
                        '--cfg-options', f'load_from={path}']
            else:
                argv = [test, CONFIG, str(path), '--work-dir', str(work), *data]
            cases[(kind, how, work)] = ({}, argv)
    for (kind, how, work), (code, lines) in _run_cases(cases, tmp_path).items():
        ctx = f'{how} with a {kind} checkpoint'
        assert code == 1 and len(lines) == 1, (
            f'{ctx}: exit {code}, {len(lines)} lines:\n' + '\n'.join(lines[-40:]))
        what = {'--resume': '--resume', 'load_from': 'load_from', 'test.py': 'checkpoint'}[how]
        assert f'{what} {files[kind]}: {_PROBLEM[kind]}' in lines[0], f'{ctx}: {lines[0]}'
        assert not work.exists(), f'{ctx}: {work} was written'
    assert {p: p.read_bytes() for p in files.values()} == before
    assert sorted(p.name for p in (tmp_path / 'ckpts').iterdir()) == sorted(
        p.name for p in files.values())


def test_option_mistakes_are_one_line(tmp_path):
    """A misspelt backbone key (before: ~400 lines of config, then a 41-line traceback)
    and --launcher outside a launcher (before: KeyError 'SLURM_PROCID' / a ValueError
    traceback about RANK) each end in one line that says what to do; --debug still
    shows the traceback."""
    train = str(ROOT / 'tools/train.py')
    work = tmp_path / 'work'
    base = [train, CONFIG, '--work-dir', str(work)]
    typo = ['--cfg-options', 'model.backbone.dept=50']
    cases = {'typo': ({}, base + typo),
             'slurm': ({}, base + ['--launcher', 'slurm']),
             'pytorch': ({}, base + ['--launcher', 'pytorch']),
             'debug': ({}, base + ['--debug'] + typo),
             'debug-env': ({'RESNET_BACKBONE_DEBUG': '1'}, base + typo)}
    for var in ('SLURM_PROCID', 'SLURM_NTASKS', 'RANK', 'WORLD_SIZE', 'MASTER_ADDR',
                'MASTER_PORT'):
        assert var not in os.environ, f'run this test outside a launcher ({var} is set)'
    expect = {'typo': "model.backbone.dept: unknown key for ResNetV1Custom; "
                      "did you mean 'depth'?",
              'slurm': '--launcher slurm: SLURM_PROCID, SLURM_NTASKS not set',
              'pytorch': '--launcher pytorch: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT '
                         'not set'}
    results = _run_cases(cases, tmp_path)
    for key, text in expect.items():
        code, lines = results[key]
        assert code == 1 and len(lines) == 1, (
            f'{key}: exit {code}, {len(lines)} lines:\n' + '\n'.join(lines[-20:]))
        assert text in lines[0], lines[0]
    for key in ('debug', 'debug-env'):
        code, lines = results[key]
        assert code == 'raised ToolError' and 'Traceback (most recent call last):' in lines, (
            key, code, lines[-5:])
    assert not work.exists()

"""benchmarks/benchmark.py: the harness runs, and its deterministic figures are right.

No timing is asserted (timings on a shared 2-core machine are noise); what is checked
is exact: same weights, same FLOPs, and the saved-for-backward bytes of the reference
mode equal mmdet's (same ops, same saved tensors).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_backbone.errors import ToolError
from resnet_backbone.models.compiled import cpu_compiler
from resnet_backbone.tools.runner import run_tool

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))  # run from the checkout, as its scripts are
import bench_models  # noqa: E402
import bench_timing  # noqa: E402
import benchmark as tool  # noqa: E402  (benchmarks/benchmark.py, the command line)
from bench_models import (  # noqa: E402
    DEFAULT_MODELS,
    OVERHEAD_MODELS,
    build_models,
    parse_model,
    split_by_depth,
)
from bench_report import overhead_table, table  # noqa: E402
from bench_timing import count_ops, run, run_overhead, saved_bytes_of  # noqa: E402

#: torch.compile builds CPU kernels with a C++ compiler; the default install needs none
NEEDS_CXX = pytest.mark.skipif(cpu_compiler() is None, reason='no C++ compiler on PATH: '
                               'torch.compile cannot build CPU kernels')


def test_models_share_weights():
    import torch
    models = build_models(18)
    x = torch.rand(1, 3, 64, 64)
    outs = {}
    for name, m in models.items():
        m.eval()
        with torch.no_grad():
            outs[name] = m(x)
    for name in ('ours-ref', 'torchvision'):
        for a, b in zip(outs[name], outs['mmdet']):
            assert torch.equal(a, b), name
    for a, b in zip(outs['ours-fast'], outs['mmdet']):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.fixture
def small_limit(monkeypatch):
    """Small limit convolutions: the real ones take tens of seconds where bf16 is emulated."""
    monkeypatch.setattr(bench_timing, 'LIMIT_CONVS', ((16, 16, 3, 16),))


def test_width_makes_a_rectangular_input(small_limit, monkeypatch):
    """--size 800 --width 1344 style inputs: the models see H x W, and the FLOPs are of it."""
    seen = []
    square = run(depth=18, batch=1, size=64, repeats=1, warmup=0, modes=('eval',),
                 include=('ours-fast',), log=lambda s: None)
    real = bench_timing.build_models

    def spy(*args, **kwargs):
        models = real(*args, **kwargs)
        for m in models.values():
            m.register_forward_pre_hook(lambda mod, inp: seen.append(tuple(inp[0].shape)))
        return models
    monkeypatch.setattr(bench_timing, 'build_models', spy)
    wide = run(depth=18, batch=1, size=64, width=96, repeats=1, warmup=0, modes=('eval',),
               include=('ours-fast',), log=lambda s: None)
    assert seen and set(seen) == {(1, 3, 64, 96)}
    assert wide['settings']['width'] == 96 and square['settings']['width'] == 64
    assert wide['gflop']['eval'] == pytest.approx(square['gflop']['eval'] * 1.5, rel=0.05)


def test_report_figures(tmp_path, small_limit):
    report = run(depth=18, batch=1, size=64, repeats=2, warmup=0, log=lambda s: None)
    rows = {(r['name'], r['mode']): r for r in report['results']}
    assert set(rows) == {(n, m) for n in ('mmdet', 'ours-fast', 'ours-ref', 'torchvision')
                         for m in ('eval', 'train')}
    assert rows['mmdet', 'eval']['time_vs_base'] == 1.0
    assert rows['ours-fast', 'eval']['baseline'] == 'mmdet'
    assert rows['ours-ref', 'train']['saved_bytes'] == rows['mmdet', 'train']['saved_bytes']
    gflop = {r['gflop'] for r in report['results'] if r['mode'] == 'eval'}
    assert len(gflop) == 1 and gflop.pop() > 0
    limit = report['conv_limit_gflops_per_s']
    assert limit['fp32'] > 0 and limit['bf16'] > 0 and report['matmul_gflops_per_s'] > 0
    for r in report['results']:  # every model as a fraction of the same run's limit
        assert r['fraction_of_limit'] == pytest.approx(r['gflop'] / r['median_s'] / limit['fp32'])
        assert r['first_s'] > 0
    assert all(r['repeats'] == 2 and r['mean_s'] > 0 for r in report['results'])


def test_op_counter_counts_every_dispatched_op():
    import torch
    counter = count_ops(lambda: torch.ones(3) * 2 + 1)
    assert counter.by_op == {'aten.ones.default': 1, 'aten.mul.Tensor': 1,
                             'aten.add.Tensor': 1}
    assert counter.ops == 3
    w = torch.ones(3, requires_grad=True)
    y, seed = (w * w).sum(), torch.ones(())
    backward = count_ops(lambda: y.backward(seed))  # autograd carries the mode along
    assert backward.by_op.get('aten.mul.Tensor', 0) >= 2  # MulBackward: grad * w, twice


def test_overhead_report():
    """The overhead mode (issue 31): ops per step are exact and deterministic, so they are
    asserted; times only exist. Reference mode is op for op mmdet's, in eval and train; a
    checkpointed model dispatches the same ops in eval, and more in train (the forward
    again in backward); every train step dispatches more than its eval step."""
    import torch
    threads = torch.get_num_threads()
    names = ('mmdet', 'ours-ref', 'ours-fast', 'mmdet-cp')
    report = run_overhead(depth=18, size=32, repeats=1, warmup=0, include=names,
                          log=lambda s: None)
    assert torch.get_num_threads() == threads and report['settings']['threads'] == 1
    assert report['kind'] == 'overhead' and report['settings']['size'] == 32
    rows = {(r['name'], r['mode']): r for r in report['results']}
    assert set(rows) == {(n, m) for n in names for m in ('eval', 'train')}
    ops = {k: r['ops'] for k, r in rows.items()}
    for mode in ('eval', 'train'):
        assert ops['ours-ref', mode] == ops['mmdet', mode] > 0
        assert rows['mmdet', mode]['ops_vs_base'] == rows['mmdet', mode]['time_vs_base'] == 1.0
        assert rows['ours-fast', mode]['ops_vs_base'] == ops['ours-fast', mode] / ops[
            'mmdet', mode]
    assert ops['mmdet-cp', 'eval'] == ops['mmdet', 'eval']
    assert ops['mmdet-cp', 'train'] > ops['mmdet', 'train']
    for n in names:
        assert ops[n, 'train'] > ops[n, 'eval']
    for r in report['results']:
        assert sum(r['ops_by_name'].values()) == r['ops']
        assert r['repeats'] == 1 and r['median_ms'] > 0 and r['baseline'] == 'mmdet'
        assert r['us_per_op'] == pytest.approx(r['median_ms'] * 1e3 / r['ops'])
    lines = overhead_table(report).splitlines()
    assert lines[0].split()[:4] == ['model', 'mode', 'ops/step', 'ops']
    row = lines[2 + [(r['name'], r['mode']) for r in report['results']].index(
        ('ours-ref', 'train'))].split()
    assert row[:4] == ['ours-ref', 'train', str(ops['mmdet', 'train']), '1.00']


def test_overhead_defaults():
    a = tool.parse_args(['--overhead'])
    assert (a.size, a.repeats, a.threads, a.depth, a.batch) == (64, 20, 1, 50, 2)
    assert a.models == OVERHEAD_MODELS and a.frozen_stages == 1
    a = tool.parse_args([])
    assert (a.size, a.repeats, a.threads, a.models) == (512, 7, None, DEFAULT_MODELS)
    a = tool.parse_args(['--overhead', '--size', '48', '--repeats', '3', '--threads', '2'])
    assert (a.size, a.repeats, a.threads) == (48, 3, 2)


@pytest.mark.integration
def test_tool_overhead_mode_writes_its_table_and_json(tmp_path, capsys):
    tool.main(['--overhead', '--depth', '18', '--size', '32', '--repeats', '1', '--warmup',
               '0', '--modes', 'eval', '--models', 'mmdet,ours-ref',
               '--json', str(tmp_path / 'o.json')])
    out = capsys.readouterr().out
    assert 'ops/step' in out and 'ratio to mmdet (eval)' in out
    report = json.loads((tmp_path / 'o.json').read_text())
    assert report['kind'] == 'overhead' and report['settings']['threads'] == 1
    assert [r['name'] for r in report['results']] == ['mmdet', 'ours-ref']


def test_saved_bytes_counts_each_storage_once():
    import torch
    w = torch.ones(1000, requires_grad=True)
    assert saved_bytes_of(lambda: (w * w).sum()) == 4000  # saved twice, one storage
    assert saved_bytes_of(lambda: (w * w.clone()).sum()) == 8000


@pytest.mark.integration
def test_tool_writes_json_and_plot(tmp_path, small_limit, capsys):
    tool.main(['--depth', '18', '--size', '64', '--repeats', '1', '--warmup', '0', '--modes',
               'eval', '--models', 'mmdet,ours-fast', '--json', str(tmp_path / 'b.json'),
               '--plot', str(tmp_path / 'b.png')])
    out = capsys.readouterr().out
    assert 'ours-fast' in out and 'vs base: median time / mmdet (eval)' in out
    assert 'conv limit (best channels_last conv, this run): fp32' in out
    assert json.loads((tmp_path / 'b.json').read_text())['settings']['depth'] == 18
    assert (tmp_path / 'b.png').stat().st_size > 1000
    bad = subprocess.run([sys.executable, str(ROOT / 'benchmarks/benchmark.py'), '--modes', 'fast'],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "allowed values: eval, train" in bad.stderr


def test_cp_variants_in_one_run():
    models = build_models(18, include=('mmdet', 'mmdet-cp', 'ours-fast-cp'))
    assert not models['mmdet'].with_cp and models['mmdet-cp'].with_cp
    assert models['ours-fast-cp'].with_cp == (True,) * 4 and models['ours-fast-cp'].fast
    with pytest.raises(ValueError, match="unknown model 'torchvision-cp' .torchvision has no"):
        build_models(18, include=('torchvision-cp',))


def test_table_marks_cells_that_do_not_apply_with_a_dash():
    """Eval rows have no saved bytes; a missing ratio is '-', never 'nan' (issue 16)."""
    row = dict(name='ours-fast', mode='eval', dtype='fp32', mean_s=0.5, sd_s=0.01,
               median_s=0.5, time_vs_base=0.9, first_s=None, saved_bytes=None,
               saved_vs_base=float('nan'), gflops_per_s=None,
               fraction_of_limit=float('nan'), page_faults=None)
    text = table({'results': [row], 'matmul_gflops_per_s': 100.0, 'settings': {}})
    assert 'nan' not in text.lower()
    line = text.splitlines()[2].split()
    assert line[5] == '0.900' and line[6:] == ['-'] * 6


def test_depth_200_runs_ours_and_skips_the_peers_that_lack_it():
    """docs/speed.md lists depths 18-200: at 200 mmdet's ResNet and torchvision have no such
    model, so those peers are skipped with a one-line note and ours run alone."""
    keep, skipped = split_by_depth(200, DEFAULT_MODELS)
    assert keep == ('ours-ref', 'ours-fast', 'ours-snap', 'ours-compiled', 'ours-snap-compiled')
    assert skipped == {'mmdet': "mmdet's ResNet has no depth 200",
                       'torchvision': 'torchvision has no resnet200',
                       'mmdet-compiled': "mmdet's ResNet has no depth 200"}
    assert split_by_depth(152, DEFAULT_MODELS) == (DEFAULT_MODELS, {})


@pytest.mark.integration
def test_depth_200_report(capsys, small_limit):
    report = tool.main(['--depth', '200', '--batch', '1', '--size', '32', '--repeats', '1',
                        '--warmup', '0', '--modes', 'eval', '--models', 'mmdet,ours-fast'])
    assert [r['name'] for r in report['results']] == ['ours-fast']
    out = capsys.readouterr().out
    assert "skipped mmdet: mmdet's ResNet has no depth 200" in out


def test_fold_variant_folds_where_the_default_does_not(small_limit):
    """ours-fast-fold folds every BN (the CPU behaviour, for GPU comparisons): at 64 px
    ResNet-18's layer4 does not fold by default, so the fold variant saves less."""
    report = run(depth=18, batch=1, size=64, repeats=1, warmup=0, modes=('train',),
                 include=('ours-fast', 'ours-fast-fold'), log=lambda s: None)
    saved = {r['name']: r['saved_bytes'] for r in report['results']}
    assert saved['ours-fast-fold'] < saved['ours-fast']


def test_bf16_autocast_is_measured_against_the_bf16_limit(small_limit):
    report = run(depth=18, batch=1, size=32, repeats=1, warmup=0, modes=('eval',),
                 include=('ours-fast',), amp_dtype='bfloat16', log=lambda s: None)
    row = report['results'][0]
    assert row['fraction_of_limit'] == pytest.approx(
        row['gflops_per_s'] / report['conv_limit_gflops_per_s']['bf16'])


def test_table_shows_peak_cuda_memory_only_for_gpu_runs(small_limit):
    report = run(depth=18, batch=1, size=64, repeats=1, warmup=0, modes=('eval',),
                 include=('ours-fast',), log=lambda s: None)
    assert 'peak MiB' not in table(report)
    report['results'][0]['peak_cuda_bytes'] = 300 * 2**20
    line = table(report).splitlines()
    assert line[0].endswith('peak MiB') and line[2].endswith(' 300')


def test_model_names():
    assert parse_model('ours-compiled') == parse_model('ours-fast-compiled').__class__(
        'ours-compiled', 'ours-fast', compiled=True)
    spec = parse_model('ours-snap-nofuse-nchw')
    assert spec.base == 'ours-snap' and spec.nofuse and spec.nchw and not spec.compiled
    assert parse_model('ours-snap-compiled').compiled and parse_model('ours-snap').eval_only
    assert parse_model('ours-fast-fold-cp').fold
    for bad in ('mmdet-nofuse', 'ours-fast-nofuse', 'ours-bf16-cp', 'ours-snap-cp', 'resnet',
                'ours-fast-cp-cp', 'mmdet-fold', 'ours-bf16-compiled'):
        with pytest.raises(ValueError, match=f'unknown model {bad!r}'):
            parse_model(bad)


def _no_work(monkeypatch):
    """Make any model building or measuring fail the test: argument errors must come
    first."""
    def built(*args, **kwargs):
        raise AssertionError('work started before the arguments were checked')
    for name in ('run', 'build_models', 'conv_limit'):
        monkeypatch.setattr(bench_timing, name, built)
    for name in ('build_models', 'shared_weights'):
        monkeypatch.setattr(bench_models, name, built)
    monkeypatch.setattr(tool, 'run_benchmark', built)
    monkeypatch.setattr(tool, 'run_overhead', built)


BAD_ARGS = [
    (['--batch', '0'], '--batch must be >= 1; got 0'),
    (['--size', '0'], '--size must be >= 32 (C5 is the input / 32); got 0'),
    (['--size', '31'], '--size must be >= 32 (C5 is the input / 32); got 31'),
    (['--width', '16'], '--width must be >= 32 (C5 is the input / 32); got 16'),
    (['--device', 'gpu'], "--device 'gpu' is not a device; allowed values: cpu, cuda, cuda:N"),
    (['--device', 'meta'], "--device 'meta': the benchmark runs on cpu or cuda"),
    (['--device', 'cuda'], '--device cuda: no CUDA GPU is available here'),
    (['--frozen-stages', '9'], '--frozen-stages 9: ResNet-50 has 4 stages; allowed values: '
                               '-1 (none) .. 4'),
    (['--frozen-stages', '-2'], '--frozen-stages -2: ResNet-50 has 4 stages'),
    (['--repeats', '0'], '--repeats must be >= 1; got 0'),
    (['--models', 'mmdet,resnet'], "--models: unknown model 'resnet' (not a model name)"),
    (['--compute-dtype', 'bf16'], '--compute-dtype bf16 is an inference tier: pass --modes '
                                  'eval'),
    (['--threads', '0'], '--threads must be >= 1; got 0'),
    (['--overhead', '--models', 'mmdet,ours-compiled'], '--models: ours-compiled: the '
                                                        'overhead mode counts aten ops'),
    (['--overhead', '--profile'], '--profile does not apply to --overhead'),
    (['--overhead', '--plot', 'x.png'], '--plot does not apply to --overhead'),
]


@pytest.mark.parametrize('argv,message', BAD_ARGS, ids=[' '.join(a) for a, _ in BAD_ARGS])
def test_bad_arguments_fail_in_one_line_before_any_work(argv, message, monkeypatch, capsys):
    import torch

    _no_work(monkeypatch)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)  # also on a GPU machine
    with pytest.raises(ToolError) as info:
        tool.main(argv)
    assert str(info.value).startswith(message), str(info.value)
    # as a command: exactly one line on stderr, exit status 1
    with pytest.raises(SystemExit) as exit_info:
        run_tool('benchmark.py', tool.main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count('\n') == 1, err
    assert err.startswith(f'benchmark.py: error: {message}'), err


def test_json_and_plot_into_an_unwritable_folder_fail_before_the_run(tmp_path, monkeypatch):
    """--json used to fail only after the whole run; now the folder is made and a file is
    created in it first (a file in the way of the folder fails even for root)."""
    _no_work(monkeypatch)
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    for flag in ('--json', '--plot'):
        target = blocker / 'sub' / 'out.x'
        with pytest.raises(ToolError, match=f'^{flag} {target}: cannot write there'):
            tool.main([flag, str(target)])
    with pytest.raises(ToolError, match='is a folder; give a file name'):
        tool.main(['--json', str(tmp_path)])
    ok = tmp_path / 'new' / 'deeper' / 'b.json'
    with pytest.raises(AssertionError, match='work started'):  # checks pass, work starts
        tool.main(['--json', str(ok)])
    assert ok.parent.is_dir() and not list(ok.parent.iterdir())  # no probe file left


@pytest.mark.skipif(__import__('os').geteuid() == 0, reason='root writes anywhere')
def test_json_into_a_read_only_folder(tmp_path, monkeypatch):
    _no_work(monkeypatch)
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ToolError, match='cannot write there'):
            tool.main(['--json', str(ro / 'b.json')])
    finally:
        ro.chmod(0o700)


@NEEDS_CXX
@pytest.mark.slow
@pytest.mark.parametrize('name', ['ours-fast', 'mmdet'])
def test_inductor_compiled_matches_eager(name):
    """The benchmark's compiled peers (Inductor on CPU; ``freezing`` for eval, as the
    benchmark runs them) compute what their eager models do: outputs within 1e-5
    relative in float32, in eval and in a train step (frozen stem + layer1, norm_eval),
    and the gradients too."""
    import torch
    from conftest import rel_err

    from resnet_backbone.models.compiled import inductor_freezing
    torch._dynamo.reset()
    eager = build_models(18, include=(name,))[name]
    twin = build_models(18, include=(name,))[name]  # the same seeded weights
    for m in (eager, twin):
        m.to(memory_format=torch.channels_last)
    compiled = torch.compile(twin)
    x = torch.rand(2, 3, 64, 64).to(memory_format=torch.channels_last)
    eager.eval(), twin.eval()
    with torch.no_grad(), inductor_freezing():
        for a, b in zip(compiled(x), eager(x)):
            assert rel_err(a, b) <= 1e-5
    eager.train(), twin.train()
    sum(o.mean() for o in compiled(x)).backward()
    sum(o.mean() for o in eager(x)).backward()
    grads = dict(eager.named_parameters())
    checked = 0
    for pname, p in twin.named_parameters():
        if grads[pname].grad is None:
            assert p.grad is None, pname
            continue
        assert rel_err(p.grad, grads[pname].grad) <= 1e-5, pname
        checked += 1
    assert checked > 10


def test_the_installed_commands_run_the_checkouts_benchmarks(tmp_path, monkeypatch, capsys):
    """rb-benchmark runs benchmarks/benchmark.py of the checkout the package is installed
    from; an install without a checkout says so in one line, and how to get one."""
    import resnet_backbone.tools as tools
    from resnet_backbone.tools import benchmark as entry
    assert tools.benchmark_script('benchmark') is tool
    monkeypatch.setattr(tools, 'BENCHMARKS', tmp_path / 'no_checkout')
    with pytest.raises(SystemExit) as info:
        run_tool('rb-benchmark', entry.main, ['--help'])
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.count('\n') == 1, err
    assert err.startswith('rb-benchmark: error: the benchmarks run from a checkout'), err

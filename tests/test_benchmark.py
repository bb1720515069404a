"""tools/benchmark.py: the harness runs, and its deterministic figures are right.

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

from resnet_backbone.apis.benchmark import build_models, run, saved_bytes_of

ROOT = Path(__file__).resolve().parents[1]


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


def test_report_figures(tmp_path):
    report = run(depth=18, batch=1, size=64, repeats=2, warmup=0, log=lambda s: None)
    rows = {(r['name'], r['mode']): r for r in report['results']}
    assert set(rows) == {(n, m) for n in ('mmdet', 'ours-fast', 'ours-ref', 'torchvision')
                         for m in ('eval', 'train')}
    assert rows['mmdet', 'eval']['time_vs_mmdet'] == 1.0
    assert rows['ours-ref', 'train']['saved_bytes'] == rows['mmdet', 'train']['saved_bytes']
    gflop = {r['gflop'] for r in report['results'] if r['mode'] == 'eval'}
    assert len(gflop) == 1 and gflop.pop() > 0
    assert report['matmul_gflops_per_s'] > 0
    assert all(r['repeats'] == 2 and r['mean_s'] > 0 for r in report['results'])


def test_saved_bytes_counts_each_storage_once():
    import torch
    w = torch.ones(1000, requires_grad=True)
    assert saved_bytes_of(lambda: (w * w).sum()) == 4000  # saved twice, one storage
    assert saved_bytes_of(lambda: (w * w.clone()).sum()) == 8000


@pytest.mark.integration
def test_tool_writes_json_and_plot(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / 'tools/benchmark.py'), '--depth', '18',
                        '--size', '64', '--repeats', '1', '--warmup', '0', '--modes', 'eval',
                        '--json', str(tmp_path / 'b.json'), '--plot', str(tmp_path / 'b.png')],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'ours-fast' in r.stdout and 'vs mmdet' in r.stdout
    assert json.loads((tmp_path / 'b.json').read_text())['settings']['depth'] == 18
    assert (tmp_path / 'b.png').stat().st_size > 1000
    bad = subprocess.run([sys.executable, str(ROOT / 'tools/benchmark.py'), '--modes', 'fast'],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "allowed values: eval, train" in bad.stderr


def test_cp_variants_in_one_run():
    models = build_models(18, include=('mmdet', 'mmdet-cp', 'ours-fast-cp'))
    assert not models['mmdet'].with_cp and models['mmdet-cp'].with_cp
    assert models['ours-fast-cp'].with_cp == (True,) * 4 and models['ours-fast-cp'].fast
    with pytest.raises(ValueError, match="unknown model 'torchvision-cp'"):
        build_models(18, include=('torchvision-cp',))


def test_table_marks_cells_that_do_not_apply_with_a_dash():
    """Eval rows have no saved bytes; a missing ratio is '-', never 'nan' (issue 16)."""
    from resnet_backbone.apis.benchmark import table
    row = dict(name='ours-fast', mode='eval', mean_s=0.5, sd_s=0.01, median_s=0.5,
               time_vs_mmdet=0.9, saved_bytes=None, saved_vs_mmdet=float('nan'),
               gflops_per_s=None, fraction_of_matmul=float('nan'), page_faults=None)
    text = table({'results': [row], 'matmul_gflops_per_s': 100.0, 'settings': {}})
    assert 'nan' not in text.lower()
    line = text.splitlines()[2].split()
    assert line[4] == '0.900' and line[5:] == ['-'] * 5


def test_depth_choices_come_from_the_architecture_table(capsys):
    """--depth offered 18..152 by hand; it is spec.ARCH_LAYOUT now, and a depth that
    mmdet's ResNet (whose weights every model shares) lacks is one line saying so."""
    from resnet_backbone.spec import ARCH_LAYOUT
    from resnet_backbone.tools import benchmark as tool
    assert 200 in ARCH_LAYOUT
    with pytest.raises(SystemExit) as info:
        tool.parse_args(['--depth', '200'])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert info.value.code == 2 and err.endswith(
        "--depth 200: every model starts from mmdet's ResNet weights, and mmdet's ResNet "
        'has no depth 200; allowed values: 18, 34, 50, 101, 152'), err
    assert tool.parse_args(['--depth', '101']).depth == 101

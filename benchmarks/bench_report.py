"""A benchmark report as text (the tables), as a picture (``--plot``) and as JSON.

The reports are those of :func:`bench_timing.run` and :func:`bench_timing.run_overhead`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path


def _cell(value, fmt: str, width: int) -> str:
    """``value`` formatted, or ``-`` where the figure does not apply (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f'{value:>{width}{fmt}}'


def table(report: dict) -> str:
    """A plain-text table of a report; ``-`` marks a cell that does not apply."""
    head = (f"{'model':<18} {'mode':<5} {'dtype':<5} {'median s':>8} {'±sd':>7} "
            f"{'vs base':>7} {'1st call':>8} {'saved MiB':>9} {'saved vs':>8} "
            f"{'GFLOP/s':>8} {'of limit':>8} {'faults':>7}")
    cuda = any(r.get('peak_cuda_bytes') is not None for r in report['results'])
    head += f" {'peak MiB':>8}" if cuda else ''  # above the resident weights, GPU only
    lines = [head, '-' * len(head)]
    for r in report['results']:
        saved = r['saved_bytes'] / 2**20 if r.get('saved_bytes') else None
        peak = r['peak_cuda_bytes'] / 2**20 if r.get('peak_cuda_bytes') is not None else None
        lines.append(
            f"{r['name']:<18} {r['mode']:<5} {r.get('dtype', 'fp32'):<5} "
            f"{r['median_s']:>8.3f} {r['sd_s']:>7.3f} {_cell(r.get('time_vs_base'), '.3f', 7)} "
            f"{_cell(r.get('first_s'), '.2f', 8)} {_cell(saved, '.1f', 9)} "
            f"{_cell(r.get('saved_vs_base'), '.3f', 8)} "
            f"{_cell(r.get('gflops_per_s') or None, '.1f', 8)} "
            f"{_cell(r.get('fraction_of_limit'), '.3f', 8)} "
            f"{_cell(r.get('page_faults'), 'd', 7)}"
            + (f" {_cell(peak, '.0f', 8)}" if cuda else ''))
    bases = sorted({(r['mode'], r['baseline']) for r in report['results'] if 'baseline' in r})
    if bases:
        lines.append('vs base: median time / ' + ', '.join(f'{b} ({m})' for m, b in bases))
    lim = report.get('conv_limit_gflops_per_s')
    if lim:
        lines.append(f"conv limit (best channels_last conv, this run): fp32 "
                     f"{lim['fp32']:.1f}, bf16 {lim['bf16']:.1f} GFLOP/s; secondary, not the "
                     f"limit: MKL fp32 matmul {report['matmul_gflops_per_s']:.1f} GFLOP/s")
    for name, why in (report.get('skipped') or {}).items():
        lines.append(f'skipped {name}: {why}')
    lines.append(f"settings: {json.dumps(report['settings'])}")
    if report.get('profile'):
        lines.append('')
        lines.append(profile_table(report['profile']))
    return '\n'.join(lines)


def overhead_table(report: dict) -> str:
    """The overhead mode's plain-text table: per model and mode, aten ops per step and
    median wall ms per step, each also as a ratio to mmdet's (``-`` where none)."""
    head = (f"{'model':<18} {'mode':<5} {'ops/step':>8} {'ops vs':>7} {'median ms':>9} "
            f"{'±sd':>7} {'time vs':>7} {'µs/op':>6}")
    lines = [head, '-' * len(head)]
    for r in report['results']:
        lines.append(
            f"{r['name']:<18} {r['mode']:<5} {r['ops']:>8d} "
            f"{_cell(r.get('ops_vs_base'), '.2f', 7)} {r['median_ms']:>9.2f} "
            f"{r['sd_ms']:>7.2f} {_cell(r.get('time_vs_base'), '.3f', 7)} "
            f"{_cell(r.get('us_per_op'), '.1f', 6)}")
    bases = sorted({(r['mode'], r['baseline']) for r in report['results'] if 'baseline' in r})
    if bases:
        lines.append('ops vs, time vs: ratio to ' + ', '.join(f'{b} ({m})' for m, b in bases)
                     + '; ops: aten ops dispatched in one (untimed) step, forward + backward')
    for name, why in (report.get('skipped') or {}).items():
        lines.append(f'skipped {name}: {why}')
    lines.append(f"settings: {json.dumps(report['settings'])}")
    return '\n'.join(lines)


def profile_table(rows: list[dict]) -> str:
    """Per stage: forward (and backward) time and the fraction of the conv limit."""
    head = (f"{'model':<18} {'mode':<5} {'stage':<7} {'fwd s':>7} {'bwd s':>7} {'GFLOP':>7} "
            f"{'of limit':>8}")
    lines = [head, '-' * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<18} {r['mode']:<5} {r['stage']:<7} {r['fwd_s']:>7.4f} "
                     f"{_cell(r.get('bwd_s'), '.4f', 7)} {r['gflop']:>7.2f} "
                     f"{_cell(r.get('fraction_of_limit'), '.3f', 8)}")
    return '\n'.join(lines)


def plot(report: dict, path: str | Path) -> Path:
    """Bar charts relative to the baseline (mmdet): median time per mode and bytes saved
    for backward (train), with the 1.0 line and each bar's value; and each model's
    fraction of the conv limit measured in the same run."""
    import matplotlib  # matplotlib is slow to import: only for --plot
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # after use("Agg")
    rows = [r for r in report['results'] if 'time_vs_base' in r]
    saved = [r for r in rows if r.get('saved_vs_base') is not None]
    limit = [r for r in rows if r.get('fraction_of_limit')]
    panels = [('median time / baseline (mmdet)', rows, 'time_vs_base', 1.0)]
    if limit:
        panels.append(('fraction of the conv limit', limit, 'fraction_of_limit', None))
    if saved:
        panels.append(('saved for backward / baseline', saved, 'saved_vs_base', 1.0))
    # one panel per row: a run of a dozen models in two modes is two dozen bars
    width = min(16.0, max(6.0, 0.5 * max(len(p[1]) for p in panels) + 1.5))
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 3.2 * len(panels) + 0.6),
                             squeeze=False)
    for ax, (label, data, key, line) in zip(axes[:, 0], panels):
        values = [r[key] for r in data]
        bars = ax.bar(range(len(data)), values, color=[
            '#888' if r['name'].startswith('mmdet') else '#2a7' if r['name'].startswith('ours')
            else '#57c' for r in data])
        ax.bar_label(bars, [f'{v:.2f}' for v in values], fontsize=7)
        if line is not None:
            ax.axhline(line, color='k', lw=0.8)
        ax.set_xticks(range(len(data)), [f"{r['name']}\n{r['mode']}" for r in data],
                      fontsize=6, rotation=45, ha='right')
        ax.set_ylabel(label)
    s = report['settings']
    hw = f"{s['size']}x{s.get('width', s['size'])}"  # reports before --width: square
    fig.suptitle(f"R{s['depth']} {s['batch']}x3x{hw} on {s['device']}"
                 f"{' channels_last (all)' if s.get('channels_last') else ''}"
                 f"{' with_cp' if s['with_cp'] else ''} {s.get('compute_dtype', 'fp32')}"
                 f"{' + ' + s['amp_dtype'] + ' autocast' if s.get('amp_dtype') else ''}; "
                 f"medians of {s['repeats']} interleaved repeats", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_json(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return path

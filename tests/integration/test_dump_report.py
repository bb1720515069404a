"""The dump report (``index.html``): its content, ``--report-only``, and the page itself
as headless Chromium renders it from a ``file://`` URL (rows, sort order, paging, the
overlays of a clicked row, a screenshot in test-artifacts/)."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from resnet_backbone.apis.dump import collect_images, dump_features
from resnet_backbone.apis.dump.report import PAGE_SIZE, write_report
from resnet_backbone.apis.features import FeatureExtractor
from resnet_backbone.errors import ToolError
from resnet_backbone.tools.dump_features import main as dump_main

from .conftest import CONFIG, ROOT

ARTIFACTS = ROOT / 'test-artifacts'
LEVELS = ('c2', 'c3', 'c4', 'c5')
#: an image path whose name would end the data's <script> element if it were not escaped
NASTY = 'evil</script><script>alert(1)</script>.png'


# ---------------------------------------------------------------- helpers
def fake_index(out: Path, n: int, *, extras: bool = True) -> dict:
    """An ``index.json`` of ``n`` made-up entries (no arrays files, no PNGs); with
    ``extras``: a name holding ``</script>``, an old entry without zeros/nonfinite, a
    NaN statistic, an entry with RoIs and a skipped image."""
    images = []
    for i in range(n):
        name = f'img_{i:05d}.png'
        levels = {lv: {'shape': [1, 8, 4, 4], 'stride': 4 << k, 'dtype': 'float32',
                       'min': -((i * 7919) % n) / n, 'max': ((i * 104729 + k) % n) / n + k,
                       'mean': ((i * 31) % n) / n, 'std': 0.5 + i / n, 'zeros': (i % 10) / 10,
                       'nonfinite': i % 3}
                  for k, lv in enumerate(LEVELS)}
        images.append({'image': f'/data/{name}', 'file': str(out / f'{name}.safetensors'),
                       'ori_shape': [64, 64], 'img_shape': [128, 128],
                       'pad_shape': [128, 128], 'scale_factor': [2.0, 2.0],
                       'levels': levels})
    skipped = []
    if extras:
        images[0]['image'] = f'/data/{NASTY}'
        images[0]['file'] = str(out / f'{NASTY}.safetensors')
        for lv in images[1]['levels'].values():  # an index from before zeros/nonfinite
            del lv['zeros'], lv['nonfinite']
        images[2]['levels']['c2']['min'] = math.nan
        images[3]['rois'] = [{'bbox': [0, 0, 4, 4]}] * 3
        skipped = [{'image': '/data/bad.png', 'reason': 'cannot identify image <b>file</b>'}]
    index = {'images': images, 'skipped': skipped}
    out.mkdir(parents=True, exist_ok=True)
    (out / 'index.json').write_text(json.dumps(index))
    return index


def embedded_data(page: str) -> dict:
    start = page.index('<script type="application/json" id="report-data">')
    start = page.index('>', start) + 1
    return json.loads(page[start:page.index('</script>', start)])


class Dom(HTMLParser):
    """What the tests read from the rendered DOM: the table's rows (name, thumbnail),
    the detail panel's overlays, the page label and the <body> attributes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.overlays: list[tuple[str, str]] = []  # (level, src)
        self.body: dict = {}
        self.pageinfo = ''
        self._in: str | None = None
        self._level = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get('class') or '').split()
        if tag == 'body':
            self.body = a
        elif tag == 'tr' and 'row' in classes:
            self.rows.append({'name': '', 'thumb': None, 'i': int(a['data-i'])})
        elif tag == 'td' and 'name' in classes and self.rows:
            self._in = 'name'
        elif tag == 'img' and self._level is not None:
            self.overlays.append((self._level, a['src']))
        elif tag == 'img' and self.rows and not self.rows[-1]['name']:
            self.rows[-1]['thumb'] = a['src']
        elif tag == 'figure' and 'ov' in classes:
            self._level = a['data-level']
        elif tag == 'span' and a.get('id') == 'pageinfo':
            self._in = 'pageinfo'

    def handle_endtag(self, tag):
        if tag in ('td', 'span'):
            self._in = None
        if tag == 'figure':
            self._level = None

    def handle_data(self, data):
        if self._in == 'name':
            self.rows[-1]['name'] += data
        elif self._in == 'pageinfo':
            self.pageinfo += data


def chromium() -> str:
    exe = shutil.which('chromium') or shutil.which('chromium-browser')
    if exe is None:
        pytest.skip('chromium not installed: apt-get install -y chromium (CI does this in '
                    '.ci/run)')
    return exe


def browse(page: Path, fragment: str, profile: Path, *, screenshot: Path | None = None,
           size: str = '1400,900') -> tuple[Dom | None, float]:
    """Open ``page#fragment`` from file:// in headless Chromium after its scripts ran
    (``--virtual-time-budget``); the dumped DOM (or a screenshot) and the wall time."""
    cmd = [chromium(), '--headless=new', '--no-sandbox', '--disable-gpu',
           '--disable-dev-shm-usage', '--no-first-run', f'--user-data-dir={profile}',
           '--virtual-time-budget=5000', f'--window-size={size}']
    cmd += [f'--screenshot={screenshot}'] if screenshot else ['--dump-dom']
    t0 = time.perf_counter()
    res = subprocess.run([*cmd, page.as_uri() + fragment], capture_output=True, text=True,
                         timeout=180)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-2000:]
    if screenshot:
        assert screenshot.is_file() and screenshot.stat().st_size > 10_000, res.stderr[-2000:]
        return None, wall
    return Dom(res.stdout), wall


# ---------------------------------------------------------------- the page's content
def test_report_self_contained_escaped_one_row_per_image(tmp_path):
    out = tmp_path / 'out'
    index = fake_index(out, 6)
    page = write_report(out)
    assert page == out / 'index.html' and page.is_file()
    text = page.read_text(encoding='utf-8')
    # nothing from a network: no URL, no external script or style sheet
    assert 'http://' not in text and 'https://' not in text
    assert '<script src' not in text and '<link' not in text and 'src="//' not in text
    # the name holding </script> is escaped: only the page's own two scripts end (an
    # HTML parser ends a script at "</script" followed by a space, "/" or ">")
    assert NASTY not in text and text.lower().count('</script') == 2
    data = embedded_data(text)
    assert len(data['rows']) == len(index['images'])
    assert data['rows'][0][0] == NASTY  # the name survives the escaping
    assert data['levels'] == list(LEVELS)
    assert data['rows'][1][4][0][4:] == [None, None]  # zeros/nonfinite absent: '-'
    assert data['rows'][2][4][0][0] == 'NaN'  # strict JSON has no NaN
    assert data['rows'][3][5] == 3 and data['rois']  # RoIs: a count
    assert data['rows'][4][2] is None  # no overlays on disk: a dash, not a broken image
    # the skipped image at the bottom, its reason escaped
    assert 'id="skipped"' in text and 'cannot identify image &lt;b&gt;file&lt;/b&gt;' in text


def test_report_only_rewrites_the_page_and_shows_compare_json(tmp_path):
    out = tmp_path / 'out'
    fake_index(out, 3, extras=False)
    (out / 'compare.json').write_text(json.dumps({
        'a': '/runs/fp32', 'b': '/runs/fp16', 'images': 3,
        'levels': {'c2': {'cosine_mean': 0.999991, 'cosine_min': 0.99987, 'max_rel': 0.0123,
                          'mean_rel': 0.000456}},
        'rois': {'roi_pooled': {'cosine_mean': 0.99999998, 'cosine_min': None,
                                'max_rel': 0.0005, 'mean_rel': 0.0001}},
        'notes': ['1 image has RoI features only in <b>; not compared']}))
    (out / 'index.html').unlink(missing_ok=True)
    assert dump_main(['--report-only', str(out)]) == out / 'index.html'  # the form
    assert dump_main(['--report-only', '--out', str(out)]) == out / 'index.html'
    text = (out / 'index.html').read_text(encoding='utf-8')
    assert 'id="compare"' in text and '/runs/fp16' in text
    assert '<td class="num">0.999991000</td>' in text  # cosines to 9 decimals
    assert '<td>roi_pooled</td><td class="num">0.999999980</td><td class="num">-</td>' in text
    assert 'only in &lt;b&gt;; not compared' in text
    assert len(embedded_data(text)['rows']) == 3
    with pytest.raises(ToolError, match='no index.json there'):
        dump_main(['--report-only', '--out', str(tmp_path / 'empty')])


def test_report_overlay_mode_from_the_manifest_and_files_of_another_cwd(tmp_path):
    out = tmp_path / 'out'
    index = fake_index(out, 2, extras=False)
    for e in index['images']:  # the dump ran with --out out from another folder
        e['file'] = 'out/' + Path(e['file']).name
    (out / 'index.json').write_text(json.dumps(index))
    (out / 'overlays').mkdir()
    for name in ('img_00000.png', 'img_00001.png'):  # both modes drawn, by two runs
        for suffix in ('sheet.png', 'c2.png', 'c2.topk.png'):
            (out / 'overlays' / f'{name}.{suffix}').write_bytes(b'png')
    (out / 'manifests').mkdir()
    (out / 'manifests' / 'rank-0.jsonl').write_text(''.join(
        json.dumps({'status': 'dumped', 'image': f'/data/{name}', 'time': 1.0,
                    'file': f'{name}.safetensors', 'overlay': mode}) + '\n'
        for name, mode in (('img_00000.png', 'topk'), ('img_00001.png', 'mean'))))
    rows = embedded_data(write_report(out).read_text(encoding='utf-8'))['rows']
    assert [r[:4] for r in rows] == [
        ['img_00000.png', '/data/img_00000.png', 'overlays/img_00000.png', 'topk'],
        ['img_00001.png', '/data/img_00001.png', 'overlays/img_00001.png', 'mean']]


# ---------------------------------------------------------------- in a real browser
@pytest.fixture(scope='module')
def real_dump(tiny_shapes, tmp_path_factory):
    """A dump with overlays of the embedded val images; its run writes the report."""
    chromium()  # skip before the model is built
    fx = FeatureExtractor.from_config(CONFIG, seed=7)
    images, root = collect_images(tiny_shapes / 'val')
    out = tmp_path_factory.mktemp('report') / 'out'
    summary = dump_features(fx, images, root, out, overlay=True, progress=False)
    assert summary.dumped == len(images)
    return out


def test_report_in_chromium_rows_sort_overlays_screenshot(real_dump, tmp_path):
    page = real_dump / 'index.html'
    assert page.is_file()  # written by the dump itself
    entries = json.loads((real_dump / 'index.json').read_text())['images']
    by_max = sorted(entries, key=lambda e: -e['levels']['c2']['max'])
    names = [Path(e['image']).name for e in by_max]
    opened = names.index(Path(entries[0]['image']).name)
    dom, _ = browse(page, '#sort=c2.max:desc&open=0', tmp_path / 'profile')
    assert dom.body.get('data-rendered') == 'true'
    assert len(dom.rows) == len(entries)
    assert [r['name'] for r in dom.rows] == names  # descending c2 max
    for r in dom.rows:  # thumbnails: the sheet PNGs, by relative path
        assert r['thumb'].endswith('.sheet.png') and (real_dump / r['thumb']).is_file()
    assert dom.rows[opened]['i'] == 0
    assert [lv for lv, _ in dom.overlays] == list(entries[0]['levels'])
    for _, src in dom.overlays:  # the clicked image's overlay per level
        assert src.startswith(f'overlays/{names[opened]}.') and (real_dump / src).is_file()
    # the filter by name
    dom, _ = browse(page, f'#q={names[-1]}', tmp_path / 'profile')
    assert [r['name'] for r in dom.rows] == [names[-1]]
    ARTIFACTS.mkdir(exist_ok=True)
    browse(page, '#sort=c2.max:desc&open=0', tmp_path / 'profile',
           screenshot=ARTIFACTS / 'dump_report.png')


def test_report_in_chromium_10k_images_paged(tmp_path):
    chromium()
    out = tmp_path / 'out'
    n = 10_000
    index = fake_index(out, n)
    t0 = time.perf_counter()
    write_report(out)
    write_s = time.perf_counter() - t0
    page = out / 'index.html'
    dom, wall = browse(page, '#sort=c3.mean:asc&page=2', tmp_path / 'profile')
    assert dom.body.get('data-rendered') == 'true'
    assert len(dom.rows) == PAGE_SIZE  # one page rendered, not 10,000 rows
    assert dom.pageinfo == f'page 2 of {n // PAGE_SIZE}'
    means = [e['levels']['c3']['mean'] for e in index['images']]
    order = sorted(range(n), key=lambda i: (means[i], i))
    assert [r['i'] for r in dom.rows] == order[PAGE_SIZE:2 * PAGE_SIZE]
    ARTIFACTS.mkdir(exist_ok=True)
    timing = {'images': n, 'html_bytes': page.stat().st_size, 'write_report_s': write_s,
              'chromium_wall_s': wall, 'load_ms': float(dom.body['data-load-ms']),
              'render_ms': float(dom.body['data-render-ms'])}
    (ARTIFACTS / 'dump_report_10k.json').write_text(json.dumps(timing, indent=1))
    print(timing)

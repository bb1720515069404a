"""The browsable report of a dump folder: ``index.html``, one self-contained page.

The page needs no server and no network: its CSS and JavaScript are inline, the rows
are a JSON blob in a ``<script type="application/json">`` tag, and the thumbnails are
the dump's own ``overlays/<image>.sheet.png`` files, referenced by relative path and
lazy-loaded, 100 rows a page (so 10,000 images load as fast as 100). Columns: the sheet,
the image's path relative to the input folder, and per level min, max, mean, std,
fraction of zeros and count of non-finite values. A click on a header sorts, the text
box filters by name, and a click on a row opens that image's per-level overlays. With
``compare.json`` in the folder (written by a dump comparison), the page has a table of
its numbers too.

The state lives in the URL's hash, so that a link (or a test) opens the page as it was:
``index.html#sort=c2.max:desc&q=circle&page=2&levels=c2,c3&open=0``.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
import sys
from pathlib import Path
from urllib.parse import quote

from ...errors import ToolError
from ...io.fileio import atomic_write_bytes
from .store import MANIFESTS, read_manifests

REPORT = 'index.html'
#: per level statistics, in column order (as in index.csv)
STATS = ('min', 'max', 'mean', 'std', 'zeros', 'nonfinite')
PAGE_SIZE = 100


def write_report(out_dir: str | Path) -> Path | None:
    """Write ``out_dir/index.html`` from ``index.json`` (and ``compare.json``, if any).

    Args:
        out_dir: a dump's output folder.

    Returns:
        The path of the page, or None when the folder has no ``index.json``.
    """
    out_dir = Path(out_dir)
    index_path = out_dir / 'index.json'
    if not index_path.is_file():
        return None
    index = json.loads(index_path.read_text(encoding='utf-8'))
    compare = _read_compare(out_dir / 'compare.json')
    data = report_data(out_dir, index)
    page = render_page(data, title=f'{out_dir.resolve().name}: feature dump',
                       skipped=index.get('skipped', []), compare=compare)
    target = out_dir / REPORT
    atomic_write_bytes(page.encode('utf-8'), target)
    return target


def report_only(out: str | Path) -> Path:
    """``--report-only``: rewrite the report of a dump folder from its ``index.json``.

    Args:
        out: the dump's output folder.

    Returns:
        The path of the page.

    Raises:
        ToolError: the folder has no ``index.json``.
    """
    out_dir = Path(out)
    report = write_report(out_dir)
    if report is None:
        hint = (' (it has manifests: run --rebuild-index first)'
                if (out_dir / MANIFESTS).is_dir() else '')
        raise ToolError(f'--out {out_dir}: no index.json there{hint}; pass the output '
                        'folder of a dump')
    print(f'[dump] report: {report}', file=sys.stderr)
    return report


# ---------------------------------------------------------------- the data
def report_data(out_dir: Path, index: dict) -> dict:
    """The page's JSON: the level names, and one compact row per index entry.

    A row is ``[name, image, overlay stem URL or None, overlay mode or None, stats,
    rois count or None, [ori_shape, img_shape, scale_factor]]`` with ``stats`` one
    6-list per level (None where the entry lacks the level or the statistic; non-finite
    numbers as the strings ``NaN``/``Infinity``/``-Infinity``, which strict JSON lacks).
    """
    entries = index.get('images', [])
    levels: list[str] = []
    for e in entries:
        levels += [lv for lv in e.get('levels') or {} if lv not in levels]
    records = read_manifests(out_dir)  # their 'overlay' says mean or topk
    by_image = {r.get('image'): f for f, r in records.items() if r.get('status') == 'dumped'}
    prefixes = tuple(dict.fromkeys(os.path.join(str(d), '') for d in (out_dir,
                                                                       out_dir.resolve())))
    rows = []
    for e in entries:
        rel = (_relative_file(str(e.get('file', '')), prefixes, out_dir)
               or by_image.get(e.get('image')))
        name = rel.rsplit('.', 1)[0] if rel else Path(str(e.get('image', ''))).name
        stem = url = mode = None
        if rel:
            stem = out_dir / 'overlays' / name
            if stem.with_name(f'{stem.name}.sheet.png').is_file():
                url = quote(f'overlays/{name}')
                mode = (e.get('overlay') or (records.get(rel) or {}).get('overlay')
                        or _probe_mode(stem, levels))
        lv = e.get('levels') or {}
        stats = [[_number(lv[k].get(s)) if k in lv else None for s in STATS] for k in levels]
        rows.append([name, str(e.get('image', '')), url, mode, stats, _rois_count(e),
                     [e.get('ori_shape'), e.get('img_shape'), e.get('scale_factor')]])
    return {'levels': levels, 'stats': list(STATS), 'rows': rows, 'page_size': PAGE_SIZE,
            'rois': any(r[5] is not None for r in rows)}


def _relative_file(file: str, prefixes: tuple[str, ...], out_dir: Path) -> str | None:
    """``file`` (as the index has it: joined to the --out of the dump, which may have
    been relative to another working folder) relative to ``out_dir``, or None.
    ``prefixes``: ``out_dir`` as given and resolved, each with a trailing separator
    (string tests first: resolving 10,000 paths costs seconds)."""
    for pre in prefixes:
        if file.startswith(pre):
            return Path(file[len(pre):]).as_posix()
    try:
        return Path(file).resolve().relative_to(out_dir.resolve()).as_posix()
    except (ValueError, OSError):
        return None


def _probe_mode(stem: Path, levels: list[str]) -> str:
    """An index without the mode: the files on disk tell it."""
    topk = any(stem.with_name(f'{stem.name}.{lv}.topk.png').is_file() for lv in levels[:1])
    return 'topk' if topk else 'mean'


def _number(v):
    """A JSON-safe statistic: floats rounded to 7 digits (float32 has no more)."""
    if type(v) is float and math.isfinite(v):  # the common case first: 60,000 a page build
        return float(f'{v:.7g}')
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, str):
        return v if v in ('NaN', 'Infinity', '-Infinity') else None
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if math.isfinite(v):
            return float(f'{v:.7g}')
        return 'NaN' if math.isnan(v) else ('Infinity' if v > 0 else '-Infinity')
    return None


def _rois_count(entry: dict) -> int | None:
    """The number of RoIs an entry lists (its ``rois`` key), None without the key."""
    rois = entry.get('rois')
    if rois is None:
        return None
    if isinstance(rois, int):
        return rois
    if isinstance(rois, dict):
        if isinstance(rois.get('count'), int):
            return rois['count']
        boxes = rois.get('boxes', rois.get('bboxes'))
        return len(boxes) if isinstance(boxes, list) else None
    return len(rois) if isinstance(rois, list) else None


def _read_compare(path: Path) -> dict | None:
    """``compare.json`` if present and readable (a broken one costs the section, not the
    page)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------- the page
def json_for_script(obj) -> str:
    """JSON that is safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` as
    ``\\u`` escapes, so no ``</script>`` or ``<!--`` in a name can end or change it."""
    text = json.dumps(obj, separators=(',', ':'), ensure_ascii=False, allow_nan=False)
    return (text.replace('<', '\\u003c').replace('>', '\\u003e').replace('&', '\\u0026')
            .replace('\u2028', '\\u2028').replace('\u2029', '\\u2029'))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f'{v:.6g}'
    return '-' if v is None else str(v)


def _compare_cell(key: str, v) -> str:
    """Cosines to 9 decimals (float16 against float32 is ~1 - 1e-8), differences as
    3-digit exponents; '-' for a statistic without a value."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return '-'
    return f'{v:.9f}' if key.startswith('cosine') else f'{v:.3e}'


def _compare_html(compare: dict | None) -> str:
    """The comparison section: one table for the levels, one for the RoI arrays (if
    any), and the comparison's notes."""
    if not compare:
        return ''
    keys = ('cosine_mean', 'cosine_min', 'max_rel', 'mean_rel')
    heads = ''.join(f'<th>{k}</th>' for k in keys)
    parts = ['<section id="compare"><h2>Comparison</h2>',
             f'<p>A: <code>{html.escape(str(compare.get("a", "")))}</code><br>'
             f'B: <code>{html.escape(str(compare.get("b", "")))}</code><br>'
             f'images: {html.escape(_fmt(compare.get("images")))}</p>']
    for label, table in (('level', compare.get('levels')), ('RoI array', compare.get('rois'))):
        if not isinstance(table, dict) or not table:
            continue
        body = ''.join(
            f'<tr><td>{html.escape(str(lv))}</td>'
            + ''.join(f'<td class="num">{_compare_cell(k, (v or {}).get(k))}</td>'
                      for k in keys) + '</tr>'
            for lv, v in table.items())
        parts.append(f'<table class="cmp"><thead><tr><th>{label}</th>{heads}</tr></thead>'
                     f'<tbody>{body}</tbody></table>')
    notes = compare.get('notes')
    if isinstance(notes, list) and notes:
        parts.append('<ul class="notes">' + ''.join(f'<li>{html.escape(str(n))}</li>'
                                                   for n in notes) + '</ul>')
    parts.append('</section>')
    return ''.join(parts)


def _skipped_html(skipped: list) -> str:
    if not skipped:
        return ''
    items = ''.join(f'<li><code>{html.escape(str(s.get("image", "")))}</code>: '
                    f'{html.escape(str(s.get("reason", "")))}</li>' for s in skipped)
    return (f'<section id="skipped"><h2>Skipped ({len(skipped)})</h2>'
            f'<ul>{items}</ul></section>')


def render_page(data: dict, *, title: str, skipped: list, compare: dict | None) -> str:
    """The whole page: static HTML, inline CSS and JS, the rows as embedded JSON."""
    parts = {
        'TITLE': html.escape(title),
        'SUMMARY': f'{len(data["rows"])} images, {len(data["levels"])} levels '
                   f'({html.escape(", ".join(data["levels"]))}), {len(skipped)} skipped',
        'COMPARE': _compare_html(compare), 'SKIPPED': _skipped_html(skipped),
        'CSS': _CSS, 'JS': _JS, 'DATA': json_for_script(data)}
    # one pass: a name holding "@JS@" must not be substituted again
    return re.sub(r'@([A-Z]+)@', lambda m: parts[m.group(1)], _PAGE)

_CSS = """
body{font:13px/1.35 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:8px 14px;background:#24292f;color:#fff}
header h1{font-size:16px;margin:0 0 2px}
#bar{position:sticky;top:0;z-index:2;background:#eef;padding:6px 14px;display:flex;
 gap:10px;align-items:center;flex-wrap:wrap;border-bottom:1px solid #ccd}
#bar input[type=search]{width:240px;padding:3px 6px}
#bar button{padding:2px 8px}
#lvls label{margin-right:6px;white-space:nowrap}
main{padding:6px 14px}
table{border-collapse:collapse;background:#fff}
#grid th,#grid td{border:1px solid #ddd;padding:2px 5px}
#grid thead th{background:#f0f0f4;position:sticky;top:38px}
#grid th.s{cursor:pointer;user-select:none;white-space:nowrap}
#grid th.s:hover{background:#dde}
#grid th.asc::after{content:" \\25B2"}#grid th.desc::after{content:" \\25BC"}
#grid tbody tr{cursor:pointer}#grid tbody tr:hover{background:#ffd}
#grid tbody tr.sel{background:#def}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.bad{color:#b00;font-weight:bold}
td.lv0{border-left:2px solid #99a !important}
td.th img{height:40px;display:block}
td.name{min-width:90px;max-width:260px;overflow-wrap:anywhere}
#detail{position:fixed;right:0;top:0;bottom:0;width:46%;overflow:auto;background:#fff;
 border-left:2px solid #889;box-shadow:-4px 0 12px #0003;padding:10px 14px;z-index:3}
#detail[hidden]{display:none}
#detail .ovs{display:flex;flex-wrap:wrap;gap:10px}
#detail figure{margin:0;width:calc(50% - 5px)}
#detail figure img{width:100%;max-height:420px;object-fit:contain;display:block;
 image-rendering:pixelated}
#detail figcaption{font-size:12px;color:#444}
#detail figure.sheet{width:100%}#detail .sheet img{image-rendering:auto}
table.cmp td,table.cmp th{border:1px solid #ddd;padding:2px 8px}
section{margin:14px 0}
.muted{color:#777}
"""

_JS = r"""
(function(){
'use strict';
var T0 = performance.now();
var D = JSON.parse(document.getElementById('report-data').textContent);
var LV = D.levels, ST = D.stats, NS = ST.length, ROWS = D.rows;
var PS = D.page_size || 100;
function num(v){
  return v === null || v === undefined ? NaN : (typeof v === 'string' ? Number(v) : v);
}
// the sort key of every row, built once per column on first use
var keyCache = {};
function keyOf(col){
  if (keyCache[col]) return keyCache[col];
  var out;
  if (col === 'name') out = ROWS.map(function(r){ return r[0].toLowerCase(); });
  else if (col === 'rois') out = ROWS.map(function(r){ return num(r[5]); });
  else {
    var p = col.split('.'), li = LV.indexOf(p[0]), si = ST.indexOf(p[1]);
    if (li < 0 || si < 0) return null;
    out = ROWS.map(function(r){ var s = r[4][li]; return s ? num(s[si]) : NaN; });
  }
  keyCache[col] = out; return out;
}
var state = {q: '', sort: '', dir: 'asc', page: 1, levels: LV.slice(), open: -1};
var view = [];            // row indices after filter and sort
function readHash(){
  var h = location.hash.replace(/^#/, ''), p = {};
  h.split('&').forEach(function(kv){
    if (!kv) return;
    var i = kv.indexOf('=');
    p[decodeURIComponent(i < 0 ? kv : kv.slice(0, i))] =
      i < 0 ? '' : decodeURIComponent(kv.slice(i + 1));
  });
  state.q = p.q || '';
  var s = (p.sort || '').split(':');
  state.sort = keyOf(s[0]) ? s[0] : ''; state.dir = s[1] === 'desc' ? 'desc' : 'asc';
  state.page = Math.max(1, parseInt(p.page || '1', 10) || 1);
  state.levels = p.levels
    ? p.levels.split(',').filter(function(l){ return LV.indexOf(l) >= 0; }) : LV.slice();
  state.open = parseInt(p.open, 10);
  if (!(state.open >= 0 && state.open < ROWS.length)) state.open = -1;
}
function writeHash(){
  var p = [];
  if (state.sort) p.push('sort=' + encodeURIComponent(state.sort + ':' + state.dir));
  if (state.q) p.push('q=' + encodeURIComponent(state.q));
  if (state.page > 1) p.push('page=' + state.page);
  if (state.levels.length !== LV.length)
    p.push('levels=' + encodeURIComponent(state.levels.join(',')));
  if (state.open >= 0) p.push('open=' + state.open);
  try {
    history.replaceState(null, '',
                         p.length ? '#' + p.join('&') : location.pathname + location.search);
  }
  catch (e) { /* some browsers refuse replaceState on file://: the hash is only a convenience */ }
}
function compute(){
  var q = state.q.toLowerCase(), idx = [];
  for (var i = 0; i < ROWS.length; i++)
    if (!q || ROWS[i][0].toLowerCase().indexOf(q) >= 0
        || ROWS[i][1].toLowerCase().indexOf(q) >= 0) idx.push(i);
  if (state.sort) {
    var k = keyOf(state.sort), sg = state.dir === 'desc' ? -1 : 1;
    idx.sort(function(a, b){
      var x = k[a], y = k[b];
      if (typeof x === 'number') {           // NaN (missing, non-finite) last, either way
        var xn = x !== x, yn = y !== y;
        if (xn || yn) return xn === yn ? a - b : (xn ? 1 : -1);
      }
      return x < y ? -sg : x > y ? sg : a - b;
    });
  }
  view = idx;
}
function fmt(v, s){
  if (v === null || v === undefined) return '-';
  if (typeof v === 'string') return v === 'Infinity' ? 'inf' : v === '-Infinity' ? '-inf' : 'nan';
  if (s === 'nonfinite') return String(v);
  if (s === 'zeros') return (100 * v).toFixed(v > 0 && v < 0.001 ? 3 : 1) + '%';
  var a = Math.abs(v);
  return (a !== 0 && (a < 1e-3 || a >= 1e5)) ? v.toExponential(3) : String(+v.toPrecision(4));
}
function el(tag, attrs, text){
  var e = document.createElement(tag);
  if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function header(){
  var th = document.getElementById('thead'); th.textContent = '';
  var r1 = el('tr'), r2 = el('tr');
  r1.appendChild(el('th', {rowspan: 2}, 'sheet'));
  var n = el('th', {rowspan: 2, 'class': 's', 'data-col': 'name'}, 'image'); r1.appendChild(n);
  if (D.rois) r1.appendChild(el('th', {rowspan: 2, 'class': 's', 'data-col': 'rois'}, 'RoIs'));
  state.levels.forEach(function(l){
    r1.appendChild(el('th', {colspan: NS}, l));
    ST.forEach(function(s){ r2.appendChild(el('th', {'class': 's', 'data-col': l + '.' + s,
      title: 'sort by ' + l + ' ' + s}, s === 'nonfinite' ? 'nonfin' : s)); });
  });
  th.appendChild(r1); th.appendChild(r2);
  th.querySelectorAll('th.s').forEach(function(h){
    var c = h.getAttribute('data-col');
    if (c === state.sort) h.classList.add(state.dir);
    h.addEventListener('click', function(){
      if (state.sort === c) state.dir = state.dir === 'asc' ? 'desc' : 'asc';
      else { state.sort = c; state.dir = c === 'name' ? 'asc' : 'desc'; }
      state.page = 1; update();
    });
  });
}
function body(){
  var tb = document.getElementById('tbody'), frag = document.createDocumentFragment();
  var pages = Math.max(1, Math.ceil(view.length / PS));
  if (state.page > pages) state.page = pages;
  var lis = state.levels.map(function(l){ return LV.indexOf(l); });
  var start = (state.page - 1) * PS, end = Math.min(view.length, start + PS);
  for (var j = start; j < end; j++) {
    var i = view[j], r = ROWS[i], tr = el('tr', {'class': 'row', 'data-i': i});
    if (i === state.open) tr.classList.add('sel');
    var td = el('td', {'class': 'th'});
    // lazy past the first screenful: a page of 100 sheets is fetched as it scrolls
    if (r[2]) td.appendChild(el('img', {loading: j - start < 12 ? 'eager' : 'lazy',
      alt: '', src: r[2] + '.sheet.png'}));
    else td.textContent = '-';
    tr.appendChild(td);
    tr.appendChild(el('td', {'class': 'name', title: r[1]}, r[0]));
    if (D.rois) tr.appendChild(el('td', {'class': 'num'}, r[5] === null ? '-' : String(r[5])));
    lis.forEach(function(li){
      var s = r[4][li];
      ST.forEach(function(name, si){
        var v = s ? s[si] : null;
        var c = el('td', {'class': 'num' + (si === 0 ? ' lv0' : '')}, fmt(v, name));
        if ((name === 'nonfinite' && v > 0) || typeof v === 'string') c.classList.add('bad');
        tr.appendChild(c);
      });
    });
    frag.appendChild(tr);
  }
  tb.textContent = ''; tb.appendChild(frag);
  document.getElementById('count').textContent = view.length === ROWS.length
    ? ROWS.length + ' images' : view.length + ' of ' + ROWS.length + ' images';
  document.getElementById('pageinfo').textContent = 'page ' + state.page + ' of ' + pages;
  document.getElementById('prev').disabled = state.page <= 1;
  document.getElementById('next').disabled = state.page >= pages;
}
function detail(){
  var d = document.getElementById('detail');
  if (state.open < 0 || state.open >= ROWS.length) { d.hidden = true; return; }
  var r = ROWS[state.open]; d.hidden = false;
  var c = document.getElementById('dcontent'); c.textContent = '';
  c.appendChild(el('h2', null, r[0]));
  c.appendChild(el('p', {'class': 'muted'}, r[1] + '  |  ori_shape ' + JSON.stringify(r[6][0]) +
    '  img_shape ' + JSON.stringify(r[6][1]) + '  scale_factor ' + JSON.stringify(r[6][2])));
  if (!r[2]) {
    c.appendChild(el('p', null, 'No overlays for this image (dump with --overlay).'));
    return;
  }
  var sheet = el('figure', {'class': 'sheet'});
  sheet.appendChild(el('img', {src: r[2] + '.sheet.png', alt: 'sheet'}));
  sheet.appendChild(el('figcaption', null, 'per-level sheet (' + r[3] + ')'));
  c.appendChild(sheet);
  var box = el('div', {'class': 'ovs'});
  LV.forEach(function(l, li){
    if (!r[4][li]) return;
    var f = el('figure', {'class': 'ov', 'data-level': l});
    // mean mode: <stem>.<level>.png; topk mode: <stem>.<level>.topk.png (a channel grid)
    var src = r[2] + '.' + l + (r[3] === 'topk' ? '.topk' : '') + '.png';
    f.appendChild(el('img', {src: src, alt: l}));
    var s = r[4][li];
    f.appendChild(el('figcaption', null, l + ': ' +
      ST.map(function(n, si){ return n + ' ' + fmt(s[si], n); }).join(', ')));
    box.appendChild(f);
  });
  c.appendChild(box);
}
function levelsBox(){
  var b = document.getElementById('lvls'); b.textContent = '';
  LV.forEach(function(l){
    var lab = el('label'), cb = el('input', {type: 'checkbox'});
    cb.checked = state.levels.indexOf(l) >= 0;
    cb.addEventListener('change', function(){
      state.levels = LV.filter(function(x){
        return x === l ? cb.checked : state.levels.indexOf(x) >= 0;
      });
      update();
    });
    lab.appendChild(cb); lab.appendChild(document.createTextNode(' ' + l)); b.appendChild(lab);
  });
}
function update(noHash){
  compute(); header(); body(); detail();
  if (!noHash) writeHash();
}
readHash();
var qbox = document.getElementById('q'); qbox.value = state.q;
var timer = null;
qbox.addEventListener('input', function(){
  clearTimeout(timer);
  timer = setTimeout(function(){ state.q = qbox.value; state.page = 1; update(); }, 120);
});
function turn(by){ state.page += by; body(); writeHash(); window.scrollTo(0, 0); }
document.getElementById('prev').addEventListener('click', function(){ turn(-1); });
document.getElementById('next').addEventListener('click', function(){ turn(1); });
document.getElementById('tbody').addEventListener('click', function(ev){
  var tr = ev.target.closest('tr.row'); if (!tr) return;
  state.open = parseInt(tr.getAttribute('data-i'), 10);
  body(); detail(); writeHash();
});
function close(){ state.open = -1; body(); detail(); writeHash(); }
document.getElementById('close').addEventListener('click', close);
document.addEventListener('keydown', function(ev){
  if (ev.key === 'Escape' && state.open >= 0) close();
});
window.addEventListener('hashchange', function(){
  readHash(); qbox.value = state.q; levelsBox(); update(true);
});
levelsBox(); update(true);
// the load time: since navigation start, and this script's share (parse, sort, first page)
var b = document.body;
b.setAttribute('data-rendered', 'true');
b.setAttribute('data-render-ms', (performance.now() - T0).toFixed(1));
b.setAttribute('data-load-ms', performance.now().toFixed(1));
document.getElementById('timing').textContent =
  'rendered in ' + (performance.now() - T0).toFixed(0) + ' ms';
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@</title>
<style>@CSS@</style></head>
<body>
<header><h1>@TITLE@</h1><div>@SUMMARY@ <span id="timing" class="muted"></span></div></header>
<div id="bar">
<input id="q" type="search" placeholder="filter by name" aria-label="filter by name">
<span id="count"></span>
<button id="prev" type="button">&larr; prev</button><span id="pageinfo"></span>
<button id="next" type="button">next &rarr;</button>
<span id="lvls"></span>
</div>
<main>
<noscript><p>This report needs JavaScript for its table; index.csv has the same numbers.</p>
</noscript>
<table id="grid"><thead id="thead"></thead><tbody id="tbody"></tbody></table>
@COMPARE@
@SKIPPED@
</main>
<aside id="detail" hidden>
<button id="close" type="button" style="float:right">close &times;</button>
<div id="dcontent"></div></aside>
<script type="application/json" id="report-data">@DATA@</script>
<script>@JS@</script>
</body></html>
"""

"""The style and the script every suite page embeds (plain CSS and JavaScript: no CDN, works from ``file://``).

The script sorts a ``table.sortable`` when a header is clicked (by a cell's ``data-sort`` number
when it has one, else by its text; empty cells last either way), filters a table by the
``<select>`` boxes of a ``.filters`` block (exact match on a column's text, the count of shown rows
beside them), and reads the page's ``#`` part: ``table=ID`` picks a table (default: the first),
``sort=COL&dir=asc|desc`` sorts it, ``click=COL,COL`` clicks its headers.
"""

from __future__ import annotations

SCRIPT = """
function cellValue(cell) {
  const key = cell.getAttribute('data-sort');
  if (key !== null) return parseFloat(key);
  const s = cell.textContent.trim();
  const x = parseFloat(s);
  return (s !== '' && s !== '-' && !isNaN(x) && /^-?[0-9.]/.test(s)) ? x : (s === '-' ? null : s);
}
function sortTable(table, col, dir) {
  const body = table.tBodies[0];
  const sign = dir === 'desc' ? -1 : 1;
  const rows = Array.from(body.rows).map((r, i) => [r, cellValue(r.cells[col]), i]);
  rows.sort(([, x, i], [, y, j]) => {
    if (x === null || y === null) return x === y ? i - j : (x === null ? 1 : -1);  // empty cells last
    const nx = typeof x === 'number', ny = typeof y === 'number';
    const c = nx && ny ? x - y : nx ? -1 : ny ? 1 : String(x).localeCompare(String(y));
    return c === 0 ? i - j : sign * c;
  });
  rows.forEach(([r]) => body.appendChild(r));
  Array.from(table.tHead.rows[0].cells).forEach((th, i) => th.setAttribute('aria-sort',
    i === col ? (dir === 'desc' ? 'descending' : 'ascending') : 'none'));
}
function applyFilters(box) {
  const table = document.getElementById(box.dataset.table);
  const selects = Array.from(box.querySelectorAll('select'));
  const rows = Array.from(table.tBodies[0].rows);
  let shown = 0;
  rows.forEach(r => {
    const ok = selects.every(s => s.value === '' || r.cells[parseInt(s.dataset.col, 10)].textContent.trim() === s.value);
    r.hidden = !ok;
    if (ok) shown += 1;
  });
  document.getElementById(box.dataset.table + '-count').textContent = shown + ' of ' + rows.length + ' rows';
}
document.querySelectorAll('table.sortable').forEach(table => {
  Array.from(table.tHead.rows[0].cells).forEach((th, i) => th.addEventListener('click', () => {
    sortTable(table, i, th.getAttribute('aria-sort') === 'ascending' ? 'desc' : 'asc');
  }));
});
document.querySelectorAll('.filters').forEach(box => {
  box.querySelectorAll('select').forEach(s => s.addEventListener('change', () => applyFilters(box)));
  applyFilters(box);
});
(function () {
  const id = /table=([\\w.+-]+)/.exec(location.hash);
  const t = id ? document.getElementById(id[1]) : document.querySelector('table.sortable');
  if (!t) return;
  const m = /sort=(\\d+)(?:&dir=(asc|desc))?/.exec(location.hash);
  if (m) sortTable(t, parseInt(m[1], 10), m[2] || 'asc');
  const c = /click=([\\d,]+)/.exec(location.hash);
  if (c) c[1].split(',').forEach(i => t.tHead.rows[0].cells[parseInt(i, 10)].click());
})();
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; white-space: nowrap; }
th.l, td.l { text-align: left; }
.own-line { display: block; font-size: 11px; }
th { background: #f0f0f0; cursor: pointer; user-select: none; position: sticky; top: 0; z-index: 1;
     white-space: normal; vertical-align: bottom; }
th[aria-sort=ascending]::after { content: ' \\25B2'; } th[aria-sort=descending]::after { content: ' \\25BC'; }
tbody tr:nth-child(even) { background: #fafafa; }
tbody tr:hover { background: #eef4ff; }
tr.imported td { color: #666; font-style: italic; }
tr.tied td:first-child { color: #a15c00; }
.ci { color: #777; font-size: 11px; }
details.notes { font-size: 13px; max-width: 80em; margin: 0.5em 0; }
details.notes summary { cursor: pointer; color: #333; }
.scroll { overflow-x: auto; }
details.notes li { margin: 0.2em 0; }
.filters { display: flex; flex-wrap: wrap; gap: 0.5em 1.2em; align-items: center; font-size: 13px;
           padding: 0.4em 0; }
.filters .count { color: #555; }
img { max-width: 48%; vertical-align: top; }
img.wide { max-width: 100%; display: block; }
"""

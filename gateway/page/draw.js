'use strict';
// The operator page's drawing helpers (page.js uses them; gateway/page/__init__.py
// inlines both as one script): DOM nodes made from text only, never markup (the
// page's CSP enforces it with Trusted Types), number formats, the RTT chart.
const draw = (function () {
  const SVG = 'http://www.w3.org/2000/svg';
  const STATES = new Set(['pending', 'connecting', 'connected', 'impaired', 'error']);

  // --- DOM helpers: text only ------------------------------------------------------------

  function h(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'title') e.title = String(v);
      else if (k === 'colspan') e.colSpan = Number(v);
      else if (k === 'type') e.type = String(v);
      else if (k.startsWith('data-') || k.startsWith('aria-')) e.setAttribute(k, String(v));
      else throw new Error('unexpected attribute ' + k);
    }
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : String(c));  // a string becomes a text node
    }
    return e;
  }

  function fill(id, ...children) {
    const e = document.getElementById(id);
    e.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
      .map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
    return e;
  }

  function setText(e, v) {  // a write only when the text differs: no layout work for equal values
    if (e.textContent !== v) e.textContent = v;
  }

  function stateClass(s) {
    return 's-' + (STATES.has(s) ? s : 'error');
  }

  // --- formatting -----------------------------------------------------------------------

  const isNum = (x) => typeof x === 'number' && Number.isFinite(x);

  function fmtBytes(n) {
    if (!isNum(n)) return '-';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? String(n) : n.toFixed(1)) + ' ' + units[i];
  }

  function fmtCount(n) {
    return isNum(n) ? n.toLocaleString('en-US') : '-';
  }

  function fmtAge(s) {
    if (!isNum(s)) return 'never';
    s = Math.max(0, Math.round(s));
    if (s < 120) return s + 's ago';
    if (s < 7200) return Math.floor(s / 60) + 'm' + String(s % 60).padStart(2, '0') + 's ago';
    return Math.floor(s / 3600) + 'h' + String(Math.floor(s / 60) % 60).padStart(2, '0') + 'm ago';
  }

  function fmtDuration(s) {
    if (!isNum(s)) return '-';
    s = Math.floor(s);
    const d = Math.floor(s / 86400), hh = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    if (d) return d + 'd' + String(hh).padStart(2, '0') + 'h';
    if (hh) return hh + 'h' + String(m).padStart(2, '0') + 'm';
    return m + 'm' + String(s % 60).padStart(2, '0') + 's';
  }

  const fmtRtt = (ms) => (isNum(ms) ? (ms < 10 ? ms.toFixed(2) : ms.toFixed(1)) + ' ms' : '-');
  const fmtLoss = (r) => (isNum(r) ? Math.round(r * 100) + '%' : '-');
  const fmtRate = (r) => (isNum(r) ? (r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString('en-US')) + '/s' : '-');
  const text = (x) => (x === null || x === undefined ? '-' : typeof x === 'object' ? JSON.stringify(x) : String(x));

  function kv(pairs) {
    return h('dl', {class: 'kv'}, pairs.filter((p) => p).map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
  }

  function table(head, rows, numeric) {
    const num = new Set(numeric || []);
    return h('div', {class: 'scroll'}, h('table', null,
      h('thead', null, h('tr', null, head.map((c, i) => h('th', {class: num.has(i) ? 'num' : null}, c)))),
      h('tbody', null, rows)));
  }

  function chart(buf, pollMs) {
    // viewBox units: one per sample on x (at least 20: a fresh page fills it quickly,
    // then it widens to the history kept), 0..60 on y; stretched to the card's width.
    const W = Math.max(20, buf.length), H = 60;
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('class', 'chart');
    svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('role', 'img');
    const rtts = buf.map((s) => s.rtt).filter(isNum);
    const max = rtts.length ? Math.max(...rtts) * 1.15 || 1 : 1;
    const x0 = W - buf.length;
    for (const y of [H / 2]) {
      const g = document.createElementNS(SVG, 'line');
      for (const [k, v] of [['x1', 0], ['x2', W], ['y1', y], ['y2', y]]) g.setAttribute(k, String(v));
      g.setAttribute('class', 'grid');
      g.setAttribute('vector-effect', 'non-scaling-stroke');
      svg.append(g);
    }
    buf.forEach((s, i) => {
      if (!isNum(s.loss) || s.loss <= 0) return;
      const r = document.createElementNS(SVG, 'rect');
      const hh = Math.min(1, s.loss) * H;
      for (const [k, v] of [['x', x0 + i], ['y', H - hh], ['width', 1], ['height', hh]]) r.setAttribute(k, String(v));
      r.setAttribute('class', 'loss');
      svg.append(r);
    });
    let d = '';
    let pen = false;
    buf.forEach((s, i) => {
      if (!isNum(s.rtt)) { pen = false; return; }
      const y = H - (s.rtt / max) * (H - 2) - 1;
      d += (pen ? 'L' : 'M') + (x0 + i + 0.5).toFixed(1) + ' ' + y.toFixed(2) + ' ';
      pen = true;
    });
    if (d) {
      const path = document.createElementNS(SVG, 'path');
      path.setAttribute('d', d.trim());
      path.setAttribute('class', 'rtt');
      path.setAttribute('vector-effect', 'non-scaling-stroke');
      svg.append(path);
    }
    const title = document.createElementNS(SVG, 'title');
    title.textContent = 'RTT (line, top = ' + fmtRtt(rtts.length ? max : null) + ') and probe loss (bars)';
    svg.append(title);
    const secs = Math.round((buf.length * pollMs) / 1000);
    return [svg, h('div', {class: 'legend muted'},
      h('span', {class: 'rtt'}, 'RTT, top ' + fmtRtt(rtts.length ? max : null)),
      h('span', {class: 'loss'}, 'loss'),
      h('span', null, 'last ' + secs + ' s'))];
  }

  function viewsTable(views, realLabel, viewLabel) {
    if (!views) return h('p', {class: 'muted'}, 'not received yet');
    if (!views.length) return h('p', {class: 'muted'}, 'none');
    return table(['kind', realLabel, viewLabel], views.map((v) =>
      h('tr', null, h('td', null, text(v.kind)), h('td', {class: 'mono'}, text(v.real)),
        h('td', {class: 'mono'}, text(v.view)))));
  }

  function metric(k, v, field) {
    return h('div', {class: 'metric'}, h('div', {class: 'v', 'data-field': field}, v), h('div', {class: 'k'}, k));
  }

  // Any JSON as nested tables and lists, as text (the exports/imports shapes belong to their API).
  function generic(v, depth) {
    if (v === null || typeof v !== 'object') return h('span', null, text(v));
    if (depth > 4) return h('code', null, JSON.stringify(v));
    if (Array.isArray(v)) {
      if (!v.length) return h('span', {class: 'muted'}, 'none');
      if (v.every((x) => x && typeof x === 'object' && !Array.isArray(x))) {
        const cols = [...new Set(v.flatMap((x) => Object.keys(x)))].slice(0, 12);
        return table(cols, v.map((x) => h('tr', null, cols.map((c) =>
          h('td', {class: 'wrap'}, x[c] !== null && typeof x[c] === 'object' ? generic(x[c], depth + 1) : text(x[c]))))));
      }
      return h('span', null, v.map(text).join(', '));
    }
    const entries = Object.entries(v);
    if (!entries.length) return h('span', {class: 'muted'}, 'none');
    return kv(entries.map(([k, x]) => [k, generic(x, depth + 1)]));
  }

  return {h, fill, setText, stateClass, isNum, fmtBytes, fmtCount, fmtAge, fmtDuration, fmtRtt, fmtLoss, fmtRate,
    text, kv, table, chart, viewsTable, metric, generic};
})();

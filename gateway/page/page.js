'use strict';
// The crosswire operator page. Polls the gateway's read-only GET API from the
// page's own origin and rebuilds the sections from it. Every string from the
// network enters the DOM as a text node (h() below): never as markup; the
// page's CSP enforces that (Trusted Types: an HTML sink throws).
(function () {
  const POLL_MS = 2000;
  const HISTORY = 90;          // samples kept per peer for the chart: 3 min at 2 s
  const OPTIONAL_RETRY = 15;   // polls before asking again for an endpoint that answered 404
  const SVG = 'http://www.w3.org/2000/svg';
  const STATES = new Set(['pending', 'connecting', 'connected', 'impaired', 'error']);
  const NAT_KNOWN = new Set(['cluster_id', 'egress_chain', 'ingress_chain', 'remote', 'local', 'rules',
    'host_network']);

  const history = new Map();   // peer -> ring buffer of {rtt, loss}
  let lastNat = null;          // {t, counters: Map(key -> packets)} for rates
  const optional = {exports: {wait: 0}, imports: {wait: 0}};
  let timer = null;
  let busy = false;

  // --- DOM helpers: text only ------------------------------------------------------------

  function h(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'title') e.title = String(v);
      else if (k === 'colspan') e.colSpan = Number(v);
      else if (k.startsWith('data-') || k === 'aria-label') e.setAttribute(k, String(v));
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

  // --- network --------------------------------------------------------------------------

  async function get(path) {
    // relative: works at / and behind a proxy that serves the gateway under a prefix
    const r = await fetch(path, {cache: 'no-store', credentials: 'omit', redirect: 'error',
      headers: {Accept: 'application/json'}});
    if (!r.ok) {
      const e = new Error(path + ': HTTP ' + r.status);
      e.status = r.status;
      throw e;
    }
    return r.json();
  }

  // --- sections -------------------------------------------------------------------------

  function renderStatus(st) {
    const id = text(st.cluster_id);
    fill('cluster', id);
    document.title = 'crosswire ' + id;
    const ready = h('span', null);
    const badge = fill('ready', st.ready ? 'ready' : 'not ready');
    badge.className = 'badge ' + (st.ready ? 's-ready' : 's-not-ready');
    ready.append(st.ready ? 'yes' : 'no: ' + text(st.ready_reason));
    const rc = st.reconcile || {};
    const byState = Object.entries(st.peers_by_state || {}).map(([k, v]) => v + ' ' + k).join(', ');
    fill('status', kv([
      ['ready', ready],
      ['public key', h('code', null, text(st.public_key))],
      ['endpoint', text(st.endpoint)],
      ['api', text(st.url)],
      ['interface', text(st.interface) + ' (' + text(st.implementation) + ')'],
      ['gateway ip', [st.gateway_ip, st.gateway_ip6].filter((x) => x).map(text).join(', ') || '-'],
      ['pods', (st.pod_cidrs || []).map(text).join(', ')],
      ['services', (st.service_cidrs || []).map(text).join(', ')],
      ['uptime', fmtDuration(st.uptime_s)],
      ['peers', text(st.peers) + (byState ? ' (' + byState + ')' : '')],
      ['reconcile', fmtCount(rc.runs) + ' runs, ' + fmtCount(rc.errors) + ' errors, ' +
        fmtCount(rc.dataplane_restarts) + ' data-plane restarts'],
      rc.last_error ? ['last error', h('span', {class: 'error'}, text(rc.last_error))] : null,
    ]));
  }

  function remember(peers) {
    const seen = new Set();
    for (const p of peers) {
      const id = String(p.cluster_id);
      seen.add(id);
      if (!history.has(id)) history.set(id, []);
      const buf = history.get(id);
      buf.push({rtt: isNum(p.rtt_ms) ? p.rtt_ms : null, loss: isNum(p.loss) ? p.loss : null});
      if (buf.length > HISTORY) buf.splice(0, buf.length - HISTORY);
    }
    for (const id of [...history.keys()]) if (!seen.has(id)) history.delete(id);
  }

  function chart(buf) {
    // viewBox units: one per sample on x (at least 20: a fresh page fills it quickly,
    // then it widens to HISTORY), 0..60 on y; stretched to the card's width.
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
    const secs = Math.round((buf.length * POLL_MS) / 1000);
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

  function renderPeers(peers) {
    remember(peers);
    if (!peers.length) {
      fill('peers', h('p', {class: 'muted'}, 'No peers yet: crosswire token create on one side, ' +
        'crosswire peer add on the other.'));
      return;
    }
    const sorted = [...peers].sort((a, b) => String(a.cluster_id).localeCompare(String(b.cluster_id)));
    fill('peers', sorted.map((p) => {
      const id = text(p.cluster_id);
      return h('article', {class: 'card', 'data-peer': id},
        h('div', {class: 'card-head'},
          h('h3', {'data-field': 'name'}, id),
          h('span', {class: 'badge ' + stateClass(p.state), 'data-field': 'state'}, text(p.state))),
        h('div', {class: 'metrics'},
          metric('handshake', fmtAge(p.handshake_age_s), 'handshake'),
          metric('rtt', fmtRtt(p.rtt_ms), 'rtt'),
          metric('loss', fmtLoss(p.loss), 'loss'),
          metric('received', fmtBytes(p.rx_bytes), 'rx'),
          metric('sent', fmtBytes(p.tx_bytes), 'tx')),
        chart(history.get(String(p.cluster_id)) || []),
        kv([
          ['endpoint', h('span', {class: 'mono'}, text(p.endpoint))],
          p.endpoint_error ? ['endpoint error', h('span', {class: 'error'}, text(p.endpoint_error))] : null,
          ['api', text(p.url)],
          ['probe', text(p.probe_ip)],
          // ipam.views of each side, and what that gives our pods (a sparse view reaches exports only).
          ['views', text((p.views_mode || '-') + ' (they view us ' + (p.their_views_mode || '-') + ')')],
          ['reach', h('span', {'data-field': 'reach'}, text(p.reach))],
        ]),
        h('p', {class: 'sub'}, 'how we address ' + id),
        viewsTable(p.our_views, id + "'s range", 'our view of it'),
        h('p', {class: 'sub'}, 'how ' + id + ' addresses us'),
        viewsTable(p.their_views, 'our range', id + "'s view of it"));
    }));
  }

  function renderNat(nat, now) {
    fill('nat-table', nat.table ? '(table ' + text(nat.table) + ')' : '');
    const counters = new Map();
    const prev = lastNat;
    const dt = prev ? now - prev.t : 0;
    const rate = (key, value) => {
      counters.set(key, value);
      if (!prev || dt <= 0 || !isNum(value) || !prev.counters.has(key)) return null;
      const before = prev.counters.get(key);
      return value >= before ? (value - before) / dt : null;  // smaller: the table was replaced
    };
    const drops = Array.isArray(nat.drops) ? nat.drops : null;
    if (drops) {
      fill('drops', h('h3', null, 'Dropped by the table'), table(['chain', 'rule', 'packets', 'rate', 'bytes'],
        drops.map((d) => {
          const r = rate('drop|' + text(d.chain) + '|' + text(d.comment), d.packets);
          return h('tr', {'data-drop': text(d.chain)}, h('td', null, text(d.chain)),
            h('td', {class: 'wrap'}, text(d.comment)),
            h('td', {class: 'num', 'data-field': 'packets'}, fmtCount(d.packets)),
            h('td', {class: 'num' + (r > 0 ? ' rising' : '')}, fmtRate(r)),
            h('td', {class: 'num'}, fmtBytes(d.bytes)));
        }), [2, 3, 4]));
    } else {
      fill('drops');
    }
    const peers = Array.isArray(nat.peers) ? nat.peers : [];
    if (!peers.length) {
      fill('nat', h('p', {class: 'muted'}, 'No mappings.'));
    } else {
      fill('nat', peers.map((p) => {
        const id = text(p.cluster_id);
        const rules = Array.isArray(p.rules) ? p.rules : [];
        const sum = (k) => rules.reduce((a, r) => a + (isNum(r[k]) ? r[k] : 0), 0);
        const rows = rules.map((r) => {
          const rr = rate(id + '|' + text(r.chain) + '|' + text(r.comment), r.packets);
          return h('tr', null, h('td', {class: 'mono'}, text(r.chain)), h('td', {class: 'wrap'}, text(r.comment)),
            h('td', {class: 'num'}, fmtCount(r.packets)),
            h('td', {class: 'num' + (rr > 0 ? ' rising' : '')}, fmtRate(rr)),
            h('td', {class: 'num'}, fmtBytes(r.bytes)), h('td', {class: 'num'}, fmtCount(r.connections)),
            h('td', {class: r.handle === null ? 'error' : 'muted'}, r.handle === null ? 'missing' : text(r.handle)));
        });
        const hosts = (Array.isArray(p.host_network) ? p.host_network : []).map((x) =>
          h('tr', null, h('td', {class: 'mono'}, text(x.map)), h('td', {class: 'mono'}, text(x.key)),
            h('td', {class: 'mono'}, text(x.target)), h('td', {class: 'num'}, fmtCount(x.packets)),
            h('td', {class: 'num'}, fmtBytes(x.bytes))));
        // anything else the gateway reports per peer (e.g. counters added by newer versions)
        const extra = Object.entries(p).filter(([k, v]) => !NAT_KNOWN.has(k) && (v === null || typeof v !== 'object'));
        const total = rate(id + '|total', sum('packets'));
        return h('article', {class: 'card', 'data-peer': id},
          h('div', {class: 'card-head'}, h('h3', null, id),
            h('span', {class: 'muted mono'}, text(p.egress_chain) + ' / ' + text(p.ingress_chain))),
          h('div', {class: 'metrics'},
            metric('packets', fmtCount(sum('packets')), 'packets'),
            metric('rate', fmtRate(total), 'rate'),
            metric('bytes', fmtBytes(sum('bytes')), 'bytes'),
            metric('connections', fmtCount(sum('connections')), 'connections')),
          extra.length ? kv(extra.map(([k, v]) => [k, text(v)])) : null,
          table(['chain', 'mapping', 'packets', 'rate', 'bytes', 'conns', 'handle'], rows, [2, 3, 4, 5]),
          hosts.length ? [h('p', {class: 'muted'}, 'host-network sources'),
            table(['map', 'our view', 'snat to', 'packets', 'bytes'], hosts, [3, 4])] : null);
      }));
    }
    // data attributes the browser test reads: totals per peer, unformatted
    for (const p of peers) {
      const card = [...document.querySelectorAll('#nat [data-peer]')].find((e) => e.dataset.peer === text(p.cluster_id));
      const rules = Array.isArray(p.rules) ? p.rules : [];
      if (card) card.dataset.packets = String(rules.reduce((a, r) => a + (isNum(r.packets) ? r.packets : 0), 0));
    }
    lastNat = {t: now, counters};
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

  async function pollOptional(name) {
    const st = optional[name];
    const section = document.getElementById(name + '-section');
    if (st.wait > 0) { st.wait -= 1; return; }
    try {
      const body = await get('api/v1/' + name);
      fill(name, generic(body, 0));
      section.hidden = false;
    } catch (e) {
      if (e.status === 404 || e.status === 401 || e.status === 403) {
        // this gateway has no such endpoint, or not for an anonymous reader: no section
        section.hidden = true;
        st.wait = OPTIONAL_RETRY;
      } else {
        fill(name, h('p', {class: 'error'}, String(e.message || e)));
        section.hidden = false;
      }
    }
  }

  function setLive(ok, why) {
    const e = fill('live', ok ? 'live, updated ' + new Date().toLocaleTimeString() : 'offline: ' + why);
    e.className = ok ? 'muted' : 'badge s-offline';
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + (ok ? 1 : 0));
  }

  async function poll() {
    if (busy) return;
    busy = true;
    try {
      const [st, peers, nat] = await Promise.all([get('api/v1/status'), get('api/v1/peers'), get('api/v1/nat')]);
      const now = performance.now() / 1000;
      renderStatus(st);
      renderPeers(Array.isArray(peers) ? peers : []);
      renderNat(nat || {}, now);
      await Promise.all(Object.keys(optional).map(pollOptional));
      setLive(true);
    } catch (e) {
      setLive(false, String(e.message || e));
    } finally {
      busy = false;
    }
  }

  function schedule() {
    clearTimeout(timer);
    if (document.visibilityState === 'hidden') return;  // no polling from a background tab
    timer = setTimeout(async () => { await poll(); schedule(); }, POLL_MS);
  }

  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') poll().then(schedule);
    else clearTimeout(timer);
  });
  poll().then(schedule);
})();

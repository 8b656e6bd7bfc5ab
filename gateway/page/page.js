'use strict';
// The crosswire operator page. Polls the gateway's read-only GET API from the
// page's own origin. Every string from the network enters the DOM as a text node
// (draw.js's h()): never as markup; the page's CSP enforces that (Trusted Types:
// an HTML sink throws).
//
// It stays small with many peers (gateway/DESIGN.md, "The operator page"): every
// poll is one request, /api/v1/page: the two summaries, one page of peer rows and the
// selected peer's row and NAT, with If-None-Match (304: nothing to draw); the status every 30 s and
// when the peers changed (its readiness check lists the whole table). It updates
// the cells that changed instead of rebuilding sections.
(function () {
  const {h, fill, setText, stateClass, isNum, fmtBytes, fmtCount, fmtAge, fmtDuration, fmtRtt, fmtLoss, fmtRate,
    text, kv, table, chart, viewsTable, metric, generic} = draw;
  const POLL_MS = 2000;
  const PAGE = 50;             // peer rows per page
  // polls between status fetches (30 s), and at once when the peers' version moves: its
  // readiness check lists the whole nft table (~0.7 s of gateway CPU with 1000 peers)
  const STATUS_EVERY = 15;
  const OPTIONAL_EVERY = 15;   // polls between exports/imports fetches, unless NAT's version changed
  const HISTORY = 90;          // samples kept per peer for the chart: 3 min at 2 s
  const HISTORY_PEERS = 200;   // peers whose history is kept (the page's and the selected)
  const OPTIONAL_RETRY = 15;   // polls before asking again for an endpoint that answered 404
  const NAT_KNOWN = new Set(['cluster_id', 'egress_chain', 'ingress_chain', 'remote', 'local', 'rules',
    'host_network']);
  const API = {status: 'api/v1/status', peers: 'api/v1/peers', nat: 'api/v1/nat', page: 'api/v1/page'};

  const history = new Map();   // peer -> ring buffer of {rtt, loss}
  const cache = new Map();     // URL -> {tag, body}: what a 304 means
  const optional = {exports: {wait: 0}, imports: {wait: 0}};
  const view = {offset: 0, selected: null, total: 0, natVersion: null, peersVersion: null};
  // What is on screen, to redraw only what changed.
  const drawn = {status: '', summary: '', detail: '', nat: null, natRising: false, drops: '', dropsRising: false,
    rows: new Map()};
  let polls = 0;
  const held = {natKey: '', nat: null};  // the selected peer's NAT as last drawn from /api/v1/page
  let timer = null;
  let busy = false;
  // What the last polls cost in the browser (tests/gateway/test_page_browser.py reads it).
  const stats = {polls: []};
  window.crosswirePage = stats;

  // --- network --------------------------------------------------------------------------

  let fetched = 0;  // body bytes this poll

  async function get(path) {
    // relative: works at / and behind a proxy that serves the gateway under a prefix
    const r = await fetch(path, {cache: 'no-store', credentials: 'omit', redirect: 'error',
      headers: {Accept: 'application/json'}});
    if (!r.ok) {
      const e = new Error(path + ': HTTP ' + r.status);
      e.status = r.status;
      throw e;
    }
    const body = await r.text();
    fetched += body.length;
    return JSON.parse(body);
  }

  // GET with If-None-Match: {body, changed}; a 304 answers the body we hold.
  async function getTagged(path) {
    const held = cache.get(path);
    const headers = {Accept: 'application/json'};
    if (held) headers['If-None-Match'] = held.tag;
    const r = await fetch(path, {cache: 'no-store', credentials: 'omit', redirect: 'error', headers});
    if (r.status === 304 && held) return {body: held.body, changed: false};
    if (!r.ok) {
      const e = new Error(path + ': HTTP ' + r.status);
      e.status = r.status;
      throw e;
    }
    const text = await r.text();
    fetched += text.length;
    const body = JSON.parse(text);
    const tag = r.headers.get('ETag');
    if (tag) {
      if (cache.size > 16) cache.clear();  // pages visited long ago
      cache.set(path, {tag, body});
    }
    return {body, changed: true};
  }

  function query(base, params) {
    return base + '?' + new URLSearchParams(params).toString();
  }

  // --- sections -------------------------------------------------------------------------

  function renderStatus(st) {
    const key = JSON.stringify(st);
    if (key === drawn.status) return;
    drawn.status = key;
    const id = text(st.cluster_id);
    fill('cluster', id);
    document.title = 'crosswire ' + id;
    const ready = h('span', null);
    const badge = fill('ready', st.ready ? 'ready' : 'not ready');
    badge.className = 'badge ' + (st.ready ? 's-ready' : 's-not-ready');
    ready.append(st.ready ? 'yes' : 'no: ' + text(st.ready_reason));
    const rc = st.reconcile || {};
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
      ['reconcile', fmtCount(rc.runs) + ' runs, ' + fmtCount(rc.errors) + ' errors, ' +
        fmtCount(rc.dataplane_restarts) + ' data-plane restarts'],
      rc.last_error ? ['last error', h('span', {class: 'error'}, text(rc.last_error))] : null,
    ]));
  }

  function renderSummary(ps, ns) {
    const key = JSON.stringify([ps, ns]);
    if (key === drawn.summary) return;
    drawn.summary = key;
    const byState = Object.entries(ps.peers_by_state || {}).map(([k, v]) => fmtCount(v) + ' ' + text(k)).join(', ');
    fill('peers-summary', kv([
      ['peers', h('span', {'data-field': 'peers'}, fmtCount(ps.peers) + (byState ? ' (' + byState + ')' : ''))],
      ['traffic', fmtBytes(ps.rx_bytes) + ' received, ' + fmtBytes(ps.tx_bytes) + ' sent'],
      ps.endpoint_errors ? ['endpoint errors', h('span', {class: 'error'}, fmtCount(ps.endpoint_errors))] : null,
    ]));
    fill('nat-table', ns.table ? '(table ' + text(ns.table) + ')' : '');
    const denied = ns.export_denied;
    fill('nat-summary', kv([
      ['mapped', h('span', {'data-field': 'mappings'}, fmtCount(ns.peers) + ' peers, ' + fmtCount(ns.mappings) +
        ' mappings, ' + fmtCount(ns.rules) + ' rules, ' + fmtCount(ns.host_network) + ' host-network elements')],
      ['exports', isNum(ns.exports) ? fmtCount(ns.exports) : 'none (peers reach the whole ranges)'],
      denied ? ['export denied', fmtCount(denied.packets) + ' packets, ' + fmtBytes(denied.bytes)] : null,
    ]));
  }

  function remember(peers) {
    for (const p of peers) {
      const id = String(p.cluster_id);
      const buf = history.get(id) || [];
      history.delete(id);  // re-inserted last: the map's order is least recently seen first
      history.set(id, buf);
      buf.push({rtt: isNum(p.rtt_ms) ? p.rtt_ms : null, loss: isNum(p.loss) ? p.loss : null});
      if (buf.length > HISTORY) buf.splice(0, buf.length - HISTORY);
    }
    while (history.size > HISTORY_PEERS) history.delete(history.keys().next().value);
  }

  // One row per peer of the page, keyed by cluster ID: cells are written only when their text changed.
  const COLS = [
    ['handshake', (p) => fmtAge(p.handshake_age_s)], ['rtt', (p) => fmtRtt(p.rtt_ms)],
    ['loss', (p) => fmtLoss(p.loss)], ['rx', (p) => fmtBytes(p.rx_bytes)], ['tx', (p) => fmtBytes(p.tx_bytes)],
    ['endpoint', (p) => text(p.endpoint)]];

  function peerRow(id) {
    const tr = h('tr', {'data-peer': id},
      h('td', null, h('button', {type: 'button', class: 'link', 'data-select': id}, id)),
      h('td', null, h('span', {class: 'badge', 'data-field': 'state'})),
      COLS.map(([k]) => h('td', {class: k === 'endpoint' ? 'mono wrap' : 'num', 'data-field': k})));
    return tr;
  }

  function renderRows(peers) {
    const body = document.getElementById('peer-rows');
    const keep = new Set();
    let prev = null;
    for (const p of peers) {
      const id = text(p.cluster_id);
      keep.add(id);
      let tr = drawn.rows.get(id);
      if (!tr) {
        tr = peerRow(id);
        drawn.rows.set(id, tr);
      }
      const st = tr.querySelector('[data-field=state]');
      setText(st, text(p.state));
      const cls = 'badge ' + stateClass(p.state);
      if (st.className !== cls) st.className = cls;
      for (const [k, f] of COLS) setText(tr.querySelector('[data-field=' + k + ']'), f(p));
      const sel = id === view.selected;
      if (tr.classList.contains('selected') !== sel) tr.classList.toggle('selected', sel);
      // in page order, moving only what is out of place
      const want = prev ? prev.nextSibling : body.firstChild;
      if (want !== tr) body.insertBefore(tr, want);
      prev = tr;
    }
    for (const [id, tr] of drawn.rows) {
      if (!keep.has(id)) { tr.remove(); drawn.rows.delete(id); }
    }
    const empty = document.getElementById('peers-empty');
    empty.hidden = peers.length > 0 || view.total > 0;
  }

  function renderPager() {
    const from = view.total ? view.offset + 1 : 0;
    const to = Math.min(view.offset + PAGE, view.total);
    setText(document.getElementById('page-label'), fmtCount(from) + '–' + fmtCount(to) + ' of ' + fmtCount(view.total));
    document.getElementById('page-prev').disabled = view.offset <= 0;
    document.getElementById('page-next').disabled = view.offset + PAGE >= view.total;
    document.getElementById('pager').hidden = view.total <= PAGE;
  }

  function renderDetail(p) {
    if (!p) {
      drawn.detail = '';
      fill('peer-detail');
      return;
    }
    const key = JSON.stringify(p) + '|' + JSON.stringify(history.get(String(p.cluster_id)) || []);
    if (key === drawn.detail) return;
    drawn.detail = key;
    const id = text(p.cluster_id);
    fill('peer-detail', h('article', {class: 'card', 'data-peer': id},
      h('div', {class: 'card-head'},
        h('h3', {'data-field': 'name'}, id),
        h('span', {class: 'badge ' + stateClass(p.state), 'data-field': 'state'}, text(p.state))),
      h('div', {class: 'metrics'},
        metric('handshake', fmtAge(p.handshake_age_s), 'handshake'),
        metric('rtt', fmtRtt(p.rtt_ms), 'rtt'),
        metric('loss', fmtLoss(p.loss), 'loss'),
        metric('received', fmtBytes(p.rx_bytes), 'rx'),
        metric('sent', fmtBytes(p.tx_bytes), 'tx')),
      chart(history.get(String(p.cluster_id)) || [], POLL_MS),
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
      viewsTable(p.their_views, 'our range', id + "'s view of it")));
  }

  // Counter rates: each key's last sample, so a card left alone (304) still gets a true
  // average when it is drawn again, and a rising one is drawn again to fall back to 0.
  const samples = new Map();  // key -> {t, v}

  function rate(key, v, now) {
    if (!isNum(v)) return null;
    const prev = samples.get(key);
    if (samples.size > 5000) samples.clear();
    samples.set(key, {t: now, v});
    if (!prev || now <= prev.t || v < prev.v) return null;  // smaller: the table was replaced
    return (v - prev.v) / (now - prev.t);
  }

  function renderDrops(drops, now) {
    const key = JSON.stringify(drops);
    if (key === drawn.drops && !drawn.dropsRising) return;
    drawn.drops = key;
    drawn.dropsRising = false;
    if (!Array.isArray(drops)) { fill('drops'); return; }
    fill('drops', h('h3', null, 'Dropped by the table'), table(['chain', 'rule', 'packets', 'rate', 'bytes'],
      drops.map((d) => {
        const r = rate('drop|' + text(d.chain) + '|' + text(d.comment), d.packets, now);
        if (r > 0) drawn.dropsRising = true;
        return h('tr', {'data-drop': text(d.chain)}, h('td', null, text(d.chain)),
          h('td', {class: 'wrap'}, text(d.comment)),
          h('td', {class: 'num', 'data-field': 'packets'}, fmtCount(d.packets)),
          h('td', {class: 'num' + (r > 0 ? ' rising' : '')}, fmtRate(r)),
          h('td', {class: 'num'}, fmtBytes(d.bytes)));
      }), [2, 3, 4]));
  }

  function natCard(p, now) {
    let rising = false;
    const rated = (key, v) => {
      const r = rate(key, v, now);
      if (r > 0) rising = true;
      return r;
    };
    const id = text(p.cluster_id);
    const rules = Array.isArray(p.rules) ? p.rules : [];
    const sum = (k) => rules.reduce((a, r) => a + (isNum(r[k]) ? r[k] : 0), 0);
    const rows = rules.map((r) => {
      const rr = rated(id + '|' + text(r.chain) + '|' + text(r.comment), r.packets);
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
    const total = rated(id + '|total', sum('packets'));
    const card = h('article', {class: 'card', 'data-peer': id},
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
    card.dataset.packets = String(sum('packets'));  // unformatted, for the browser test
    if (rising) drawn.natRising = true;
    return card;
  }

  // The selected peer's NAT: redrawn when its answer changed (a 304 keeps the card,
  // unless its rates were rising: they fall back to 0).
  function renderNat(nat, changed, now) {
    if (nat === null) {
      drawn.nat = null;
      fill('nat', h('p', {class: 'muted'}, view.total ? 'Select a peer to see its mappings.' : 'No mappings.'));
      return;
    }
    if (!changed && drawn.nat === nat && !drawn.natRising) return;
    drawn.nat = nat;
    drawn.natRising = false;
    const peers = Array.isArray(nat.peers) ? nat.peers : [];
    fill('nat', peers.length ? peers.map((p) => natCard(p, now)) :
      h('p', {class: 'muted'}, 'No mappings for ' + text(view.selected) + ' (not programmed yet).'));
  }

  async function pollOptional(name, due) {
    const st = optional[name];
    const section = document.getElementById(name + '-section');
    if (st.wait > 0) { st.wait -= 1; return; }
    if (!due) return;
    try {
      const {body, changed} = await getTagged('api/v1/' + name);
      if (changed) fill(name, generic(body, 0));
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

  // The selected peer's row: from the page when it is on it, else asked for alone.
  async function selectedPeer(rows) {
    const on = rows.find((p) => text(p.cluster_id) === view.selected);
    if (on) return on;
    try {
      const {body} = await getTagged(query(API.peers, {peer: view.selected}));
      return (body.peers || [])[0] || null;
    } catch (e) {
      if (e.status === 404) return null;  // removed meanwhile
      throw e;
    }
  }

  async function poll() {
    if (busy) return;
    busy = true;
    const t0 = performance.now();
    fetched = 0;
    let work = 0;
    try {
      const wantStatus = polls % STATUS_EVERY === 0;
      const asked = view.selected;  // the combined answer's row and NAT are this peer's
      const params = {limit: PAGE, offset: view.offset};
      if (asked !== null) params.peer = asked;
      const [st, both] = await Promise.all([
        wantStatus ? get(API.status) : null,
        getTagged(query(API.page, params))]);
      const ps = both.body.peers_summary || {};
      const ns = both.body.nat_summary || {};
      const page = both.body.peers || {};
      const peersMoved = ps.version !== view.peersVersion;
      view.peersVersion = ps.version;
      const status = st || (peersMoved ? await get(API.status) : null);
      let rows = Array.isArray(page.peers) ? page.peers : [];
      view.total = isNum(page.total) ? page.total : rows.length;
      if (view.offset >= view.total && view.total > 0) {  // peers went away: back to the last page
        view.offset = Math.floor((view.total - 1) / PAGE) * PAGE;
        rows = (await getTagged(query(API.peers, {limit: PAGE, offset: view.offset}))).body.peers || [];
      }
      if (view.selected === null && rows.length) view.selected = text(rows[0].cluster_id);
      const answered = view.selected !== null && view.selected === asked;
      let sel = null;
      if (view.selected !== null) {
        sel = rows.find((p) => text(p.cluster_id) === view.selected) ||
          (answered ? ((both.body.selected || {}).peers || [])[0] || null : await selectedPeer(rows));
      }
      if (sel === null && view.selected !== null) {
        view.selected = rows.length ? text(rows[0].cluster_id) : null;
        sel = rows.length ? rows[0] : null;
      }
      let nat = null;
      let natChanged = false;
      if (view.selected !== null && view.selected === asked) {
        // The same NAT as last poll (only counters elsewhere moved): the object on screen.
        nat = both.body.nat || null;
        const key = JSON.stringify(nat);
        natChanged = key !== held.natKey;
        if (natChanged) { held.natKey = key; held.nat = nat; } else nat = held.nat;
      } else if (view.selected !== null) {  // a peer chosen in this poll: asked for alone
        try {
          ({body: nat, changed: natChanged} = await getTagged(query(API.nat, {peer: view.selected})));
          held.natKey = JSON.stringify(nat);
          held.nat = nat;
        } catch (e) {
          if (e.status !== 404) throw e;
        }
      }
      const natMoved = ns.version !== view.natVersion;
      view.natVersion = ns.version;
      const optionalDue = natMoved || polls % OPTIONAL_EVERY === 0;
      const w0 = performance.now();
      if (status) renderStatus(status);
      renderSummary(ps, ns);
      remember(sel && !rows.includes(sel) ? [...rows, sel] : rows);
      renderRows(rows);
      renderPager();
      renderDetail(sel);
      const now = performance.now() / 1000;
      renderNat(nat, natChanged, now);
      renderDrops(Array.isArray(ns.drops) ? ns.drops : null, now);
      work = performance.now() - w0;
      await Promise.all(Object.keys(optional).map((name) => pollOptional(name, optionalDue)));
      polls += 1;
      setLive(true);
    } catch (e) {
      setLive(false, String(e.message || e));
    } finally {
      stats.polls.push({ms: performance.now() - t0, renderMs: work, bytes: fetched});
      if (stats.polls.length > 50) stats.polls.shift();
      busy = false;
    }
  }

  function schedule() {
    clearTimeout(timer);
    if (document.visibilityState === 'hidden') return;  // no polling from a background tab
    timer = setTimeout(async () => { await poll(); schedule(); }, POLL_MS);
  }

  function go(offset) {
    view.offset = Math.max(0, offset);
    poll().then(schedule);
  }

  document.getElementById('page-prev').addEventListener('click', () => go(view.offset - PAGE));
  document.getElementById('page-next').addEventListener('click', () => go(view.offset + PAGE));
  document.getElementById('peer-rows').addEventListener('click', (ev) => {
    const b = ev.target instanceof Element ? ev.target.closest('[data-select]') : null;
    if (!b) return;
    view.selected = b.dataset.select;
    drawn.detail = '';
    poll().then(schedule);
  });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') poll().then(schedule);
    else clearTimeout(timer);
  });
  poll().then(schedule);
})();

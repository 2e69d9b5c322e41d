/* The live page of CPE (GET /dashboard): flows, one flow's forecast against what happened, route groups.
 *
 * Data: GET /v1/flows and /v1/groups (paged lists), GET /v1/flows/{key}?contexts=true (a chosen flow's
 * window), GET /v1/groups/{id} (a group's choice), GET /v1/stats (the live score); pushed: FlowPrediction
 * messages on /v1/stream/predictions and routing messages on /v1/stream/routing.
 *
 * Messages only change the state and mark what they touched as dirty; the DOM and the chart are redrawn
 * at most once per animation frame, and only the rows on screen (a page of the list) are ever built, so
 * that ten thousand flows and a fast stream keep the page responsive. No inline script, no eval, no
 * innerHTML with data: the page runs under a strict Content Security Policy (app/api/dashboard.py).
 *
 * Flows expire on the server (CPE_FLOW_TTL_MS after their last observation) and groups can be deleted,
 * which no stream announces: the lists are read again every LISTS_EVERY_MS (`?lists_s=` overrides it), and
 * what the server no longer lists, and no message named since that reading began, leaves the page.
 */
'use strict';

(() => {
  const ROOT = new URL('.', location.href); // the service's root, under a proxy's prefix too
  const KEY_ITEM = 'cpe.dashboard.apiKey'; // sessionStorage: the key lives as long as the tab
  const PAGE_SIZE = 25; // rows per page of a list
  const LIST_PAGE = 1000; // flows or groups per request when loading a list (the API's largest page)
  const CHART_POINTS = 240; // newest points of the chosen flow kept on the chart
  const FORECASTS_KEPT = 32; // newest forecasts kept per flow, so that a chosen flow's chart starts full
  const TABLE_ROWS = 20; // rows of the chart's table alternative
  const STATS_EVERY_MS = 5000;
  const LATENCY = 0; // index of latency_ms in the feature schema, the primary feature
  const INBOX_MS_PER_FRAME = 8; // time a frame spends on arrived messages; the rest wait for the next
  const INBOX_MAX = 50000; // messages waiting at most; past it the oldest are dropped (and counted)
  const LISTS_EVERY_MS = 1000 * (Number(new URLSearchParams(location.search).get('lists_s')) || 30);

  const $ = (id) => document.getElementById(id);
  const fmt = (v, digits = 1) => (v == null || !Number.isFinite(v) ? '–' : v.toFixed(digits));
  const pct = (v) => (v == null || !Number.isFinite(v) ? '–' : `${Math.round(v * 100)} %`);
  const shortKey = (key) => `${key.slice(0, 8)}…${key.slice(-4)}`;
  const timeText = (ms) => new Date(ms).toISOString().slice(11, 23);

  // ---- state -------------------------------------------------------------------------------------
  const flows = new Map(); // flow_key -> {key, route, forecast: {mean, lower, upper, confidence}, history: []}
  const groups = new Map(); // group_id -> {id, flowKey, best, weights, routes, ranking, openBreakers, ...}
  const chosen = { key: null, actual: new Map(), score: null, route: null, loading: false, again: false };
  const dirty = new Set(); // what the next frame redraws: 'flows', 'groups', 'chart', 'header'
  let frameRequested = false;
  let model = { kind: null, version: null };
  // arrived messages, [handler, text], handled a frame's budget at a time: a burst of a thousand forecasts
  // (which the browser may hand over in one task) never makes one long frame
  const inbox = [];
  let inboxHead = 0;
  let inboxDropped = 0;

  function touch(what) {
    dirty.add(what);
    if (!frameRequested) {
      frameRequested = true;
      requestAnimationFrame(draw);
    }
  }

  // ---- the API, with the key --------------------------------------------------------------------
  let keyWaiters = null; // the callers waiting for a key while the dialog is open

  function apiKey() {
    return sessionStorage.getItem(KEY_ITEM);
  }

  function askForKey(reason) {
    if (keyWaiters === null) {
      keyWaiters = [];
      $('key-why').textContent = reason;
      $('key-input').value = '';
      $('key-dialog').showModal();
    }
    return new Promise((resolve) => keyWaiters.push(resolve));
  }

  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_ITEM, $('key-input').value.trim());
    $('key-dialog').close();
    const waiters = keyWaiters || [];
    keyWaiters = null;
    waiters.forEach((resolve) => resolve());
    reconnectAll();
  });

  // Escape would close the dialog with callers still waiting for a key: only once a key is set
  $('key-dialog').addEventListener('cancel', (event) => {
    if (!apiKey()) event.preventDefault();
    else {
      const waiters = keyWaiters || [];
      keyWaiters = null;
      waiters.forEach((resolve) => resolve()); // they try again with the key they had
    }
  });

  $('change-key').addEventListener('click', () => {
    askForKey('Enter the API key to use from now on (read scope). It is kept for this tab only.');
  });

  async function api(path) {
    for (;;) {
      const headers = { accept: 'application/json' };
      const key = apiKey();
      if (key) headers['x-api-key'] = key;
      const response = await fetch(new URL(path, ROOT), { headers });
      if (response.status === 401 || response.status === 403) {
        const why = response.status === 401
          ? (key ? 'The service did not accept this key. Enter a valid API key (read scope).'
            : 'This service asks for an API key (read scope). It is kept for this tab only.')
          : 'This key lacks the read scope. Enter a key with the read scope.';
        await askForKey(why);
        continue;
      }
      if (!response.ok) throw new Error(`${path}: ${response.status}`);
      return response.json();
    }
  }

  // ---- WebSocket streams ------------------------------------------------------------------------
  const sockets = []; // {name, path, frame, onMessage, ws, retry, open}

  function stream(name, path, frame, onMessage) {
    const entry = { name, path, frame, onMessage, ws: null, retry: 500, open: false };
    sockets.push(entry);
    connect(entry);
  }

  function connect(entry) {
    const url = new URL(entry.path, ROOT);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const key = apiKey();
    if (key) url.searchParams.set('api_key', key); // a browser cannot set headers on a WebSocket
    const ws = new WebSocket(url);
    entry.ws = ws;
    ws.addEventListener('open', () => {
      entry.open = true;
      entry.retry = 500;
      ws.send(JSON.stringify(entry.frame));
      touch('header');
    });
    ws.addEventListener('message', (event) => {
      if (inbox.length - inboxHead >= INBOX_MAX) {
        inboxHead++;
        inboxDropped++;
        touch('header');
      }
      inbox.push([entry, event.data]);
      touch('inbox');
    });
    ws.addEventListener('close', (event) => {
      if (entry.ws !== ws) return; // replaced by reconnectAll
      entry.open = false;
      touch('header');
      if (event.code === 1008 && /key/i.test(event.reason)) {
        askForKey(`The ${entry.name} stream refused the key: ${event.reason}`); // reconnects on submit
        return;
      }
      setTimeout(() => connect(entry), entry.retry);
      entry.retry = Math.min(entry.retry * 2, 10000);
    });
  }

  function reconnectAll() {
    for (const entry of sockets) {
      const old = entry.ws;
      entry.ws = null;
      if (old) old.close();
      connect(entry);
    }
  }

  // ---- flows ------------------------------------------------------------------------------------
  function flow(key) {
    let entry = flows.get(key);
    if (entry === undefined) {
      entry = { key, route: null, forecast: null, history: [], seen: 0 };
      flows.set(key, entry);
      flowList.added();
    }
    entry.seen = performance.now(); // named by the server: see forget()
    return entry;
  }

  // the entries of ``map`` that a reading of the server's list begun at ``since`` did not list, and that
  // no message named since: expired flows, deleted groups
  function forget(map, listed, since, list) {
    let removed = 0;
    for (const [id, entry] of map) {
      if (!listed.has(id) && entry.seen < since) {
        map.delete(id);
        removed++;
      }
    }
    if (removed) list.added(); // the order and the page change as for an addition
    return removed;
  }

  function onPrediction(message) {
    const result = message.FlowPrediction;
    if (!result) return;
    const entry = flow(result.flow_key);
    const meta = result.metadata || {};
    const forecast = {
      base: meta.base_timestamp,
      target: meta.target_timestamp,
      mean: result.predicted_context[LATENCY],
      lower: result.lower[LATENCY],
      upper: result.upper[LATENCY],
      confidence: result.confidence,
    };
    entry.forecast = forecast;
    entry.history.push(forecast);
    if (entry.history.length > (entry.key === chosen.key ? CHART_POINTS : FORECASTS_KEPT)) entry.history.shift();
    if (model.version !== result.model_version || model.kind !== result.model_used) {
      model = { kind: result.model_used, version: result.model_version };
      touch('header');
    }
    flowList.changed(entry.key);
    if (entry.key === chosen.key) refreshChosen(); // its newest observation, which the message lacks
  }

  async function loadFlows() {
    const since = performance.now();
    const listed = new Set();
    let after = null;
    do {
      const query = new URLSearchParams({ limit: String(LIST_PAGE) });
      if (after) query.set('after', after);
      const page = await api(`v1/flows?${query}`);
      for (const item of page.flows) {
        const entry = flow(item.flow_key);
        entry.route = item.route_id;
        listed.add(item.flow_key);
      }
      after = page.next;
    } while (after);
    if (forget(flows, listed, since, flowList) && chosen.key && !flows.has(chosen.key)) {
      $('detail-title').textContent = `Flow ${chosen.key} (expired: no observation for the flows' TTL)`;
    }
  }

  // ---- the chosen flow --------------------------------------------------------------------------
  function choose(key) {
    if (chosen.key === key) return;
    const previous = chosen.key;
    Object.assign(chosen, { key, actual: new Map(), score: null, route: null });
    if (previous) flowList.changed(previous);
    flowList.changed(key);
    groupList.refresh();
    $('detail-title').textContent = `Flow ${key}`;
    refreshChosen();
    touch('chart');
  }

  // one request at a time; a prediction arriving meanwhile asks for one more after it. The whole window
  // each time: forecasts are coalesced under load, so one may follow several observations
  async function refreshChosen() {
    if (chosen.loading) {
      chosen.again = true;
      return;
    }
    const key = chosen.key;
    chosen.loading = true;
    try {
      const summary = await api(`v1/flows/${key}?contexts=true`);
      if (chosen.key !== key) return;
      for (const context of summary.contexts || [summary.newest]) {
        chosen.actual.set(context.timestamp, context.features[LATENCY]);
      }
      if (chosen.actual.size > CHART_POINTS) {
        const old = [...chosen.actual.keys()].sort((a, b) => a - b).slice(0, chosen.actual.size - CHART_POINTS);
        old.forEach((t) => chosen.actual.delete(t));
      }
      chosen.score = summary.score;
      chosen.route = summary.route_id;
      flow(key).route = summary.route_id;
      touch('chart');
    } catch (error) {
      console.warn(String(error)); // a flow that expired meanwhile: it stays chosen, and empty
    } finally {
      chosen.loading = false;
      if (chosen.again) {
        chosen.again = false;
        refreshChosen();
      }
    }
  }

  let chart = null;

  function chartData() {
    // each forecast is drawn at the observation it forecast: the first one after its window's newest
    const times = [...chosen.actual.keys()].sort((a, b) => a - b);
    const byBase = new Map();
    for (const f of flows.get(chosen.key)?.history ?? []) byBase.set(f.base, f);
    const x = [], actual = [], mean = [], lower = [], upper = [];
    const push = (t, a, f) => {
      x.push(t / 1000);
      actual.push(a);
      mean.push(f ? f.mean : null);
      lower.push(f ? f.lower : null);
      upper.push(f ? f.upper : null);
    };
    for (let i = 0; i < times.length; i++) {
      push(times[i], chosen.actual.get(times[i]), i > 0 ? byBase.get(times[i - 1]) : undefined);
    }
    const pending = times.length ? byBase.get(times[times.length - 1]) : undefined;
    if (pending && Number.isFinite(pending.target)) push(pending.target, null, pending);
    return [x, actual, mean, lower, upper];
  }

  function makeChart() {
    const box = $('chart');
    const opts = {
      width: Math.max(300, box.clientWidth),
      height: 320,
      scales: { x: { time: true } },
      axes: [{}, { label: 'latency (ms)' }],
      series: [
        { label: 'time' },
        { label: 'actual', stroke: '#1b1f24', width: 2, spanGaps: true },
        { label: 'forecast', stroke: '#0550ae', width: 2, dash: [6, 4], spanGaps: true },
        { label: 'interval low', stroke: 'rgba(5, 80, 174, 0.35)', width: 1, spanGaps: true },
        { label: 'interval high', stroke: 'rgba(5, 80, 174, 0.35)', width: 1, spanGaps: true },
      ],
      bands: [{ series: [4, 3], fill: 'rgba(5, 80, 174, 0.12)' }],
    };
    chart = new uPlot(opts, [[], [], [], [], []], box);
    new ResizeObserver(() => chart.setSize({ width: Math.max(300, box.clientWidth), height: 320 })).observe(box);
  }

  function drawChart() {
    if (!chosen.key) return;
    if (!chart) makeChart();
    const data = chartData();
    chart.setData(data);
    const n = data[0].length;
    const last = flows.get(chosen.key)?.forecast; // none once the flow expired
    const newest = [...chosen.actual.entries()].sort((a, b) => b[0] - a[0])[0];
    $('f-route').textContent = chosen.route || '–';
    $('f-actual').textContent = newest ? `${fmt(newest[1])} ms at ${timeText(newest[0])}` : '–';
    $('f-forecast').textContent = last
      ? `${fmt(last.mean)} ms (interval ${fmt(last.lower)}–${fmt(last.upper)} ms)` : '–';
    $('f-confidence').textContent = last ? pct(last.confidence) : '–';
    $('f-score').textContent = scoreText(chosen.score);
    $('chart').setAttribute('aria-label', `Latency of flow ${shortKey(chosen.key)}: ${n} points; newest actual `
      + `${newest ? fmt(newest[1]) : 'none'} ms; newest forecast ${last ? fmt(last.mean) : 'none'} ms, interval `
      + `${last ? `${fmt(last.lower)} to ${fmt(last.upper)}` : 'none'} ms. The table below lists the points.`);
    if ($('chart-table-box').open) drawChartTable(data);
    $('chart').dataset.points = String(data[1].filter((v) => v != null).length);
  }

  function drawChartTable([x, actual, mean, lower, upper]) {
    const body = $('chart-rows');
    const rows = [];
    for (let i = x.length - 1; i >= 0 && rows.length < TABLE_ROWS; i--) {
      const tr = document.createElement('tr');
      const inside = actual[i] == null || lower[i] == null ? '–'
        : (actual[i] >= lower[i] && actual[i] <= upper[i] ? 'yes' : 'no');
      const cells = [
        timeText(x[i] * 1000) + (actual[i] == null ? ' (forecast ahead)' : ''),
        fmt(actual[i]), fmt(mean[i]), lower[i] == null ? '–' : `${fmt(lower[i])}–${fmt(upper[i])}`, inside,
      ];
      for (const text of cells) {
        const td = document.createElement('td');
        td.textContent = text;
        tr.append(td);
      }
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }
  $('chart-table-box').addEventListener('toggle', () => touch('chart'));

  function scoreText(score) {
    if (!score || !score.scored) return 'not scored yet';
    const ratio = score.ratio ?? (score.persistence_mae_ms ? score.mae_ms / score.persistence_mae_ms : null);
    const verdict = ratio == null ? '' : ratio < 1 ? ', better than persistence' : ', not better than persistence';
    return `MAE ${fmt(score.mae_ms, 2)} ms vs ${fmt(score.persistence_mae_ms, 2)} ms (ratio ${fmt(ratio, 2)}${verdict}; `
      + `${score.scored} scored)`;
  }

  // ---- paged, searchable lists ------------------------------------------------------------------
  /* A table showing one page of a filtered, sorted list of keys; its rows are built once and refilled.
   * Up and Down move the focus between rows, Page Up and Page Down between pages. */
  function pagedList({ name, ids, matches, fillRow, rowCount = PAGE_SIZE }) {
    const tbody = $(`${name}-rows`);
    const search = $(`${name}-search`);
    const status = $(`${name}-status`);
    const prev = $(`${name}-prev`);
    const next = $(`${name}-next`);
    let order = []; // every key, sorted
    let orderStale = true;
    let filtered = [];
    let filterStale = true;
    let page = 0;
    let onPage = new Set();
    const rows = [];
    for (let i = 0; i < rowCount; i++) {
      const tr = document.createElement('tr');
      tr.hidden = true;
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);

    const list = {
      added() { orderStale = true; touch(name); },
      changed(key) { if (onPage.has(key)) touch(name); },
      refresh() { touch(name); },
      draw() {
        if (orderStale) {
          order = ids().sort();
          orderStale = false;
          filterStale = true;
        }
        if (filterStale) {
          const needle = search.value.trim().toLowerCase();
          filtered = needle ? order.filter((id) => matches(id, needle)) : order;
          filterStale = false;
        }
        const pages = Math.max(1, Math.ceil(filtered.length / rowCount));
        page = Math.min(page, pages - 1);
        const shown = filtered.slice(page * rowCount, (page + 1) * rowCount);
        onPage = new Set(shown);
        rows.forEach((tr, i) => {
          tr.hidden = i >= shown.length;
          if (i < shown.length) fillRow(tr, shown[i]);
        });
        const first = filtered.length ? page * rowCount + 1 : 0;
        const text = `${first}–${page * rowCount + shown.length} of ${filtered.length} ${name}s`
          + (filtered.length !== order.length ? ` (of ${order.length})` : '') + `, page ${page + 1} of ${pages}`;
        if (status.textContent !== text) status.textContent = text;
        prev.disabled = page === 0;
        next.disabled = page >= pages - 1;
        return shown;
      },
      shown() { return onPage; },
    };
    const go = (delta) => {
      page = Math.max(0, page + delta);
      touch(name);
    };
    search.addEventListener('input', () => { filterStale = true; page = 0; touch(name); });
    prev.addEventListener('click', () => go(-1));
    next.addEventListener('click', () => go(1));
    tbody.addEventListener('keydown', (event) => {
      const buttons = [...tbody.querySelectorAll('tr:not([hidden]) button.row')];
      const at = buttons.indexOf(document.activeElement);
      if (at < 0) return;
      let target = null;
      if (event.key === 'ArrowDown') target = buttons[at + 1];
      else if (event.key === 'ArrowUp') target = buttons[at - 1];
      else if (event.key === 'Home') target = buttons[0];
      else if (event.key === 'End') target = buttons[buttons.length - 1];
      else if (event.key === 'PageDown' || event.key === 'PageUp') {
        go(event.key === 'PageDown' ? 1 : -1);
        requestAnimationFrame(() => requestAnimationFrame(() => {
          const first = tbody.querySelector('tr:not([hidden]) button.row');
          if (first) first.focus();
        }));
        event.preventDefault();
        return;
      }
      if (target) {
        target.focus();
        event.preventDefault();
      }
    });
    return list;
  }

  function cell(tr, i) {
    while (tr.cells.length <= i) tr.insertCell();
    return tr.cells[i];
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function rowButton(td, label, onClick) {
    let button = td.firstElementChild;
    if (!button) {
      button = document.createElement('button');
      button.type = 'button';
      button.className = 'row';
      button.addEventListener('click', () => onClick(button.dataset.id));
      td.append(button);
    }
    return button;
  }

  const flowList = pagedList({
    name: 'flow',
    ids: () => [...flows.keys()],
    matches: (key, needle) => key.includes(needle) || (flows.get(key).route || '').toLowerCase().includes(needle),
    fillRow(tr, key) {
      const entry = flows.get(key);
      const button = rowButton(cell(tr, 0), key, choose);
      button.dataset.id = key;
      setText(button, shortKey(key));
      button.setAttribute('aria-label', `Flow ${key}${entry.route ? `, route ${entry.route}` : ''}`);
      const current = key === chosen.key;
      tr.setAttribute('aria-current', String(current));
      button.setAttribute('aria-pressed', String(current));
      setText(cell(tr, 1), entry.route || '–');
      const f = entry.forecast;
      setText(cell(tr, 2), f ? `${fmt(f.mean)} ms` : '–');
      setText(cell(tr, 3), f ? pct(f.confidence) : '–');
    },
  });

  // ---- route groups -----------------------------------------------------------------------------
  const RISK_HIGH = 0.5;
  const RISK_ELEVATED = 0.2;

  function group(id) {
    let entry = groups.get(id);
    if (entry === undefined) {
      entry = { id, flowKey: null, best: null, weights: {}, routes: [], risk: {}, openBreakers: [], stale: true,
        loading: false, seen: 0 };
      groups.set(id, entry);
      groupList.added();
    }
    entry.seen = performance.now();
    return entry;
  }

  async function loadGroups() {
    const since = performance.now();
    const listed = new Set();
    let after = null;
    do {
      const query = new URLSearchParams({ limit: String(LIST_PAGE) });
      if (after) query.set('after', after);
      let page;
      try {
        page = await api(`v1/groups?${query}`);
      } catch (error) {
        $('group-status').textContent = `route groups unavailable (${error.message})`;
        return;
      }
      for (const item of page.groups) {
        const entry = group(item.group_id);
        entry.flowKey = item.flow_key;
        entry.best = item.best;
        listed.add(item.group_id);
      }
      after = page.next;
    } while (after);
    forget(groups, listed, since, groupList);
  }

  // a group's definition and choice, fetched when it is on screen and a message says it changed
  async function loadGroup(entry) {
    entry.loading = true;
    entry.stale = false;
    try {
      const answer = await api(`v1/groups/${encodeURIComponent(entry.id)}`);
      entry.flowKey = answer.flow_key;
      entry.best = answer.best;
      entry.weights = answer.weights || {};
      entry.routes = answer.routes || [];
      entry.openBreakers = answer.open_breakers || [];
      entry.risk = {};
      for (const r of answer.ranking || []) entry.risk[r.route_id] = r.failure_probability;
    } catch (error) {
      console.warn(String(error));
    } finally {
      entry.loading = false;
      if (entry.stale) setTimeout(() => groupList.refresh(), 250); // changed meanwhile: fetch once more
      groupList.changed(entry.id);
    }
  }

  // a routing message is the Rust enum's serde form, {"<type>": {...}}, its group_id beside the type's fields
  function onRouting(message) {
    const type = Object.keys(message)[0];
    const body = message[type];
    if (!body || body.group_id == null) return; // not a group's: POST /v1/routing/recommend's callers'
    const entry = group(body.group_id);
    if (type === 'RoutingPrediction' && body.routing_suggestions && body.routing_suggestions.length) {
      entry.best = body.routing_suggestions[0].route_id;
    } else if (type === 'LoadBalancingUpdate') {
      entry.weights = body.service_weights || {};
    } else if (type === 'CircuitBreakerPrediction') {
      entry.risk[body.service_id] = body.failure_probability;
    }
    entry.stale = true; // the open breakers: what GET /v1/groups/{id} answers
    groupList.changed(entry.id);
  }

  function riskText(entry, routeId) {
    const p = entry.risk[routeId];
    if (entry.openBreakers.includes(routeId)) return ['breaker open', `${pct(p)} failure risk`, 'risk-open'];
    if (p == null) return ['breaker closed', 'risk not known yet', 'risk-low'];
    const level = p >= RISK_HIGH ? 'high' : p >= RISK_ELEVATED ? 'elevated' : 'low';
    return ['breaker closed', `${pct(p)} failure risk (${level})`, `risk-${level}`];
  }

  const groupList = pagedList({
    name: 'group',
    rowCount: 10,
    ids: () => [...groups.keys()],
    matches: (id, needle) => id.toLowerCase().includes(needle)
      || groups.get(id).routes.some((r) => r.route_id.toLowerCase().includes(needle)),
    fillRow(tr, id) {
      const entry = groups.get(id);
      if (entry.stale && !entry.loading) loadGroup(entry);
      setText(cell(tr, 0), id);
      const choice = cell(tr, 1);
      setText(choice, entry.best || 'none yet');
      choice.dataset.group = id;
      const routes = cell(tr, 2);
      const lines = (entry.routes.length ? entry.routes : Object.keys(entry.weights).map((route_id) => ({ route_id })))
        .map((route) => {
          const line = document.createElement('span');
          line.className = 'route';
          const [state, risk, css] = riskText(entry, route.route_id);
          const weight = entry.weights[route.route_id];
          const label = `${route.route_id}${route.route_id === entry.best ? ' (chosen)' : ''}: `
            + `weight ${weight == null ? '–' : pct(weight)}, ${state}, ${risk}`;
          if (route.flow_key) {
            const button = document.createElement('button');
            button.type = 'button';
            button.textContent = route.route_id;
            button.setAttribute('aria-label', `Chart route ${route.route_id}'s flow`);
            button.addEventListener('click', () => choose(route.flow_key));
            line.append(button);
          } else {
            line.append(route.route_id);
          }
          const text = document.createElement('span');
          text.className = css;
          text.textContent = label.slice(route.route_id.length);
          line.append(text);
          line.dataset.text = label;
          return line;
        });
      const signature = lines.map((line) => line.dataset.text).join('\n');
      if (routes.dataset.signature !== signature) {
        routes.dataset.signature = signature;
        routes.replaceChildren(...lines);
      }
      tr.setAttribute('aria-current', String(entry.routes.some((r) => r.flow_key === chosen.key)));
    },
  });

  // ---- the header: model, live score, streams ---------------------------------------------------
  let stats = null;

  async function loadStats() {
    try {
      stats = await api('v1/stats');
      touch('header');
    } catch (error) {
      console.warn(String(error));
    }
  }

  function drawHeader() {
    const kind = model.kind || (stats && stats.default_model);
    const version = model.version || (stats && kind && stats.models[kind]);
    setText($('model'), kind ? (version && version.startsWith(kind) ? version : `${kind} ${version || ''}`.trim()) : '–');
    const scores = stats && stats.forecasts && stats.forecasts.scores;
    let text = 'not scored yet';
    const score = $('score');
    score.className = '';
    if (scores && kind && scores.forecasters[kind] && scores.forecasters.persistence) {
      const mine = scores.forecasters[kind].mae_ms;
      const persistence = scores.forecasters.persistence.mae_ms;
      const ratio = scores.ratio_to_persistence[kind];
      if (mine != null && persistence != null) {
        text = `MAE ${fmt(mine, 2)} ms vs persistence ${fmt(persistence, 2)} ms (ratio ${fmt(ratio, 2)}: `
          + `${ratio < 1 ? 'better' : 'not better'})`;
        score.className = ratio < 1 ? 'better' : 'worse';
      }
    }
    setText(score, text);
    const down = sockets.filter((s) => !s.open).map((s) => s.name);
    const connection = $('connection');
    const skipped = inboxDropped ? ` (${inboxDropped} updates skipped: the page fell behind)` : '';
    setText(connection, (down.length ? `reconnecting (${down.join(', ')})` : 'live') + skipped);
    connection.className = down.length ? 'state-down' : 'state-live';
  }

  // ---- drawing, once per frame ------------------------------------------------------------------
  // handles what arrived, for at most a frame's budget; whether some are left for the next frame
  function handleInbox() {
    const until = performance.now() + INBOX_MS_PER_FRAME;
    while (inboxHead < inbox.length) {
      const [entry, text] = inbox[inboxHead];
      inbox[inboxHead++] = undefined;
      const message = JSON.parse(text);
      if (message.op === undefined) entry.onMessage(message);
      else if (message.op === 'error') console.warn(`${entry.name}: ${message.detail}`);
      if (performance.now() > until) break; // checked after each: a message can take a while on a busy CPU
    }
    if (inboxHead >= inbox.length) {
      inbox.length = 0;
      inboxHead = 0;
      return false;
    }
    if (inboxHead > 4096) {
      inbox.splice(0, inboxHead);
      inboxHead = 0;
    }
    return true;
  }

  function draw() {
    frameRequested = false;
    // first, so that what the messages change is drawn in this same frame
    const more = dirty.has('inbox') && handleInbox();
    const what = new Set(dirty);
    dirty.clear();
    if (more) touch('inbox');
    if (what.has('flow')) flowList.draw();
    if (what.has('group')) groupList.draw();
    if (what.has('chart')) drawChart();
    if (what.has('header')) drawHeader();
  }

  // ---- start ------------------------------------------------------------------------------------
  async function start() {
    touch('flow');
    touch('group');
    touch('header');
    await api('v1/flows?limit=1'); // asks for a key first, if the service wants one
    stream('predictions', 'v1/stream/predictions', { op: 'subscribe' }, onPrediction);
    stream('routing', 'v1/stream/routing', { op: 'subscribe' }, onRouting);
    await Promise.all([loadFlows(), loadGroups(), loadStats()]);
    setInterval(loadStats, STATS_EVERY_MS);
    setInterval(() => loadFlows().catch((error) => console.warn(String(error))), LISTS_EVERY_MS);
    setInterval(loadGroups, LISTS_EVERY_MS);
    const wanted = new URLSearchParams(location.search).get('flow');
    if (wanted && flows.has(wanted)) choose(wanted);
    document.body.dataset.ready = 'true';
  }

  start();
})();

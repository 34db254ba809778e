// llmspool operator console: polls /admin/console/state and draws models, workers, queues,
// batches and recent requests. Plain DOM and SVG, no dependencies; every text from the server is
// set with textContent, never parsed as HTML.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const POLL_MS = Math.max(250, Number(params.get("interval")) || 1000);
  const SLOW_EVERY = 2; // batches and requests: every second poll
  const HISTORY_S = 180; // backlog seen by this page
  const KEY_STORE = "llmspool.adminKey";

  const page = { paused: false, ticks: 0, features: {}, history: new Map(), cards: new Map(), timer: 0 };

  // ------------------------------------------------------------------ DOM helpers
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else if (name === "dataset") Object.assign(el.dataset, value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }
  const svg = (tag, attrs) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    return el;
  };
  const byId = (id) => document.getElementById(id);
  const num = (v, digits = 0) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
  const ago = (seconds) => {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
    return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  };
  const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });

  // ------------------------------------------------------------------ talking to the API
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }
  async function api(path, options = {}) {
    const headers = { accept: "application/json", ...(options.headers || {}) };
    const key = localStorage.getItem(KEY_STORE);
    if (key) headers.authorization = `Bearer ${key}`;
    if (options.json !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(path, {
      method: options.method || "GET",
      headers,
      body: options.json !== undefined ? JSON.stringify(options.json) : undefined,
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = body && body.error ? body.error.message : `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, message);
    }
    return body;
  }
  function notify(message, ok) {
    const box = byId("notice");
    box.textContent = message;
    box.className = ok ? "notice ok" : "notice";
    box.hidden = false;
    clearTimeout(notify.timer);
    notify.timer = setTimeout(() => { box.hidden = true; }, ok ? 4000 : 8000);
  }
  async function act(label, path, json) {
    try {
      await api(path, { method: "POST", json: json === undefined ? {} : json });
      notify(`${label}: done`, true);
      schedule(0);
    } catch (error) {
      notify(`${label}: ${error.message}`, false);
    }
  }
  function setStatus(state, text) {
    const el = byId("status");
    el.dataset.state = state;
    el.textContent = text;
  }

  // ------------------------------------------------------------------ charts
  // A line chart of `series` (arrays of numbers or null, same length), scaled to their max.
  function chart(series, colors) {
    const W = 300, H = 64, pad = 3;
    const all = series.flat().filter((v) => v !== null && v !== undefined);
    const max = all.length ? Math.max(...all, 1e-9) : null;
    const el = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
    for (let y = 1; y < 4; y++) {
      el.append(svg("line", { x1: 0, x2: W, y1: (H * y) / 4, y2: (H * y) / 4, stroke: "#21262d", "stroke-width": 1 }));
    }
    series.forEach((values, i) => {
      if (max === null) return;
      const step = values.length > 1 ? W / (values.length - 1) : W;
      let run = [];
      const flush = () => {
        if (run.length === 1) {
          el.append(svg("circle", { cx: run[0][0], cy: run[0][1], r: 2.2, fill: colors[i] }));
        } else if (run.length > 1) {
          const points = run.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
          if (i === 0) {
            const area = `${run[0][0].toFixed(1)},${H} ${points} ${run[run.length - 1][0].toFixed(1)},${H}`;
            el.append(svg("polygon", { points: area, fill: colors[i], "fill-opacity": 0.15 }));
          }
          el.append(svg("polyline", { points, fill: "none", stroke: colors[i], "stroke-width": 1.6, "vector-effect": "non-scaling-stroke" }));
        }
        run = [];
      };
      values.forEach((v, j) => {
        if (v === null || v === undefined) flush();
        else run.push([j * step, H - pad - (v / max) * (H - 2 * pad)]);
      });
      flush();
    });
    return { el, max };
  }
  function chartBox(title, now, series, colors, fmt, span) {
    const { el, max } = chart(series, colors);
    return h("div", { class: "chart", dataset: { chart: title } },
      h("div", { class: "title" }, h("span", {}, title), h("span", { class: "now" }, now)),
      el,
      h("div", { class: "title" }, h("span", {}, `last ${ago(span)}`), h("span", {}, max === null ? "no data" : `peak ${fmt(max)}`)));
  }

  // ------------------------------------------------------------------ models
  function remember(model, now) {
    const list = page.history.get(model.name) || [];
    const q = model.queue;
    list.push({ t: now, waiting: q.lag, flight: q.pending, workers: model.workers.length });
    while (list.length && list[0].t < now - HISTORY_S) list.shift();
    page.history.set(model.name, list);
    return list;
  }

  function card(model) {
    let c = page.cards.get(model.name);
    if (c) return c;
    const pin = h("input", { type: "number", min: 0, max: model.max_workers, value: model.pin ?? model.workers.length, "aria-label": "workers", dataset: { role: "pin-count" } });
    const scale = h("div", { class: "scale", dataset: { role: "scale" } },
      "workers", pin,
      h("button", { type: "button", dataset: { action: "pin" }, onclick: () => act(`pin ${model.name} to ${pin.value}`, `/admin/models/${encodeURIComponent(model.name)}/scale`, { workers: Number(pin.value) }) }, "pin"),
      h("button", { type: "button", dataset: { action: "auto" }, onclick: () => act(`${model.name} back to auto`, `/admin/models/${encodeURIComponent(model.name)}/scale`, { auto: true }) }, "auto"));
    const head = h("div", { class: "model-head" },
      h("h2", {}, model.name), h("span", { class: "pill" }, model.backend),
      h("span", { class: "pill", dataset: { field: "pool" } }),
      h("span", { class: "badge error", dataset: { field: "offline" }, hidden: true }, "offline"), scale);
    const body = h("div", {});
    const el = h("article", { class: "model", dataset: { model: model.name } }, head, body);
    byId("models").append(el);
    c = { el, body, scale, pool: head.querySelector('[data-field="pool"]'), offline: head.querySelector('[data-field="offline"]') };
    page.cards.set(model.name, c);
    return c;
  }

  function stat(label, value, field, level) {
    return h("div", { class: `stat ${level || ""}` },
      h("div", { class: "label" }, label), h("div", { class: "value", dataset: { field } }, value));
  }

  function renderModel(model, now, controller) {
    const c = card(model);
    const q = model.queue;
    const [requests, batch] = q.streams;
    const hist = remember(model, now);
    const desired = model.desired === null ? "n/a" : model.desired;
    const mode = model.pin !== null ? `pinned to ${model.pin}` : controller ? `auto (${controller})` : "auto (no control loop)";
    c.pool.textContent = `${model.workers.length} live / ${desired} desired · min ${model.min_workers} max ${model.max_workers} · ${mode}`;
    c.pool.dataset.mode = model.pin !== null ? "pinned" : "auto";
    c.offline.hidden = !model.offline;
    c.scale.hidden = !page.features.scale;
    const s = model.series;
    const span = s.step * s.ttft_ms.length;
    const seen = hist.length ? now - hist[0].t : 0;
    const last = (arr) => { for (let i = arr.length - 1; i >= 0; i--) if (arr[i] !== null) return arr[i]; return null; };
    const capacity = model.workers.reduce((a, w) => a + w.capacity, 0);
    const inFlight = model.workers.reduce((a, w) => a + w.in_flight, 0);
    c.body.replaceChildren(
      h("div", { class: "stats" },
        stat("waiting", requests.lag, "lag", requests.lag > 0 ? "warn" : ""),
        stat("in flight", requests.pending, "pending"),
        stat("backlog", q.backlog, "backlog", q.backlog > capacity && capacity > 0 ? "warn" : ""),
        stat("oldest waits", q.oldest_age === null ? "–" : ago(q.oldest_age), "oldest", q.oldest_age > 10 ? "warn" : ""),
        stat("batch waiting", batch.lag, "batch-lag"),
        stat("dead", q.dead, "dead", q.dead > 0 ? "bad" : ""),
        stat("workers", `${model.workers.length} / ${desired}`, "workers"),
        stat("slots busy", `${inFlight} / ${capacity}`, "slots")),
      h("div", { class: "charts" },
        chartBox("backlog (waiting, in flight)", `${q.backlog}`,
          [hist.map((p) => p.waiting + p.flight), hist.map((p) => p.flight)], ["#d29922", "#58a6ff"], (v) => num(v), seen),
        chartBox("TTFT ms, queue incl.", `${num(last(s.ttft_ms), 1)} ms`, [s.ttft_ms], ["#bc8cff"], (v) => `${num(v, 1)} ms`, span),
        chartBox("tokens / s", num(s.tokens_per_s[s.tokens_per_s.length - 1], 1), [s.tokens_per_s], ["#3fb950"], (v) => num(v, 1), span),
        chartBox("requests / s", num(s.requests_per_s[s.requests_per_s.length - 1], 1), [s.requests_per_s], ["#58a6ff"], (v) => num(v, 1), span)),
      workersTable(model, now),
      deadTable(model) || "");
  }

  function workersTable(model, now) {
    if (!model.workers.length) return h("p", { class: "muted" }, "no live workers (requests wait in the stream until one starts)");
    const rows = model.workers.map((w) => h("tr", { dataset: { worker: w.id } },
      h("td", {}, h("code", {}, w.id)), h("td", {}, w.backend), h("td", {}, w.host), h("td", { class: "num" }, w.pid),
      h("td", {}, h("span", { class: `badge ${w.state}` }, w.state)),
      h("td", {}, bar(w.in_flight, w.capacity, `${w.in_flight} / ${w.capacity}`)),
      h("td", { class: "num" }, ago(now - w.started)), h("td", { class: "num" }, ago(now - w.last_beat)),
      h("td", {}, page.features.drain
        ? h("button", { type: "button", class: "danger", dataset: { action: "drain" }, onclick: () => act(`drain ${w.id}`, `/admin/workers/${encodeURIComponent(w.id)}/drain`) }, "drain")
        : null)));
    return h("div", {}, h("h3", {}, "Workers"), h("table", {},
      h("thead", {}, h("tr", {}, ["id", "backend", "host", "pid", "state", "in flight", "up", "beat", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)));
  }

  function deadTable(model) {
    const q = model.queue;
    if (!model.dead_recent.length) return null;
    const rows = model.dead_recent.map((d) => h("tr", { dataset: { dead: d.id } },
      h("td", {}, h("code", {}, d.id)), h("td", {}, h("code", {}, d.fields.request_id || "")),
      h("td", { class: "ellipsis", title: d.fields.error || "" }, d.fields.error || d.fields.last_error || ""),
      h("td", {}, page.features.requeue
        ? h("button", { type: "button", dataset: { action: "requeue" }, onclick: () => act(`requeue ${d.id}`, `/admin/models/${encodeURIComponent(model.name)}/dead/${encodeURIComponent(d.id)}/requeue`) }, "requeue")
        : null)));
    return h("div", {}, h("h3", {}, `Dead jobs (newest ${model.dead_recent.length} of ${q.dead})`), h("table", {},
      h("thead", {}, h("tr", {}, ["entry", "request", "last error", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)));
  }

  function bar(done, total, label, failed) {
    const pct = total > 0 ? Math.min(100, (100 * done) / total) : 0;
    const failPct = total > 0 && failed ? Math.min(100, (100 * failed) / total) : 0;
    return h("div", { class: "bar", role: "progressbar", "aria-valuenow": done, "aria-valuemax": total },
      h("span", { style: `width:${pct.toFixed(1)}%` }),
      failPct ? h("span", { class: "fail", style: `left:${(pct - failPct).toFixed(1)}%;width:${failPct.toFixed(1)}%` }) : null,
      h("em", {}, label));
  }

  // ------------------------------------------------------------------ batches
  const ACTIVE_BATCH = new Set(["validating", "in_progress", "finalizing"]);
  async function renderBatches() {
    const box = byId("batches");
    if (!page.features.batches) {
      box.replaceChildren(h("p", { class: "muted" }, "not available: this API does not serve /v1/batches"));
      return;
    }
    const list = await api("/v1/batches?limit=20");
    if (!list.data.length) { box.replaceChildren(h("p", { class: "muted" }, "no batches yet")); return; }
    const rows = list.data.map((b) => {
      const n = b.request_counts || { total: 0, completed: 0, failed: 0 };
      const done = n.completed + n.failed;
      return h("tr", { dataset: { batch: b.id, status: b.status } },
        h("td", {}, h("code", {}, b.id)), h("td", {}, h("span", { class: `badge ${b.status}` }, b.status)),
        h("td", {}, b.endpoint || ""),
        h("td", { style: "width:40%" }, bar(done, n.total, `${done} / ${n.total}${n.failed ? ` (${n.failed} failed)` : ""}`, n.failed)),
        h("td", {}, b.created_at ? clock(b.created_at) : ""),
        h("td", {}, page.features.cancel_batch && ACTIVE_BATCH.has(b.status)
          ? h("button", { type: "button", class: "danger", dataset: { action: "cancel-batch" }, onclick: () => act(`cancel ${b.id}`, `/v1/batches/${encodeURIComponent(b.id)}/cancel`) }, "cancel")
          : null));
    });
    box.replaceChildren(h("table", {},
      h("thead", {}, h("tr", {}, ["batch", "status", "endpoint", "progress", "created", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)));
  }

  // ------------------------------------------------------------------ request log
  async function renderRequests() {
    const box = byId("requests");
    if (!page.features.requests) {
      box.replaceChildren(h("p", { class: "muted" }, "not available: this API has no request log route"));
      return;
    }
    const list = await api("/admin/requests?limit=25");
    const records = list.data || [];
    if (!records.length) { box.replaceChildren(h("p", { class: "muted" }, "no requests logged yet")); return; }
    const ms = (s) => (s === null || s === undefined ? "–" : `${(1000 * s).toFixed(0)}`);
    const rows = records.map((r) => h("tr", { dataset: { request: r.request_id } },
      h("td", {}, r.time ? clock(r.time) : ""), h("td", {}, h("code", {}, r.request_id)), h("td", {}, r.model),
      h("td", {}, h("code", {}, r.worker || "")),
      h("td", {}, h("span", { class: `badge ${r.outcome === "ok" || r.outcome === "stop" || r.outcome === "length" ? "ok" : "error"}` }, r.outcome || "")),
      h("td", { class: "num" }, ms(r.queue_time)), h("td", { class: "num" }, ms(r.ttft)), h("td", { class: "num" }, ms(r.total_time)),
      h("td", { class: "num" }, r.completion_tokens ?? ""),
      h("td", { class: "feedback" }, page.features.feedback ? feedback(r) : null)));
    box.replaceChildren(h("table", {},
      h("thead", {}, h("tr", {}, ["time", "request", "model", "worker", "outcome", "queue ms", "TTFT ms", "total ms", "tokens", "feedback"]
        .map((t) => h("th", { class: t.endsWith("ms") || t === "tokens" ? "num" : null }, t)))),
      h("tbody", {}, rows)));
  }
  function feedback(record) {
    const send = (rating) => act(`feedback on ${record.request_id}`, "/v1/feedback", { request_id: record.request_id, rating });
    const given = record.feedback ? record.feedback.rating : null;
    return [
      h("button", { type: "button", title: "good", class: given > 0 ? "chosen" : null, dataset: { action: "feedback-up" }, onclick: () => send(1) }, "+1"),
      " ",
      h("button", { type: "button", title: "bad", class: given < 0 ? "chosen" : null, dataset: { action: "feedback-down" }, onclick: () => send(-1) }, "−1"),
    ];
  }

  // ------------------------------------------------------------------ the loop
  async function tick() {
    try {
      const state = await api("/admin/console/state");
      page.features = state.features;
      state.models.forEach((m) => renderModel(m, state.now, state.controller));
      const names = new Set(state.models.map((m) => m.name));
      for (const [name, c] of page.cards) if (!names.has(name)) { c.el.remove(); page.cards.delete(name); }
      if (page.ticks % SLOW_EVERY === 0) {
        await Promise.all([renderBatches(), renderRequests()].map((p) => p.catch((e) => notify(e.message, false))));
      }
      page.ticks += 1;
      if (state.registry_error) setStatus("error", `registry down · ${state.registry_error}`);
      else setStatus("live", `live · ${clock(state.now)}`);
      document.body.dataset.ticks = String(page.ticks);
    } catch (error) {
      const auth = error.status === 401 || error.status === 403;
      setStatus("error", auth ? "admin key needed" : `unreachable: ${error.message}`);
    }
    if (!page.paused) schedule(POLL_MS);
  }
  function schedule(ms) {
    clearTimeout(page.timer);
    page.timer = setTimeout(tick, ms);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const key = byId("admin-key");
    key.value = localStorage.getItem(KEY_STORE) || "";
    byId("key-form").addEventListener("submit", (event) => event.preventDefault());
    key.addEventListener("change", () => {
      if (key.value) localStorage.setItem(KEY_STORE, key.value);
      else localStorage.removeItem(KEY_STORE);
      schedule(0);
    });
    byId("pause").addEventListener("click", (event) => {
      page.paused = !page.paused;
      event.target.textContent = page.paused ? "resume" : "pause";
      if (page.paused) { clearTimeout(page.timer); setStatus("paused", "paused"); } else schedule(0);
    });
    schedule(0);
  });
})();

// The relay's status page. No build step, no external assets. The admin token is typed in
// once, kept in sessionStorage (gone when the tab closes) and sent as a Bearer header by
// fetch; it never goes into a URL. Everything shown is built with textContent.
"use strict";

const TOKEN_KEY = "relay-admin-token";
const REFRESH_MS = 2000;
const RECENT_EVENTS = 50;
// The charts' samples are taken by the relay every RELAY_ADMIN_SAMPLE_INTERVAL (10 s by
// default); the page asks for them at that pace, at least every 5 s and at most every second,
// and redraws only when a new sample has come: a few polylines' `points` set again.
const SERIES_MIN_MS = 1000;
const SERIES_MAX_MS = 5000;
const SVG_NS = "http://www.w3.org/2000/svg";
const CHART_HEIGHT = 90;
const PALETTE = 8; // sink colours: .s0 … .s7 in style.css

let token = sessionStorage.getItem(TOKEN_KEY) || "";
let refreshTimer = null;
let stream = null; // AbortController of the live tail
let lastEventId = null;
const recent = [];
let seriesTimer = null;
let series = null; // the last GET /admin/api/series
let drawn = ""; // which samples the charts show
let lastSinks = null; // the last GET /admin/api/sinks, redrawn when a row opens
const openSinks = new Set(); // sinks whose recent errors are shown
const charts = {};

const $ = (id) => document.getElementById(id);

function headers(extra) {
  return Object.assign({ Authorization: "Bearer " + token }, extra || {});
}

async function api(method, path, body) {
  const init = { method, headers: headers(), cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    disconnect("The relay refused this token.");
    throw new Error("unauthorised");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(data.error || "HTTP " + response.status);
  }
  return data;
}

// -- formatting --------------------------------------------------------------------------------

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " m " + Math.floor(seconds % 60) + " s";
  if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " m";
  return Math.floor(seconds / 86400) + " d " + Math.floor((seconds % 86400) / 3600) + " h";
}

function when(unix) {
  return new Date(unix * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function rate(perSecond) {
  return perSecond >= 100 ? perSecond.toFixed(0) : perSecond.toFixed(1);
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function button(label, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.className = cls;
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await onClick();
      say("");
    } catch (err) {
      if (err.message !== "unauthorised") say(label + " failed: " + err.message);
    } finally {
      b.disabled = false;
      refresh();
    }
  });
  return b;
}

function say(text) {
  $("message").textContent = text;
}

function setStatus(text, cls) {
  $("status").textContent = text;
  $("status").className = "status " + (cls || "");
}

// -- sections ----------------------------------------------------------------------------------

function renderSinks(data) {
  lastSinks = data;
  const body = $("sinks-body");
  body.replaceChildren();
  for (const s of data.sinks) {
    const row = document.createElement("tr");
    row.dataset.sink = s.name;
    cell(row, s.name, "key");
    let state = s.state;
    if (s.paused_reason === "pause_after") state += " (failing too long)";
    if (s.holds_ingest) state += " (holds ingest)";
    cell(row, state, "state " + s.state);
    cell(row, s.pending, "num pending");
    cell(row, age(s.oldest_pending_age), "num");
    cell(row, rate(s.delivery_rate), "num");
    cell(row, s.dead_letters, "num");
    cell(row, s.parked, "num parked");
    cell(row, s.cursor, "num cursor");
    const errors = s.recent_errors || [];
    const open = openSinks.has(s.name);
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "errors" + (errors.length ? " some" : "");
    toggle.textContent = (open ? "▾ " : "▸ ") + errors.length;
    toggle.title = open ? "Hide recent errors" : "Show recent errors";
    toggle.setAttribute("aria-expanded", String(open));
    toggle.addEventListener("click", () => {
      if (openSinks.has(s.name)) openSinks.delete(s.name);
      else openSinks.add(s.name);
      renderSinks(lastSinks);
    });
    cell(row, "", "errors").appendChild(toggle);
    const action = document.createElement("td");
    const path = "/admin/api/sinks/" + encodeURIComponent(s.name);
    action.appendChild(s.paused
      ? button("Resume", "resume", () => api("POST", path + "/resume"))
      : button("Pause", "pause", () => api("POST", path + "/pause")));
    row.appendChild(action);
    body.appendChild(row);
    if (open) body.appendChild(sinkErrors(s.name, errors));
  }
  const log = data.log;
  $("log-summary").textContent =
    log.events + " events in the log, " + (log.bytes / 1048576).toFixed(1) + " MiB" +
    (log.pressure ? " — not accepting events: " + log.pressure : "") +
    (log.blocked_by && log.blocked_by.length ? " (held by " + log.blocked_by.join(", ") + ")" : "") +
    (log.quarantined ? ", " + log.quarantined + " quarantined" : "") +
    (data.orphaned && data.orphaned.length
      ? "; no longer configured: " + data.orphaned.map((o) => o.sink).join(", ") : "");
}

// A sink's row opened: its recent delivery errors, newest first (kept in memory by the
// relay, a few per sink; secrets already taken out).
function sinkErrors(name, errors) {
  const row = document.createElement("tr");
  row.className = "sink-errors";
  row.dataset.sink = name;
  const td = document.createElement("td");
  td.colSpan = 10;
  row.appendChild(td);
  if (!errors.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = "No delivery errors since the relay's delivery process started.";
    td.appendChild(p);
    return row;
  }
  const table = document.createElement("table");
  table.className = "errors";
  const head = document.createElement("tr");
  for (const label of ["when", "what", "seq", "object", "attempts", "error"]) {
    const th = document.createElement("th");
    th.textContent = label;
    head.appendChild(th);
  }
  const body = document.createElement("tbody");
  body.appendChild(head);
  for (const e of errors) {
    const r = document.createElement("tr");
    cell(r, when(e.at));
    cell(r, e.outcome, "state " + e.outcome.replace(/ /g, "-"));
    cell(r, e.seq, "num");
    cell(r, e.bucket === null ? "" : e.bucket + "/" + e.key, "key");
    cell(r, e.attempts, "num");
    cell(r, e.error, "error");
    body.appendChild(r);
  }
  table.appendChild(body);
  td.appendChild(table);
  return row;
}

// -- charts: inline SVG, one polyline per series ---------------------------------------------

function svg(name, attrs) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

function chart(id) {
  if (charts[id]) return charts[id];
  const figure = $(id);
  const top = document.createElement("div");
  top.className = "scale";
  const plot = svg("svg", { height: CHART_HEIGHT, role: "img" });
  const grid = svg("g", { class: "grid" });
  plot.appendChild(grid);
  const times = document.createElement("div");
  times.className = "times";
  const ago = document.createElement("span");
  const now = document.createElement("span");
  now.textContent = "now";
  times.append(ago, now);
  figure.append(top, plot, times);
  charts[id] = { figure, plot, grid, top, ago, lines: new Map() };
  return charts[id];
}

function niceCeil(value) {
  if (!(value > 0)) return 1;
  const step = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 2, 5, 10]) if (m * step >= value) return m * step;
  return 10 * step;
}

function count(value) {
  if (value >= 1e6) return (value / 1e6).toFixed(1) + " M";
  if (value >= 1e4) return (value / 1e3).toFixed(0) + " k";
  return value >= 100 || Number.isInteger(value) ? value.toFixed(0) : value.toFixed(1);
}

// `lines`: [{name, cls, values}], each value at the time of the same index in `at`. The x
// axis ends at the last sample and spans the samples there are: the rings' whole hour once
// they are full, less while the relay has not been up that long (at least 10 samples' worth).
function drawChart(id, data, lines, unit) {
  const c = chart(id);
  const width = Math.max(120, Math.round(c.plot.getBoundingClientRect().width) || 360);
  c.plot.setAttribute("viewBox", "0 0 " + width + " " + CHART_HEIGHT);
  const at = data.at;
  const end = at.length ? at[at.length - 1] : 0;
  const span = Math.min(data.points * data.interval,
    Math.max(10 * data.interval, at.length ? end - at[0] : 0));
  const total = at.map((_, i) => lines.reduce((sum, l) => sum + l.values[i], 0));
  const peak = total.reduce((a, b) => Math.max(a, b), 0);
  const highest = lines.reduce((a, l) => l.values.reduce((m, v) => Math.max(m, v), a), 0);
  const top = niceCeil(highest);
  const x = (t) => (width * (t - (end - span)) / span).toFixed(1);
  const y = (v) => (CHART_HEIGHT - 1 - (CHART_HEIGHT - 4) * v / top).toFixed(1);
  c.grid.replaceChildren(
    svg("line", { x1: 0, x2: width, y1: CHART_HEIGHT - 0.5, y2: CHART_HEIGHT - 0.5, class: "axis" }),
    svg("line", { x1: 0, x2: width, y1: 3.5, y2: 3.5 }),
    svg("line", { x1: 0, x2: width, y1: CHART_HEIGHT / 2, y2: CHART_HEIGHT / 2 }));
  const keep = new Set();
  for (const line of lines) {
    let drawnLine = c.lines.get(line.name);
    if (!drawnLine) {
      drawnLine = { path: svg("polyline", { class: "line " + line.cls }),
        dot: svg("circle", { r: 2.5, class: "dot " + line.cls }) };
      drawnLine.path.dataset.series = line.name;
      c.plot.append(drawnLine.path, drawnLine.dot);
      c.lines.set(line.name, drawnLine);
    }
    const points = new Array(line.values.length);
    for (let i = 0; i < line.values.length; i++) points[i] = x(at[i]) + "," + y(line.values[i]);
    drawnLine.path.setAttribute("points", points.join(" "));
    const last = line.values.length - 1;
    drawnLine.dot.setAttribute("cx", last >= 0 ? x(at[last]) : -10);
    drawnLine.dot.setAttribute("cy", last >= 0 ? y(line.values[last]) : -10);
    keep.add(line.name);
  }
  for (const [name, old] of c.lines) {
    if (!keep.has(name)) {
      old.path.remove();
      old.dot.remove();
      c.lines.delete(name);
    }
  }
  const latest = total.length ? total[total.length - 1] : 0;
  c.top.textContent = count(top) + unit;
  c.ago.textContent = span >= 120 ? "−" + Math.round(span / 60) + " min" : "−" + span.toFixed(0) + " s";
  c.figure.dataset.points = String(at.length);
  c.figure.dataset.latest = String(latest);
  c.figure.dataset.peak = String(peak);
  c.figure.querySelector(".latest").textContent = at.length
    ? "now " + count(latest) + ", highest " + count(peak) : "waiting for the first sample…";
}

function renderSeries(data, force) {
  const key = data.at.length + ":" + (data.at.length ? data.at[data.at.length - 1] : "");
  if (!force && key === drawn) return; // no new sample: nothing to redraw
  drawn = key;
  const colour = (i) => "s" + (i % PALETTE);
  drawChart("chart-ingest", data, [{ name: "ingest", cls: "ingest", values: data.ingest_rate }], "/s");
  drawChart("chart-delivered", data, data.sinks.map((s, i) =>
    ({ name: s.sink, cls: colour(i), values: s.delivered_rate })), "/s");
  drawChart("chart-backlog", data, data.sinks.map((s, i) =>
    ({ name: s.sink, cls: colour(i), values: s.backlog })), "");
  const legend = $("chart-legend");
  legend.replaceChildren();
  data.sinks.forEach((s, i) => {
    const item = document.createElement("span");
    item.className = "item";
    const swatch = document.createElement("span");
    swatch.className = "swatch " + colour(i);
    item.append(swatch, document.createTextNode(s.sink));
    legend.appendChild(item);
  });
  const every = data.interval >= 1 ? data.interval.toFixed(0) + " s" : data.interval * 1000 + " ms";
  $("charts-note").textContent = "(sampled by the relay every " + every + ")";
}

// The samples the page has, with those taken since appended and the oldest dropped past
// the rings' size: after the first answer a poll carries one sample per interval.
function merged(have, fresh) {
  const same = have && have.interval === fresh.interval && have.points === fresh.points &&
    have.sinks.map((s) => s.sink).join("\n") === fresh.sinks.map((s) => s.sink).join("\n");
  if (!same) return fresh;
  const keep = (old, add) => old.concat(add).slice(-fresh.points);
  return {
    interval: fresh.interval, points: fresh.points, at: keep(have.at, fresh.at),
    ingest_rate: keep(have.ingest_rate, fresh.ingest_rate),
    sinks: fresh.sinks.map((s, i) => ({ sink: s.sink,
      delivered_rate: keep(have.sinks[i].delivered_rate, s.delivered_rate),
      backlog: keep(have.sinks[i].backlog, s.backlog) })),
  };
}

async function refreshSeries() {
  if (!token) return;
  clearTimeout(seriesTimer);
  let delay = SERIES_MAX_MS;
  try {
    const after = series && series.at.length ? "?after=" + series.at[series.at.length - 1] : "";
    series = merged(series, await api("GET", "/admin/api/series" + after));
    renderSeries(series, false);
    delay = Math.min(SERIES_MAX_MS, Math.max(SERIES_MIN_MS, series.interval * 1000));
  } catch (err) {
    if (err.message === "unauthorised") return;
  }
  if (token) seriesTimer = setTimeout(refreshSeries, delay);
}

function renderDeadLetters(data) {
  const body = $("dlq-body");
  body.replaceChildren();
  const rows = data.dead_letters;
  for (const d of rows) {
    const row = document.createElement("tr");
    row.dataset.id = d.id;
    cell(row, d.id, "num");
    cell(row, when(d.at));
    cell(row, d.sink, "key");
    cell(row, d.event_name);
    cell(row, d.bucket === null ? "(event pruned)" : d.bucket + "/" + d.key, "key");
    cell(row, d.attempts, "num");
    cell(row, d.error, "error");
    cell(row, d.state, "state");
    const action = document.createElement("td");
    action.appendChild(button("Retry", "retry", () => api("POST", "/admin/api/dlq/retry", { id: d.id })));
    action.appendChild(document.createTextNode(" "));
    action.appendChild(button("Purge", "purge", () => {
      const consequence = d.retrying_to
        ? "Its redelivery to " + d.retrying_to + ", already queued, still goes ahead."
        : "The event will not be delivered to " + d.sink + ".";
      if (!window.confirm("Purge dead letter " + d.id + "? " + consequence)) {
        return Promise.resolve();
      }
      return api("POST", "/admin/api/dlq/purge", { id: d.id });
    }));
    row.appendChild(action);
    body.appendChild(row);
  }
  $("dlq").hidden = rows.length === 0;
  $("dlq-empty").hidden = rows.length !== 0;
  $("dlq-retry-all").hidden = rows.length === 0;
  $("dlq-count").textContent = rows.length ? "(" + rows.length + ")" : "";
}

function renderQuarantine(data) {
  const body = $("quarantine-body");
  body.replaceChildren();
  const rows = data.quarantine;
  for (const q of rows) {
    const row = document.createElement("tr");
    row.dataset.id = q.id;
    cell(row, q.id, "num");
    cell(row, when(q.received_at));
    cell(row, q.source, "key");
    cell(row, q.size, "num");
    cell(row, q.reason, "error");
    const action = document.createElement("td");
    action.appendChild(button("Retry", "retry", async () => {
      const result = await api("POST", "/admin/api/quarantine/retry", { id: q.id });
      const r = result.results[0];
      if (r && !r.ok) say("Quarantined body " + q.id + ": " + r.detail);
    }));
    row.appendChild(action);
    body.appendChild(row);
  }
  $("quarantine").hidden = rows.length === 0;
  $("quarantine-empty").hidden = rows.length !== 0;
  $("quarantine-count").textContent = rows.length ? "(" + rows.length + ")" : "";
}

function renderEvents() {
  const body = $("events-body");
  body.replaceChildren();
  for (const e of recent) {
    const row = document.createElement("tr");
    row.dataset.seq = e.seq;
    cell(row, e.seq, "num");
    cell(row, when(e.received_at));
    cell(row, e.event_name);
    cell(row, e.bucket + "/" + e.key, "key");
    cell(row, e.source);
    body.appendChild(row);
  }
  $("events").hidden = recent.length === 0;
  $("events-empty").hidden = recent.length !== 0;
}

// Where is my event: GET /admin/api/trace, an event per block, a sink per row.
function renderTrace(data) {
  const box = $("trace-results");
  box.replaceChildren();
  for (const e of data.events) {
    const block = document.createElement("div");
    block.className = "trace-event";
    block.dataset.seq = e.seq;
    const title = document.createElement("h3");
    title.textContent = "seq " + e.seq + " · " + e.event_name + " · " + e.bucket + "/" + e.key;
    block.appendChild(title);
    const about = document.createElement("p");
    about.className = "summary";
    about.textContent = "received " + when(e.received_at) + " on POST /" +
      (e.source === "default" ? "" : e.source) + " (" + e.dialect + "), event id " + e.event_id +
      "; duplicates of it: not counted by the log";
    block.appendChild(about);
    const table = document.createElement("table");
    table.className = "trace";
    const body = document.createElement("tbody");
    for (const s of e.sinks) {
      const row = document.createElement("tr");
      row.dataset.sink = s.sink;
      row.dataset.state = s.state;
      cell(row, s.sink, "key");
      cell(row, s.state, "state " + s.state.replace(/ /g, "-"));
      cell(row, s.detail, "detail");
      body.appendChild(row);
    }
    table.appendChild(body);
    block.appendChild(table);
    box.appendChild(block);
  }
  const notes = data.notes.slice();
  if (data.more) notes.push(data.more + " older event(s) of the object not shown.");
  for (const note of notes) {
    const p = document.createElement("p");
    p.className = "empty trace-note";
    p.textContent = note;
    box.appendChild(p);
  }
}

async function traceEvent() {
  const q = $("trace-q").value.trim();
  if (!q) return;
  const params = new URLSearchParams({ q });
  const since = $("trace-since").value.trim();
  if (since) params.set("since", since);
  $("trace-go").disabled = true;
  try {
    renderTrace(await api("GET", "/admin/api/trace?" + params.toString()));
    say("");
  } catch (err) {
    if (err.message !== "unauthorised") say("Trace failed: " + err.message);
  } finally {
    $("trace-go").disabled = false;
  }
}

async function refresh() {
  if (!token) return;
  clearTimeout(refreshTimer);
  try {
    const [sinks, dlq, quarantine] = await Promise.all([
      api("GET", "/admin/api/sinks"),
      api("GET", "/admin/api/dlq?limit=200"),
      api("GET", "/admin/api/quarantine?limit=200"),
    ]);
    renderSinks(sinks);
    renderDeadLetters(dlq);
    renderQuarantine(quarantine);
    setStatus("connected · updated " + new Date().toLocaleTimeString(), "ok");
  } catch (err) {
    if (err.message === "unauthorised") return;
    setStatus("cannot reach the relay: " + err.message, "bad");
  }
  if (token) refreshTimer = setTimeout(refresh, REFRESH_MS);
}

// -- live tail (server-sent events read with fetch, so the token goes in a header) --------------

async function follow() {
  if (stream) stream.abort();
  const controller = new AbortController();
  stream = controller;
  while (token && stream === controller) {
    try {
      const extra = lastEventId === null ? {} : { "Last-Event-ID": String(lastEventId) };
      const query = lastEventId === null ? "?last=20" : "";
      const response = await fetch("/admin/events/stream" + query,
        { headers: headers(extra), cache: "no-store", credentials: "omit", signal: controller.signal });
      if (response.status === 401) {
        disconnect("The relay refused this token.");
        return;
      }
      if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
      $("stream-state").textContent = "(live)";
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          onMessage(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    $("stream-state").textContent = "(reconnecting)";
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function onMessage(block) {
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // a comment: heartbeat
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
  if (id !== null) lastEventId = Number(id);
  if (!data.length) return;
  const event = JSON.parse(data.join("\n"));
  recent.unshift(event);
  recent.length = Math.min(recent.length, RECENT_EVENTS);
  renderEvents();
}

// -- token ---------------------------------------------------------------------------------------

function connect() {
  $("token-form").hidden = true;
  $("forget").hidden = false;
  $("main").hidden = false;
  setStatus("connecting…");
  say("");
  refresh();
  refreshSeries();
  follow();
}

function disconnect(message) {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(refreshTimer);
  clearTimeout(seriesTimer);
  series = null;
  drawn = "";
  openSinks.clear();
  if (stream) stream.abort();
  stream = null;
  lastEventId = null;
  recent.length = 0;
  $("trace-results").replaceChildren();
  $("token-form").hidden = false;
  $("forget").hidden = true;
  $("main").hidden = true;
  setStatus("not connected", message ? "bad" : "");
  say(message || "");
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    token = value;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    connect();
  });
  $("forget").addEventListener("click", () => disconnect(""));
  $("trace-form").addEventListener("submit", (event) => {
    event.preventDefault();
    traceEvent();
  });
  const retryAll = button("Retry all", "retry-all", () =>
    api("POST", "/admin/api/dlq/retry", { all: true }));
  retryAll.id = "dlq-retry-all";
  $("dlq-retry-all").replaceWith(retryAll);
  renderEvents();
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => series && renderSeries(series, true), 200);
  });
  if (token) connect();
});

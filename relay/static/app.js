// The relay's status page. No build step, no external assets. The admin token is typed in
// once, kept in sessionStorage (gone when the tab closes) and sent as a Bearer header by
// fetch; it never goes into a URL. Everything shown is built with textContent.
"use strict";

const TOKEN_KEY = "relay-admin-token";
const REFRESH_MS = 2000;
const RECENT_EVENTS = 50;

let token = sessionStorage.getItem(TOKEN_KEY) || "";
let refreshTimer = null;
let stream = null; // AbortController of the live tail
let lastEventId = null;
const recent = [];

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
    const action = document.createElement("td");
    const path = "/admin/api/sinks/" + encodeURIComponent(s.name);
    action.appendChild(s.paused
      ? button("Resume", "resume", () => api("POST", path + "/resume"))
      : button("Pause", "pause", () => api("POST", path + "/pause")));
    row.appendChild(action);
    body.appendChild(row);
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
  follow();
}

function disconnect(message) {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(refreshTimer);
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
  if (token) connect();
});

// batchd's web console: a client of /v1 and /admin with the signed-in key, nothing more.
// No framework and no build step. Every user-provided string reaches the page as text
// (textContent via h()), never as markup.
"use strict";

const KEY = "batchd.key";
const ACTIVE = ["validating", "in_progress", "finalizing", "cancelling"];
// `gen` counts page changes: a page's pending work checks it after every await and stops
// when the reader has moved on (so an old page never redraws over, or polls for, a new one).
const state = { session: null, timer: null, gen: 0, rates: new Map() };

class Stale extends Error {}

function current(gen) {
  if (gen !== state.gen) throw new Stale();
}

// A click handler whose failure is shown (in the page's alert line), never swallowed.
function guard(action) {
  return async (event) => {
    const flash = document.getElementById("flash");
    if (flash) flash.textContent = "";
    try {
      await action(event);
    } catch (e) {
      if (e instanceof Stale || e.status === 401) return;
      if (flash) flash.textContent = e.message;
    }
  };
}

// --- DOM helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function view(...children) {
  const main = document.getElementById("view");
  main.replaceChildren(h("p", { id: "flash", class: "error", role: "alert" }), ...children);
  return main;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "–";
}

function span(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  seconds = Math.max(0, Math.round(seconds));
  const hours = Math.floor(seconds / 3600), minutes = Math.floor(seconds / 60) % 60;
  const rest = seconds % 60;
  return hours ? `${hours}h ${minutes}m` : minutes ? `${minutes}m ${rest}s` : `${rest}s`;
}

function bytes(n) {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} kB`;
  return `${n} B`;
}

// `rows`: a list of <tr>, or one <tbody> that the caller fills (live views).
function table(headers, rows, label) {
  const body = rows instanceof HTMLTableSectionElement ? rows : h("tbody", {}, rows);
  return h("div", { class: "scroll" },
    h("table", { "aria-label": label },
      h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
      body));
}

function alertBox(id) {
  return h("p", { id, class: "error", role: "alert" });
}

// --- the API -----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY)}`,
                    ...(options.headers || {}) };
  let body = options.body;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.json);
  }
  const response = await fetch(path, { method: options.method || "GET", headers, body });
  if (response.status === 401 && path !== "/admin/session") {
    signOut("Your key is no longer accepted (it may have been revoked). Sign in again.");
    throw new ApiError(401, "signed out");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message || message; } catch (e) { /* text */ }
    throw new ApiError(response.status, message);
  }
  return options.raw ? response : response.json();
}

async function download(fileId, name) {
  const response = await api(`/v1/files/${encodeURIComponent(fileId)}/content`, { raw: true });
  const url = URL.createObjectURL(await response.blob());
  const link = h("a", { href: url, download: name || `${fileId}.jsonl` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// --- signing in and out ------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(KEY);
  state.session = null;
  state.gen += 1;
  showSignIn(message);
}

function showSignIn(message) {
  stopPolling();
  document.getElementById("top").hidden = true;
  const error = alertBox("signin-error");
  if (message) error.textContent = message;
  const input = h("input", { id: "key", name: "key", type: "password", autocomplete: "off",
                             required: true, "aria-describedby": "signin-help" });
  const form = h("form", { class: "signin card", "aria-labelledby": "signin-title",
    onsubmit: async (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      try {
        await start();
      } catch (e) {
        sessionStorage.removeItem(KEY);
        error.textContent = e.status === 401
          ? "That key was not accepted: it is wrong or has been revoked."
          : `Could not sign in: ${e.message}`;
        input.focus();
      }
    } },
    h("h1", { id: "signin-title" }, "Sign in to batchd"),
    h("label", { for: "key" }, "API key", input),
    h("p", { id: "signin-help", class: "muted" },
      "The key stays in this tab only (session storage) and is sent as a Bearer header."),
    h("button", { class: "primary", type: "submit" }, "Sign in"), error);
  document.getElementById("view").replaceChildren(form);
  input.focus();
}

async function start() {
  const session = await api("/admin/session");
  state.session = session;
  document.getElementById("top").hidden = false;
  document.getElementById("who").textContent =
    `${session.owner} · ${session.role} · ${session.tier}`;
  document.querySelector('[data-tab="keys"]').hidden = session.role !== "admin";
  route();
}

// --- routing and polling -----------------------------------------------------------------

function stopPolling() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
}

// Refresh every `seconds` while this page is shown; one refresh at a time (the next waits
// for the last to finish). A failed refresh is said in the page and tried again.
function poll(gen, refresh, seconds = 2) {
  stopPolling();
  const tick = async () => {
    if (gen !== state.gen) return;
    const flash = document.getElementById("flash");
    try {
      await refresh();
      if (flash && flash.dataset.stale) { flash.textContent = ""; delete flash.dataset.stale; }
    } catch (e) {
      if (e instanceof Stale || e.status === 401) return;
      if (flash) { flash.textContent = `Not up to date: ${e.message}`; flash.dataset.stale = "1"; }
    }
    if (gen === state.gen) state.timer = setTimeout(tick, seconds * 1000);
  };
  state.timer = setTimeout(tick, seconds * 1000);
}

function route() {
  if (!state.session) return;
  stopPolling();
  const gen = ++state.gen;
  let parts;
  try {
    parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  } catch (e) {
    parts = ["batches"];  // a mangled address: start from the batches
  }
  const [tab, id, sub] = parts;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.tab === (tab === "batch" ? "batches" : tab || "batches")) {
      link.setAttribute("aria-current", "page");
    } else {
      link.removeAttribute("aria-current");
    }
  }
  const pages = { batches: batchesPage, batch: (g) => batchPage(g, id, sub), files: filesPage,
                  keys: keysPage, models: modelsPage, usage: usagePage };
  (pages[tab] || batchesPage)(gen).catch((e) => {
    if (e instanceof Stale || e.status === 401 || gen !== state.gen) return;
    view(h("h1", {}, "Something went wrong"), h("p", { role: "alert", class: "error" },
                                                  e.message));
  });
  document.getElementById("view").focus();
}

// --- batches -----------------------------------------------------------------------------

function counts(batch) {
  const c = batch.request_counts || { total: 0, completed: 0, failed: 0 };
  return { total: c.total, completed: c.completed, failed: c.failed,
           done: c.completed + c.failed };
}

function progressOf(batch) {
  const c = counts(batch);
  const label = `${c.done} of ${c.total} requests finished (${c.failed} failed)`;
  return h("span", { class: "row" },
    h("progress", { max: c.total || 1, value: c.total ? c.done : 0, "aria-label": label }),
    h("span", { class: "mono" }, `${c.done}/${c.total}`),
    c.failed ? h("span", { class: "error" }, `${c.failed} failed`) : null);
}

function paceOf(batch) {
  // Requests per second and time left, from the last two times this batch was seen.
  const c = counts(batch);
  const now = Date.now() / 1000;
  const last = state.rates.get(batch.id);
  let rate = last ? last.rate : null;
  if (last && now > last.at && c.done >= last.done) {
    const measured = (c.done - last.done) / (now - last.at);
    rate = last.rate === null ? measured : 0.5 * last.rate + 0.5 * measured;
  }
  state.rates.set(batch.id, { at: now, done: c.done, rate });
  if (!ACTIVE.includes(batch.status) || rate === null) return "–";
  const left = rate > 0 ? (c.total - c.done) / rate : null;
  return `${rate.toFixed(1)}/s · ETA ${left === null ? "–" : span(left)}`;
}

function elapsedOf(batch) {
  const end = batch.completed_at || batch.failed_at || batch.expired_at || batch.cancelled_at;
  return span((end || Date.now() / 1000) - batch.created_at);
}

function metadataText(metadata) {
  return Object.entries(metadata || {}).map(([k, v]) => `${k}=${v}`).join(", ");
}

function batchRow(batch) {
  return h("tr", { "data-batch": batch.id },
    h("td", {}, h("a", { href: `#/batch/${encodeURIComponent(batch.id)}`, class: "mono" },
                  batch.id)),
    h("td", { class: `status-${batch.status}` }, batch.status),
    h("td", {}, progressOf(batch)),
    h("td", {}, paceOf(batch)),
    h("td", { class: "wrap" }, batch.model || "–"),
    h("td", { class: "hide-narrow" }, when(batch.created_at)),
    h("td", {}, elapsedOf(batch)),
    h("td", { class: "wrap hide-narrow" }, metadataText(batch.metadata)));
}

async function batchesPage(gen) {
  const body = h("tbody");
  const more = h("button", { type: "button", hidden: true }, "Load more");
  let shown = [];
  const render = () => body.replaceChildren(...shown.map(batchRow));
  // `fresh`: the newest again, as many as are shown (live updates); otherwise the next page.
  const load = async (fresh) => {
    const last = shown.length ? shown[shown.length - 1].id : null;
    const query = fresh ? `limit=${Math.min(100, Math.max(20, shown.length))}`
                        : `limit=20&after=${encodeURIComponent(last)}`;
    const page = await api(`/v1/batches?${query}`);
    current(gen);
    shown = fresh ? page.data : shown.concat(page.data);
    more.hidden = !page.has_more;
    render();
  };
  more.addEventListener("click", guard(() => load(false)));
  const form = await createBatchForm(() => load(true));
  current(gen);
  view(h("h1", {}, "Batches"), form,
       table(["Batch", "Status", "Progress", "Rate · ETA", "Model", "Created", "Elapsed",
              "Metadata"], body, "Batches, newest first"), more);
  body.closest("table").querySelectorAll("th")[5].classList.add("hide-narrow");
  body.closest("table").querySelectorAll("th")[7].classList.add("hide-narrow");
  await load(true);
  poll(gen, async () => { if (shown.some((b) => ACTIVE.includes(b.status))) await load(true); });
}

async function createBatchForm(created) {
  const files = await api("/v1/files?purpose=batch&limit=100");
  const file = h("select", { id: "create-file", required: true },
    files.data.length ? null : h("option", { value: "" }, "No batch files yet: upload one"),
    files.data.map((f) => h("option", { value: f.id }, `${f.filename} (${f.id})`)));
  const endpoint = h("select", { id: "create-endpoint" },
    ["/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions"].map(
      (e) => h("option", { value: e }, e)));
  const windowSelect = h("select", { id: "create-window" },
    ["24h", "1h", "3h", "6h", "12h", "48h", "72h"].map((w) => h("option", { value: w }, w)));
  const metadata = h("textarea", { id: "create-metadata", rows: 2,
                                   placeholder: "key=value, one per line" });
  const error = alertBox("create-error");
  const form = h("form", { class: "row card", "aria-label": "Create a batch",
    onsubmit: async (event) => {
      event.preventDefault();
      error.textContent = "";
      const pairs = {};
      for (const line of metadata.value.split("\n").map((l) => l.trim()).filter(Boolean)) {
        const at = line.indexOf("=");
        if (at < 1) { error.textContent = `Metadata must be key=value: ${line}`; return; }
        pairs[line.slice(0, at).trim()] = line.slice(at + 1).trim();
      }
      try {
        const batch = await api("/v1/batches", { method: "POST", json: {
          input_file_id: file.value, endpoint: endpoint.value,
          completion_window: windowSelect.value,
          ...(Object.keys(pairs).length ? { metadata: pairs } : {}) } });
        metadata.value = "";
        await created(batch);
      } catch (e) { error.textContent = e.message; }
    } },
    h("label", { for: "create-file" }, "Input file", file),
    h("label", { for: "create-endpoint" }, "Endpoint", endpoint),
    h("label", { for: "create-window" }, "Completion window", windowSelect),
    h("label", { for: "create-metadata" }, "Metadata", metadata),
    h("button", { class: "primary", type: "submit" }, "Create batch"), error);
  return form;
}

async function batchPage(gen, id, sub) {
  let batch = await api(`/v1/batches/${encodeURIComponent(id)}`);
  current(gen);
  const summary = h("div");
  const actions = h("div", { class: "row" });
  const errors = h("div");
  const render = () => {
    const c = counts(batch);
    const usage = batch.usage || {};
    summary.replaceChildren(h("dl", { class: "facts" },
      h("dt", {}, "Status"), h("dd", { id: "batch-status", class: `status-${batch.status}` },
                               batch.status),
      h("dt", {}, "Progress"), h("dd", {}, progressOf(batch)),
      h("dt", {}, "Rate · ETA"), h("dd", {}, paceOf(batch)),
      h("dt", {}, "Requests"), h("dd", {},
        `${c.completed} completed, ${c.failed} failed, ${c.total} in all`),
      h("dt", {}, "Tokens"), h("dd", {}, `${usage.input_tokens || 0} prompt ` +
        `(${(usage.input_tokens_details || {}).cached_tokens || 0} cached), ` +
        `${usage.output_tokens || 0} completion`),
      h("dt", {}, "Model"), h("dd", {}, batch.model || "–"),
      h("dt", {}, "Created"), h("dd", {}, when(batch.created_at)),
      h("dt", {}, "Elapsed"), h("dd", {}, elapsedOf(batch)),
      h("dt", {}, "Window"), h("dd", {}, `${batch.completion_window} (expires ` +
        `${when(batch.expires_at)})`),
      h("dt", {}, "Input file"), h("dd", { class: "mono" }, batch.input_file_id),
      h("dt", {}, "Metadata"), h("dd", {}, metadataText(batch.metadata) || "–")));
    actions.replaceChildren(...[
      ACTIVE.includes(batch.status) && batch.status !== "cancelling"
        ? h("button", { type: "button", class: "danger", onclick: guard(async () => {
            if (!confirm(`Cancel ${batch.id}? Finished results are kept.`)) return;
            batch = await api(`/v1/batches/${encodeURIComponent(batch.id)}/cancel`,
                              { method: "POST" });
            render();
          }) }, "Cancel batch") : null,
      batch.output_file_id ? h("button", { type: "button", onclick: guard(() =>
        download(batch.output_file_id, `${batch.id}_output.jsonl`)) }, "Download output")
        : null,
      batch.error_file_id ? h("button", { type: "button", onclick: guard(() =>
        download(batch.error_file_id, `${batch.id}_errors.jsonl`)) }, "Download errors")
        : null,
      h("a", { href: `#/batch/${encodeURIComponent(batch.id)}/results` }, "Results"),
    ].filter(Boolean));
    const listed = (batch.errors || {}).data || [];
    errors.replaceChildren(listed.length ? h("section", { "aria-labelledby": "errors-title" },
      h("h2", { id: "errors-title" }, "Errors in the input file"),
      table(["Line", "Code", "Parameter", "Message"], listed.map((e) => h("tr", {},
        h("td", { class: "mono" }, e.line ?? "–"), h("td", { class: "mono" }, e.code || "–"),
        h("td", { class: "mono" }, e.param || "–"), h("td", { class: "wrap" }, e.message))),
        "Errors in the input file")) : "");
  };
  render();
  const chart = progressChart(batch.id);
  const parts = [h("p", {}, h("a", { href: "#/batches" }, "← Batches")),
                 h("h1", { class: "mono" }, batch.id), summary, actions, chart.section, errors];
  const results = sub === "results" ? resultsSection(gen, () => batch) : null;
  if (results) parts.push(results.section);
  view(...parts);
  await chart.load(gen, batch);
  poll(gen, async () => {
    if (!ACTIVE.includes(batch.status)) return;
    const before = batch;
    batch = await api(`/v1/batches/${encodeURIComponent(batch.id)}`);
    current(gen);
    render();
    await chart.load(gen, batch);
    if (results && (batch.output_file_id !== before.output_file_id ||
                    batch.error_file_id !== before.error_file_id)) results.reload();
  });
}

// Finished and failed requests over time (as each chunk was done), and output tokens per
// second between those moments.
function progressChart(batchId) {
  const box = h("div", { id: "progress-chart", class: "chart" });
  const note = h("p", { class: "muted" });
  const section = h("section", { "aria-labelledby": "progress-title" },
    h("h2", { id: "progress-title" }, "Progress over time"), note, box);
  let loadedAt = 0, loadedDone = -1;
  // Again when the counts have moved, at most every 10 s (a trial key has 30 requests a
  // minute for the page's polls); a failure is said under the chart, never over the page.
  const load = async (gen, batch) => {
    const done = batch ? counts(batch).done : 0;
    if (loadedDone >= 0 && batch && ACTIVE.includes(batch.status)
        && (done === loadedDone || Date.now() - loadedAt < 10_000)) return;
    let progress;
    try {
      progress = await api(`/admin/batches/${encodeURIComponent(batchId)}/progress`);
    } catch (e) {
      if (e instanceof Stale || e.status === 401) throw e;
      note.textContent = `The chart is not up to date: ${e.message}`;
      return;
    }
    current(gen);
    loadedAt = Date.now();
    loadedDone = done;
    const points = progress.points;
    if (points.length < 2) {
      note.textContent = "Nothing finished yet.";
      return;
    }
    note.textContent = "";
    const times = points.map((p) => p.at);
    const rate = points.map((p, i) => {
      if (i === 0) return 0;
      const seconds = p.at - points[i - 1].at;
      return seconds > 0 ? (p.output_tokens - points[i - 1].output_tokens) / seconds : 0;
    });
    linesOverTime(box, "batch-progress", {
      times, leftUnit: "requests", rightUnit: "tokens/s",
      left: [{ label: "finished", values: points.map((p) => p.completed + p.failed) },
             { label: "failed", values: points.map((p) => p.failed) }],
      right: [{ label: "output tokens/s", values: rate }],
    });
  };
  return { section, load };
}

function resultsSection(gen, getBatch) {
  const kind = h("select", { id: "results-kind" },
    h("option", { value: "output" }, "Output"), h("option", { value: "errors" }, "Errors"));
  const search = h("input", { id: "results-search", type: "search",
                              placeholder: "custom_id" });
  const body = h("tbody");
  const status = h("p", { class: "muted", role: "status" });
  const previous = h("button", { type: "button" }, "Previous");
  const next = h("button", { type: "button" }, "Next");
  // Pages are read with the server's cursors: `cursors` holds where each page began.
  let cursors = [0], seen = 0, asked = 0, nextCursor = null;
  const load = async () => {
    const request = ++asked;  // only the latest answer is shown
    const batch = getBatch();
    const fileId = kind.value === "output" ? batch.output_file_id : batch.error_file_id;
    previous.disabled = cursors.length < 2;
    next.disabled = true;
    if (!fileId) {
      body.replaceChildren();
      status.textContent = "No such file for this batch (yet).";
      return;
    }
    const query = new URLSearchParams({ cursor: cursors[cursors.length - 1], limit: 50 });
    if (search.value.trim()) query.set("custom_id", search.value.trim());
    const page = await api(`/admin/files/${encodeURIComponent(fileId)}/lines?${query}`);
    if (request !== asked || gen !== state.gen) return;
    body.replaceChildren(...page.data.map((line) => {
      const response = line.response || {};
      const content = ((((response.body || {}).choices || [])[0] || {}).message || {}).content;
      const detail = content ?? (line.error ? `${line.error.code}: ${line.error.message}` :
        ((response.body || {}).error || {}).message ?? JSON.stringify(line).slice(0, 300));
      return h("tr", {}, h("td", { class: "mono" }, line.custom_id ?? "–"),
               h("td", {}, response.status_code ?? "–"), h("td", { class: "wrap" }, detail));
    }));
    status.textContent = page.data.length
      ? `Lines ${seen + 1}-${seen + page.data.length}`
      : page.has_more ? "Still looking: press Next to search further." : "No lines match.";
    nextCursor = page.next_cursor;
    next.disabled = !page.has_more;
    next.dataset.count = String(page.data.length);
  };
  const restart = () => { cursors = [0]; seen = 0; return load(); };
  previous.addEventListener("click", guard(() => {
    cursors.pop();
    seen = Math.max(0, seen - 50);
    return load();
  }));
  next.addEventListener("click", guard(() => {
    seen += Number(next.dataset.count || 0);
    cursors.push(nextCursor);
    return load();
  }));
  kind.addEventListener("change", guard(restart));
  const form = h("form", { class: "row", role: "search", onsubmit: (event) => {
    event.preventDefault(); guard(restart)(); } },
    h("label", { for: "results-kind" }, "File", kind),
    h("label", { for: "results-search" }, "Find a custom_id", search),
    h("button", { type: "submit" }, "Find"));
  guard(load)();
  return {
    reload: () => guard(restart)(),
    section: h("section", { "aria-labelledby": "results-title" },
      h("h2", { id: "results-title" }, "Results"), form, status,
      table(["custom_id", "Status", "Reply or error"], body, "Result lines"),
      h("div", { class: "row" }, previous, next)),
  };
}

// --- files -------------------------------------------------------------------------------

async function filesPage(gen) {
  const limits = state.session.limits;
  const body = h("tbody");
  const more = h("button", { type: "button", hidden: true }, "Load more");
  let after = null;
  const fileRow = (f) => h("tr", { "data-file": f.id },
    h("td", { class: "wrap" }, f.filename), h("td", { class: "mono hide-narrow" }, f.id),
    h("td", {}, f.purpose), h("td", {}, bytes(f.bytes)),
    h("td", { class: "hide-narrow" }, when(f.created_at)),
    h("td", { class: "hide-narrow" }, when(f.expires_at)),
    h("td", { class: "row" },
      h("button", { type: "button", "aria-label": `Download ${f.filename}`,
                    onclick: guard(() => download(f.id, f.filename)) }, "Download"),
      h("button", { type: "button", class: "danger", "aria-label": `Delete ${f.filename}`,
        onclick: guard(async () => {
          if (!confirm(`Delete ${f.filename}? This cannot be undone.`)) return;
          await api(`/v1/files/${encodeURIComponent(f.id)}`, { method: "DELETE" });
          await load(true);
        }) }, "Delete")));
  const load = async (reset) => {
    if (reset) after = null;
    const page = await api(`/v1/files?limit=50&order=desc${after ? `&after=${after}` : ""}`);
    current(gen);
    if (reset) body.replaceChildren();
    body.append(...page.data.map(fileRow));
    after = page.data.length ? page.data[page.data.length - 1].id : after;
    more.hidden = !page.has_more;
  };
  more.addEventListener("click", guard(() => load(false)));
  view(h("h1", {}, "Files"), uploadForm(limits, () => load(true)),
       table(["Name", "ID", "Purpose", "Size", "Created", "Expires", ""], body, "Files"),
       more);
  for (const i of [1, 4, 5]) body.closest("table").querySelectorAll("th")[i]
    .classList.add("hide-narrow");
  await load(true);
}

function uploadForm(limits, uploaded) {
  const input = h("input", { id: "upload-file", type: "file" });
  const purpose = h("select", { id: "upload-purpose" },
    ["batch", "user_data"].map((p) => h("option", { value: p }, p)));
  const bar = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true,
                              "aria-label": "Upload progress" });
  const status = h("p", { role: "status", class: "muted" });
  const error = alertBox("upload-error");
  const zone = h("div", { class: "drop" },
    h("p", {}, "Drop a file here, or pick one."),
    h("p", { class: "muted", id: "upload-limits" },
      `Largest upload ${bytes(limits.max_upload_bytes)}; batch input files up to ` +
      `${bytes(limits.max_batch_file_bytes)} and ${limits.max_requests_per_batch} requests ` +
      "(.jsonl)."));
  const send = (file) => {
    error.textContent = "";
    const limit = purpose.value === "batch" ? limits.max_batch_file_bytes
                                            : limits.max_upload_bytes;
    if (file.size > limit) {
      error.textContent = `${file.name} is ${bytes(file.size)}: over the ${bytes(limit)} limit.`;
      return;
    }
    const form = new FormData();
    form.append("purpose", purpose.value);
    form.append("file", file);
    const request = new XMLHttpRequest();  // fetch cannot report upload progress
    request.open("POST", "/v1/files");
    request.setRequestHeader("Authorization", `Bearer ${sessionStorage.getItem(KEY)}`);
    bar.hidden = false;
    bar.value = 0;
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) bar.value = event.loaded / event.total;
    });
    request.addEventListener("load", async () => {
      bar.hidden = true;
      if (request.status >= 200 && request.status < 300) {
        status.textContent = `Uploaded ${file.name}.`;
        input.value = "";
        await uploaded();
      } else {
        let message = `${request.status} ${request.statusText}`;
        try {
          message = JSON.parse(request.responseText).error.message || message;
        } catch (e) { /* not JSON: keep the status */ }
        error.textContent = `Upload refused: ${message}`;
        status.textContent = "";
      }
    });
    for (const [name, what] of [["error", "the server could not be reached"],
                                ["abort", "it was interrupted"], ["timeout", "it took too long"]]) {
      request.addEventListener(name, () => {
        bar.hidden = true;
        status.textContent = "";
        error.textContent = `Upload failed: ${what}.`;
      });
    }
    status.textContent = `Uploading ${file.name}…`;
    request.send(form);
  };
  zone.addEventListener("dragover", (event) => { event.preventDefault();
                                                   zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) send(event.dataTransfer.files[0]);
  });
  const form = h("form", { class: "card", "aria-label": "Upload a file", onsubmit: (event) => {
      event.preventDefault();
      if (input.files.length) send(input.files[0]);
      else error.textContent = "Pick a file first.";
    } },
    zone,
    h("div", { class: "row" },
      h("label", { for: "upload-file" }, "File", input),
      h("label", { for: "upload-purpose" }, "Purpose", purpose),
      h("button", { class: "primary", type: "submit" }, "Upload")),
    bar, status, error);
  return form;
}

// --- API keys (admins) -------------------------------------------------------------------

async function keysPage(gen) {
  if (state.session.role !== "admin") {
    view(h("h1", {}, "API keys"), h("p", {}, "Only admin keys manage keys."));
    return;
  }
  const body = h("tbody");
  const load = async () => {
    const keys = await api("/admin/keys");
    current(gen);
    body.replaceChildren(...keys.data.slice().reverse().map((k) => h("tr", { "data-key": k.id },
      h("td", { class: "wrap" }, k.name), h("td", { class: "mono hide-narrow" }, k.id),
      h("td", { class: "wrap" }, k.owner), h("td", {}, k.role), h("td", {}, k.tier),
      h("td", { class: "mono hide-narrow" }, `${k.prefix}…`),
      h("td", { class: "hide-narrow" }, when(k.created_at)),
      h("td", {}, k.revoked_at ? `revoked ${when(k.revoked_at)}` : "active"),
      h("td", {}, k.revoked_at ? null : h("button", { type: "button", class: "danger",
        "aria-label": `Revoke ${k.name}`, onclick: guard(async () => {
          if (!confirm(`Revoke ${k.name}? It stops working at once.`)) return;
          await api(`/admin/keys/${encodeURIComponent(k.id)}/revoke`, { method: "POST" });
          await load();
        }) }, "Revoke")))));
  };
  const name = h("input", { id: "key-name", required: true, maxlength: 200 });
  const owner = h("input", { id: "key-owner", maxlength: 200, placeholder: "same as name" });
  const tier = h("input", { id: "key-tier", placeholder: "default tier" });
  const role = h("select", { id: "key-role" }, h("option", { value: "user" }, "user"),
                 h("option", { value: "admin" }, "admin"));
  const secret = h("div", { id: "key-secret", role: "status" });
  const error = alertBox("key-error");
  const form = h("form", { class: "row card", "aria-label": "Create a key",
    onsubmit: async (event) => {
      event.preventDefault();
      error.textContent = "";
      try {
        const created = await api("/admin/keys", { method: "POST", json: {
          name: name.value.trim(), role: role.value,
          ...(owner.value.trim() ? { owner: owner.value.trim() } : {}),
          ...(tier.value.trim() ? { tier: tier.value.trim() } : {}) } });
        const value = h("code", { id: "key-secret-value" }, created.secret);
        secret.replaceChildren(h("div", { class: "secret" },
          h("p", {}, `Key for ${created.name} (owner ${created.owner}). Copy it now: it is ` +
                     "shown only once."), value, " ",
          h("button", { type: "button", onclick: async (e) => {
            await navigator.clipboard.writeText(created.secret);
            e.target.textContent = "Copied";
          } }, "Copy")));
        name.value = owner.value = tier.value = "";
        await load();
      } catch (e) { error.textContent = e.message; }
    } },
    h("label", { for: "key-name" }, "Name", name), h("label", { for: "key-owner" }, "Owner", owner),
    h("label", { for: "key-tier" }, "Tier", tier), h("label", { for: "key-role" }, "Role", role),
    h("button", { class: "primary", type: "submit" }, "Create key"), error);
  view(h("h1", {}, "API keys"), form, secret,
       table(["Name", "ID", "Owner", "Role", "Tier", "Prefix", "Created", "State", ""], body,
             "API keys"));
  for (const i of [1, 5, 6]) body.closest("table").querySelectorAll("th")[i]
    .classList.add("hide-narrow");
  await load();
}

// --- models and a chat box ---------------------------------------------------------------

// --- usage -------------------------------------------------------------------------------

const RANGES = { "24h": { seconds: 86400, width: "1h", step: 3600 },
                 "7d": { seconds: 7 * 86400, width: "1d", step: 86400 },
                 "30d": { seconds: 30 * 86400, width: "1d", step: 86400 } };

// Every page's buckets; `unpriced` collects the costs pages' models without prices.
async function usagePages(kind, query, unpriced = null) {
  const buckets = [];
  let page = null;
  do {
    const params = new URLSearchParams(query);
    if (page) params.set("page", page);
    const answer = await api(`/v1/organization/${kind}?${params}`);
    buckets.push(...answer.data);
    if (unpriced) (answer.unpriced_models || []).forEach((m) => unpriced.add(m));
    page = answer.has_more ? answer.next_page : null;
  } while (page);
  return buckets;
}

// One series per value of `key` in the buckets' results, each as long as the buckets.
function seriesBy(buckets, key, value, label = (v) => String(v)) {
  const names = [...new Set(buckets.flatMap((b) => b.results.map((r) => r[key])))].sort();
  return names.map((name) => ({
    label: label(name),
    values: buckets.map((b) => b.results.filter((r) => r[key] === name)
      .reduce((total, r) => total + value(r), 0)),
  }));
}

function totalsTable(label, headers, rows) {
  return table(headers, rows.map((cells) => h("tr", {}, cells.map(
    (cell, i) => h("td", { class: i ? "mono" : "wrap" }, cell)))), label);
}

async function usagePage(gen) {
  const admin = state.session.role === "admin";
  const range = h("select", { id: "usage-range" },
    Object.keys(RANGES).map((r) => h("option", { value: r }, r === "24h" ? "Last 24 hours"
                                                            : `Last ${parseInt(r)} days`)));
  range.value = "7d";
  const kind = h("select", { id: "usage-kind" },
    h("option", { value: "completions" }, "Completions"),
    h("option", { value: "embeddings" }, "Embeddings"));
  const body = h("div");
  view(h("h1", {}, "Usage"),
       h("p", { class: "muted" }, admin ? "Every owner's usage (an admin key)."
                                        : `The usage of ${state.session.owner}.`),
       h("div", { class: "row" }, h("label", {}, "Range", range), h("label", {}, "Kind", kind)),
       body);
  const load = async () => {
    const chosen = RANGES[range.value];
    const end = Math.floor(Date.now() / 1000);
    const start = Math.floor((end - chosen.seconds) / chosen.step) * chosen.step + chosen.step;
    const base = { start_time: start, bucket_width: chosen.width,
                   limit: Math.ceil(chosen.seconds / chosen.step) + 1 };
    const path = `usage/${kind.value}`;
    const byModel = await usagePages(path, { ...base, group_by: "model" });
    const byBatch = kind.value === "completions"
      ? await usagePages(path, { ...base, group_by: "batch" }) : null;
    const byOwner = admin ? await usagePages(path, { ...base, group_by: "project_id" }) : null;
    const unpriced = new Set();
    const costs = await usagePages("costs", { start_time: Math.floor(start / 86400) * 86400,
                                              group_by: "line_item",
                                              limit: Math.ceil(chosen.seconds / 86400) + 1 },
                                   unpriced);
    current(gen);
    const times = byModel.map((b) => b.start_time);
    const tokens = (r) => r.input_tokens + (r.output_tokens || 0);
    const sections = [];
    const chart = (id, title, note) => {
      const box = h("div", { id, class: "chart" });
      sections.push(h("section", { "aria-labelledby": `${id}-title` },
        h("h2", { id: `${id}-title` }, title), note ? h("p", { class: "muted" }, note) : null,
        box));
      return box;
    };
    const models = seriesBy(byModel, "model", tokens);
    const tokensBox = chart("chart-tokens", "Tokens by model",
                            models.length ? "Prompt and output tokens per bucket."
                                          : "No usage in this range.");
    const requestsBox = chart("chart-requests", byBatch ? "Requests: batch and real time"
                                                        : "Requests");
    const ownersBox = admin ? chart("chart-owners", "Tokens by owner") : null;
    const costSeries = seriesBy(costs, "line_item", (r) => r.amount.value,
                                (item) => item).filter((s) => s.values.some((v) => v > 0));
    const costBox = chart("chart-costs", "Cost per day", costSeries.length ? null
      : "No prices are set for the models used (the models file's prices): costs show as 0.");
    const totals = models.map((m) => {
      const rows = byModel.flatMap((b) => b.results.filter((r) => r.model === m.label));
      const sum = (f) => rows.reduce((t, r) => t + f(r), 0);
      return [m.label, sum((r) => r.num_model_requests).toLocaleString(),
              sum((r) => r.input_tokens).toLocaleString(),
              sum((r) => r.output_tokens || 0).toLocaleString(),
              unpriced.has(m.label) ? "no prices" : ""];
    });
    sections.push(h("section", { "aria-labelledby": "usage-totals-title" },
      h("h2", { id: "usage-totals-title" }, "Totals"),
      totalsTable("Usage totals by model", ["Model", "Requests", "Prompt tokens",
                                            "Output tokens", ""], totals)));
    body.replaceChildren(...sections);
    stackedBars(tokensBox, "usage-tokens", { times, series: models, unit: "tokens" });
    const requests = byBatch
      ? seriesBy(byBatch, "batch", (r) => r.num_model_requests,
                 (b) => (b ? "batch" : "real time"))
      : [{ label: "requests", values: byModel.map((b) => b.results.reduce(
          (t, r) => t + r.num_model_requests, 0)) }];
    stackedBars(requestsBox, "usage-requests", { times, series: requests, unit: "requests" });
    if (ownersBox) {
      stackedBars(ownersBox, "usage-owners",
                  { times, series: seriesBy(byOwner, "project_id", tokens), unit: "tokens" });
    }
    stackedBars(costBox, "usage-costs", { times: costs.map((b) => b.start_time),
                                          series: costSeries,
                                          unit: (costs[0]?.results[0]?.amount.currency
                                                 || "usd").toUpperCase() });
  };
  range.addEventListener("change", guard(load));
  kind.addEventListener("change", guard(load));
  await load();
}

async function modelsPage(gen) {
  current(gen);
  const models = state.session.models;
  const choose = h("select", { id: "chat-model" },
    models.filter((m) => m.serves.includes("chat")).map(
      (m) => h("option", { value: m.id }, m.id)));
  const message = h("textarea", { id: "chat-message", rows: 3, required: true });
  const reply = h("div", { id: "chat-reply", class: "reply", "aria-live": "polite" });
  const error = alertBox("chat-error");
  const send = h("button", { class: "primary", type: "submit" }, "Send");
  const form = h("form", { class: "card", "aria-label": "Chat", onsubmit: async (event) => {
      event.preventDefault();
      error.textContent = "";
      reply.textContent = "";
      send.disabled = true;  // one reply at a time
      // Server-sent events: blocks separated by a blank line; each `data:` line is one JSON
      // chunk (or [DONE]); an error arrives in-band as {"error": {...}}.
      const handle = (block) => {
        for (const line of block.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (!data || data === "[DONE]") continue;
          let chunk;
          try { chunk = JSON.parse(data); } catch (e) { continue; }
          if (chunk.error) { error.textContent = chunk.error.message || "The model failed."; }
          const delta = ((chunk.choices || [])[0] || {}).delta || {};
          if (delta.content) reply.append(delta.content);
        }
      };
      try {
        const response = await api("/v1/chat/completions", { method: "POST", raw: true, json: {
          model: choose.value, stream: true, max_tokens: 256,
          messages: [{ role: "user", content: message.value }] } });
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { done, value } = await reader.read();
          buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
          const blocks = buffer.split(/\r?\n\r?\n/);
          buffer = done ? "" : blocks.pop();
          blocks.forEach(handle);
          if (done) break;
        }
      } catch (e) {
        if (e.status !== 401) error.textContent = e.message;
      } finally {
        send.disabled = false;
      }
    } },
    h("div", { class: "row" }, h("label", { for: "chat-model" }, "Model", choose),
      h("label", { for: "chat-message" }, "Message", message), send), reply, error);
  view(h("h1", {}, "Models"),
       table(["Model", "Aliases", "Engine", "Serves"], models.map((m) => h("tr", {},
         h("td", { class: "mono" }, m.id), h("td", { class: "wrap" }, m.aliases.join(", ") || "–"),
         h("td", {}, m.engine), h("td", {}, m.serves.join(", ")))), "Served models"),
       h("h2", {}, "Try a model"), form);
}

// --- start -------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
if (sessionStorage.getItem(KEY)) {
  start().catch((e) => {
    if (e.status === 401) {
      signOut("Your key is no longer accepted (it may have been revoked). Sign in again.");
    } else {
      view(h("h1", {}, "batchd is not answering"), h("p", { class: "error" }, e.message),
           h("button", { type: "button", onclick: () => location.reload() }, "Try again"));
    }
  });
} else {
  showSignIn();
}

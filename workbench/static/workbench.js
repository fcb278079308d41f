// The workbench page: plain DOM, fetch, and plotly (served locally from the plotly package).
"use strict";

const $ = (sel) => document.querySelector(sel);
const body = document.body;
const READ_ONLY = body.dataset.readOnly === "true";
const TOKEN_REQUIRED = body.dataset.tokenRequired === "true";
const HAS_LOG = body.dataset.hasLog === "true";
const LIVE = "#1f77b4", PROPOSED = "#ff7f0e", FRONTIER = "#d62728", DOMINATED = "#c8c8c8";

const ed = { file: null, base: null, live: "", valid: false, timer: null, seq: 0, numbers: [] };
let lastSweep = null;

async function api(method, url, data, headers) {
  const opts = { method, headers: Object.assign({ "Content-Type": "application/json" }, headers || {}) };
  if (data !== undefined) opts.body = JSON.stringify(data);
  const r = await fetch(url, opts);
  let payload = null;
  try { payload = await r.json(); } catch (e) { payload = { error: `HTTP ${r.status}` }; }
  return { status: r.status, ok: r.ok, data: payload };
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

// ------------------------------------------------------------------ live policies and experiments
async function loadState() {
  const r = await api("GET", "/api/state");
  const tbody = $("#policies tbody");
  tbody.replaceChildren();
  for (const p of r.data.policies) {
    const status = p.valid ? el("td", { class: "ok" }, "valid") : el("td", { class: "bad" }, "INVALID: " + p.error);
    tbody.append(el("tr", { "data-file": p.file },
      el("td", {}, p.file), el("td", {}, p.name || "-"), el("td", {}, p.version || "-"),
      el("td", { class: "digest", title: p.digest }, el("code", {}, p.digest.slice(0, 12))), status,
      el("td", {}, el("button", { class: "link edit", onclick: () => openFile(p.file) }, "edit"))));
  }
  if (r.data.experiments_folder) {
    $("#experiments-box").hidden = false;
    const tb = $("#experiments tbody");
    tb.replaceChildren();
    for (const x of r.data.experiments) {
      tb.append(el("tr", {}, el("td", {}, x.file), el("td", {}, x.name || "-"), el("td", {}, x.policy || "-"),
        el("td", {}, x.variants || "-"), el("td", { title: x.digest }, el("code", {}, x.digest.slice(0, 12))),
        x.valid ? el("td", { class: "ok" }, "valid") : el("td", { class: "bad" }, "INVALID: " + x.error)));
    }
  }
  return r.data;
}

// ------------------------------------------------------------------ the editor
async function openFile(file, text) {
  const r = await api("GET", `/api/policies/${encodeURIComponent(file)}`);
  if (!r.ok) { $("#validation").textContent = r.data.error; return; }
  ed.file = file; ed.base = r.data.digest; ed.live = r.data.text;
  $("#editing").textContent = file;
  $("#base-digest").textContent = r.data.digest.slice(0, 12);
  $("#base-digest").title = r.data.digest;
  const editor = $("#editor");
  editor.disabled = false;
  editor.value = text === undefined ? r.data.text : text;
  $("#revert").disabled = false;
  $("#promote-result").textContent = "";
  setNumbers(r.data.numbers);
  loadMetrics(file);
  resize();
  await validateNow();
}

function resize() {
  const editor = $("#editor");
  const n = editor.value.split("\n").length;
  editor.style.height = (n * 18 + 14) + "px";
  drawGutter([]);
}

function drawGutter(badLines) {
  const n = $("#editor").value.split("\n").length;
  const bad = new Set(badLines);
  const g = $("#gutter");
  g.replaceChildren();
  for (let i = 1; i <= n; i++) {
    g.append(bad.has(i) ? el("span", { class: "err", "data-line": i }, String(i)) : document.createTextNode(i + "\n"));
  }
}

function scheduleValidate() {
  resize();
  $("#validation").textContent = "checking…";
  $("#validation").className = "status";
  setButtons(false);
  clearTimeout(ed.timer);
  ed.timer = setTimeout(validateNow, 300);
}

async function validateNow() {
  const seq = ++ed.seq;
  const text = $("#editor").value;
  const r = await api("POST", "/api/validate", { file: ed.file, text });
  if (seq !== ed.seq) return;  // a newer keystroke is being checked
  const v = $("#validation"), list = $("#issues");
  list.replaceChildren();
  if (!r.ok) { v.textContent = r.data.error; v.className = "status bad"; ed.valid = false; setButtons(false); return; }
  ed.valid = r.data.valid;
  if (r.data.valid) {
    const changed = text !== ed.live;
    v.textContent = `valid: policy ${r.data.name}, version ${r.data.version}` + (changed ? " (edited)" : " (as live)");
    v.className = "status ok";
    if (r.data.log_problem) list.append(el("li", {}, r.data.log_problem));
    drawGutter([]);
    setNumbers(r.data.numbers);
  } else {
    v.textContent = `${r.data.issues.length} error${r.data.issues.length === 1 ? "" : "s"}: nothing can be previewed or promoted`;
    v.className = "status bad";
    for (const i of r.data.issues) list.append(el("li", { "data-line": i.line, "data-path": i.path }, i.text));
    drawGutter(r.data.issues.map((i) => i.line).filter((x) => x > 0));
  }
  setButtons(r.data.valid && !r.data.log_problem);
}

function setButtons(valid) {
  const text = $("#editor").value;
  $("#preview").disabled = !(valid && HAS_LOG);
  $("#pareto").disabled = !(valid && HAS_LOG);
  const p = $("#promote");
  if (p) p.disabled = !(ed.valid && text !== ed.live);
}

// ------------------------------------------------------------------ jobs
async function runJob(start, box, onDone) {
  const prog = $(box + "-progress"), err = $(box + "-error");
  err.textContent = "";
  const r = await start();
  if (!r.ok) {
    err.textContent = r.data.error + (r.data.issues && r.data.issues.length ? "" : "");
    return;
  }
  prog.hidden = false;
  let job = r.data;
  while (job.state === "queued" || job.state === "running") {
    showProgress(prog, job);
    // a long poll: answered the moment the job ends, or after 0.25 s with its progress
    const s = await api("GET", `/api/jobs/${job.id}?wait=0.25`);
    if (!s.ok) { err.textContent = s.data.error; prog.hidden = true; return; }
    job = s.data;
  }
  showProgress(prog, job);
  if (job.state === "failed") { err.textContent = job.error; return; }
  onDone(job);
}

function showProgress(prog, job) {
  prog.querySelector(".bar").style.width = Math.round(100 * job.fraction) + "%";
  const label = prog.querySelector(".label");
  if (job.state === "done") label.textContent = `done in ${job.seconds.toFixed(1)} s`;
  else if (job.state === "failed") label.textContent = `failed after ${job.seconds.toFixed(1)} s`;
  else if (job.state === "queued") label.textContent = `queued: ${job.phase}`;
  else label.textContent = `${job.phase}: ${job.seconds.toFixed(1)} s of about ${job.expected_seconds} s (estimate)`;
}

// ------------------------------------------------------------------ preview
async function doPreview() {
  const sample = parseInt($("#sample").value, 10);
  $("#preview").disabled = true;
  await runJob(() => api("POST", "/api/preview", { file: ed.file, text: $("#editor").value, sample }),
    "#preview", (job) => showPreview(job.result));
  setButtons(ed.valid);
}

function showPreview(res) {
  $("#preview-result").hidden = false;
  $("#preview-header").textContent = res.header;
  const ul = $("#preview-lines");
  ul.replaceChildren(...res.lines.map((l) => el("li", {}, l)), ...res.notes.map((n) => el("li", { class: "small" }, n)));
  // exposure shares, live vs proposed: the values that move most, per attribute
  const labels = [], live = [], prop = [];
  for (const [attr, rows] of Object.entries(res.exposure)) {
    for (const r of rows) { labels.push(`${attr}=${r.value}`); live.push(100 * r.live); prop.push(100 * r.proposed); }
  }
  Plotly.react("plot-exposure", [
    { type: "bar", name: "live", x: labels, y: live, marker: { color: LIVE } },
    { type: "bar", name: "proposed", x: labels, y: prop, marker: { color: PROPOSED } },
  ], { title: { text: "exposure share (%), values that move most" }, barmode: "group",
       margin: { t: 40, b: 40, l: 50, r: 10 }, legend: { orientation: "h", y: 1.12 },
       xaxis: { tickangle: -40, automargin: true } },
  { displayModeBar: false, responsive: false });
  // the expected metrics' changes (relative, %) with their 95 % CIs (the off-policy estimates and
  // the rest are in the tables: their intervals can be orders of magnitude wider)
  const d = res.deltas.filter((x) => x.name.startsWith("expected_"));
  Plotly.react("plot-deltas", [{
    type: "bar", orientation: "h", y: d.map((x) => x.name.replace("expected_", "expected ")), x: d.map((x) => 100 * x.relative),
    marker: { color: d.map((x) => (x.relative >= 0 ? PROPOSED : LIVE)) },
    error_x: { type: "data", symmetric: false,
               array: d.map((x) => (x.rel_high == null ? 0 : 100 * (x.rel_high - x.relative))),
               arrayminus: d.map((x) => (x.rel_low == null ? 0 : 100 * (x.relative - x.rel_low))) },
  }], { title: { text: "expected metrics, proposed vs live (% change, 95 % CI)" }, margin: { t: 40, l: 160, r: 10, b: 40 },
        yaxis: { automargin: true } }, { displayModeBar: false, responsive: false });
  const box = $("#preview-tables");
  box.replaceChildren();
  for (const t of res.tables) {
    box.append(el("h3", {}, t.title));
    const table = el("table", {}, el("thead", {}, el("tr", {}, ...t.header.map((h) => el("th", {}, h)))));
    const tb = el("tbody");
    for (const row of t.rows) tb.append(el("tr", {}, ...row.map((c) => el("td", {}, c))));
    table.append(tb);
    box.append(table);
  }
}

// ------------------------------------------------------------------ pareto
function setNumbers(numbers) {
  ed.numbers = numbers || [];
  for (const sel of document.querySelectorAll("#vary-rows select")) fillSelect(sel, sel.value);
  if (!document.querySelector("#vary-rows .row") && ed.numbers.length) addVary();
}

function fillSelect(sel, keep) {
  sel.replaceChildren(...ed.numbers.map((p) => el("option", { value: p }, p)));
  if (keep && ed.numbers.includes(keep)) sel.value = keep;
}

function addVary() {
  const sel = el("select", { class: "vary-path" });
  fillSelect(sel);
  const pref = ed.numbers.find((p) => p.startsWith("objective.weights.")) || ed.numbers[0];
  if (pref) sel.value = pref;
  const row = el("div", { class: "row" }, sel,
    el("label", {}, "from ", el("input", { type: "number", class: "vary-lo", value: "0", step: "any" })),
    el("label", {}, "to ", el("input", { type: "number", class: "vary-hi", value: "2", step: "any" })),
    el("label", {}, "values ", el("input", { type: "number", class: "vary-n", value: "5", min: "1" })),
    el("button", { type: "button", class: "link", onclick: () => row.remove() }, "remove"));
  $("#vary-rows").append(row);
}

async function loadMetrics(file) {
  if (!HAS_LOG) return;
  const r = await api("GET", `/api/metrics?file=${encodeURIComponent(file)}`);
  if (r.ok) $("#metric-list").replaceChildren(...r.data.metrics.map((m) => el("option", { value: m })));
}

async function doPareto() {
  const vary = [...document.querySelectorAll("#vary-rows .row")].map((row) => ({
    path: row.querySelector(".vary-path").value, lo: row.querySelector(".vary-lo").value,
    hi: row.querySelector(".vary-hi").value, n: row.querySelector(".vary-n").value }));
  const metrics = [...document.querySelectorAll("input.metric")].map((m) => m.value.trim()).filter((m) => m);
  const refine = parseInt($("#refine").value, 10);
  const sample = parseInt($("#sample").value, 10);
  $("#pareto").disabled = true;
  await runJob(() => api("POST", "/api/pareto", { file: ed.file, text: $("#editor").value, vary, metrics, refine, sample }),
    "#pareto", (job) => showPareto(job));
  setButtons(ed.valid);
}

function showPareto(job) {
  const res = job.result;
  lastSweep = { job: job.id, res };
  const [mx, my] = res.metrics;
  const ok = res.points.filter((p) => !p.error);
  const trace = (pts, name, color, size) => ({
    type: "scatter", mode: "markers", name, x: pts.map((p) => p.metrics[mx.name]), y: pts.map((p) => p.metrics[my.name]),
    customdata: pts.map((p) => p.index), marker: { color, size, line: { color: "#333", width: 1 } },
    text: pts.map((p) => Object.entries(p.values).map(([k, v]) => `${k} = ${+v.toPrecision(4)}`).join("<br>")),
    hovertemplate: "%{text}<extra></extra>",
    error_x: errorBars(pts, mx.name), error_y: errorBars(pts, my.name),
  });
  const front = ok.filter((p) => p.frontier).sort((a, b) => a.metrics[mx.name] - b.metrics[mx.name]);
  const box = $("#plot-pareto");
  box.hidden = false;
  const frontTrace = trace(front, "frontier", FRONTIER, 12);
  const mz = res.metrics[2];
  if (mz) {  // a third metric: the frontier points' colour
    frontTrace.marker.color = front.map((p) => p.metrics[mz.name]);
    Object.assign(frontTrace.marker, { colorscale: "Viridis", showscale: true,
      colorbar: { title: { text: mz.name + (mz.minimise ? " (lower is better)" : "") } } });
  }
  Plotly.react(box, [trace(ok.filter((p) => !p.frontier), "dominated", DOMINATED, 9), frontTrace],
  { title: { text: `${res.file}: ${front.length} of ${ok.length} points on the frontier (${res.sample}); click a point` },
    xaxis: { title: { text: mx.name + (mx.minimise ? " (lower is better)" : "") } },
    yaxis: { title: { text: my.name + (my.minimise ? " (lower is better)" : "") } },
    hovermode: "closest", margin: { t: 50 } }, { displayModeBar: false, responsive: false });
  box.removeAllListeners && box.removeAllListeners("plotly_click");
  box.on("plotly_click", (ev) => { if (ev.points.length) showPoint(ev.points[0].customdata); });
}

function errorBars(pts, name) {
  const has = pts.some((p) => p.ci[name]);
  if (!has) return { visible: false };
  return { type: "data", symmetric: false, color: "#999", thickness: 1, width: 2,
           array: pts.map((p) => (p.ci[name] ? p.ci[name][1] - p.metrics[name] : 0)),
           arrayminus: pts.map((p) => (p.ci[name] ? p.metrics[name] - p.ci[name][0] : 0)) };
}

function showPoint(index) {
  const p = lastSweep.res.points.find((x) => x.index === index);
  $("#point").hidden = false;
  $("#point").dataset.index = index;
  $("#point-title").textContent = `point ${index} (${p.frontier ? "on the frontier" : "dominated"}): ` +
    Object.entries(p.values).map(([k, v]) => `${k} = ${+v.toPrecision(6)}`).join(", ");
  const t = $("#point-metrics");
  t.replaceChildren(el("tr", {}, el("th", {}, "metric"), el("th", {}, "value"), el("th", {}, "95 % CI")),
    ...Object.entries(p.metrics).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, (+v).toPrecision(5)),
      el("td", {}, p.ci[k] ? `${(+p.ci[k][0]).toPrecision(4)} to ${(+p.ci[k][1]).toPrecision(4)}` : "-"))));
  showDiff($("#point-diff"), p.diff || "(the same as the live file)");
}

async function editPoint() {
  const index = parseInt($("#point").dataset.index, 10);
  const r = await api("GET", `/api/pareto/${lastSweep.job}/${index}`);
  if (!r.ok) { $("#pareto-error").textContent = r.data.error; return; }
  if (r.data.file !== ed.file) await openFile(r.data.file, r.data.text);
  else { $("#editor").value = r.data.text; resize(); await validateNow(); }
  $("#editor-box").scrollIntoView();
}

function showDiff(pre, text) {
  pre.replaceChildren(...text.split("\n").map((line) => el("span", {
    class: line.startsWith("@@") ? "hunk" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "" }, line + "\n")));
}

// ------------------------------------------------------------------ promote
async function askPromote() {
  const r = await api("POST", "/api/diff", { file: ed.file, text: $("#editor").value });
  if (!r.ok) { $("#promote-result").textContent = r.data.error; return; }
  $("#confirm-file").textContent = ed.file;
  showDiff($("#confirm-diff"), r.data.diff);
  $("#confirm-error").textContent = "";
  const tok = $("#token");
  if (tok) tok.value = sessionStorage.getItem("workbench-token") || "";
  $("#confirm").showModal();
}

async function confirmPromote() {
  const headers = {};
  const tok = $("#token");
  if (tok) { headers["X-Workbench-Token"] = tok.value; sessionStorage.setItem("workbench-token", tok.value); }
  const text = $("#editor").value;
  const r = await api("POST", "/api/promote", { file: ed.file, text, base_digest: ed.base }, headers);
  const res = $("#promote-result");
  if (!r.ok) {
    $("#confirm-error").textContent = r.data.error;
    res.textContent = `not promoted (HTTP ${r.status}): ${r.data.error}`;
    res.className = "status bad";
    if (r.status !== 401 && r.status !== 403) $("#confirm").close();
    return;
  }
  $("#confirm").close();
  res.textContent = `promoted ${r.data.file}: sha256 ${r.data.previous.slice(0, 12)} -> ${r.data.digest.slice(0, 12)}; ` +
    "the running servers reload it.";
  res.className = "status ok";
  ed.base = r.data.digest; ed.live = text;
  $("#base-digest").textContent = r.data.digest.slice(0, 12);
  $("#base-digest").title = r.data.digest;
  await loadState();
  await validateNow();
}

// ------------------------------------------------------------------ wiring
$("#editor").addEventListener("input", scheduleValidate);
$("#revert").addEventListener("click", () => openFile(ed.file));
$("#preview").addEventListener("click", doPreview);
$("#pareto").addEventListener("click", doPareto);
$("#add-vary").addEventListener("click", addVary);
$("#edit-point").addEventListener("click", editPoint);
if ($("#promote")) {
  $("#promote").addEventListener("click", askPromote);
  $("#confirm-ok").addEventListener("click", confirmPromote);
  $("#confirm-cancel").addEventListener("click", () => $("#confirm").close());
}
loadState().then((s) => {
  const first = new URLSearchParams(location.search).get("file") || (s.policies.find((p) => p.valid) || {}).file;
  if (first) openFile(first);
});

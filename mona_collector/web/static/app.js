// The mona dashboard: draws each page from the JSON API (/api/...). The state lives in the URL
// (path and query), so a link can be shared; data is refreshed every REFRESH_MS while the page is shown.
// Text from the database is only ever set as textContent, never parsed as HTML.
"use strict";

const REFRESH_MS = 30000;
const PERIOD_KEYS = ["since", "until", "baseline"];
const COLORS = { mean: "#1565c0", p90: "#ef6c00", band: "rgba(144,164,174,0.25)", base: "#90a4ae" };

// --- small helpers -------------------------------------------------------------------------------

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of [].concat(children || [])) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value) && Math.abs(value) < 1e15) return value.toLocaleString("en");
  return Number(value.toPrecision(digits)).toString();
}

function pct(value) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)} %`;
}

function fmtTime(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return new Date(seconds * 1000).toISOString().replace(/\.\d+Z$/, "Z").replace("T", " ");
}

function badge(status) {
  const kind = status === "insufficient data" ? "insufficient" : status;
  return el("span", { class: `status status-${kind}`, text: status });
}

function query() {
  return new URLSearchParams(location.search);
}

// The time range and baseline of the address, to carry into every link and API call.
function periodParams() {
  const out = new URLSearchParams();
  const current = query();
  for (const key of PERIOD_KEYS) if (current.get(key)) out.set(key, current.get(key));
  return out;
}

function link(path, extra) {
  const params = periodParams();
  for (const [key, value] of extra || []) params.append(key, value);
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

class ApiError extends Error {}

async function api(path, params) {
  const text = params && params.toString();
  const response = await fetch(text ? `${path}?${text}` : path, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new ApiError(body.error || `HTTP ${response.status}`);
  return body;
}

function chartWidth(container) {
  return Math.max(240, Math.floor(container.getBoundingClientRect().width) - 4);
}

// --- charts (uPlot) ------------------------------------------------------------------------------

function sparkline(container, counts, start, step) {
  const xs = counts.map((_, i) => start + i * step);
  const opts = {
    width: 160, height: 32, class: "sparkline", pxAlign: false,
    cursor: { show: false }, legend: { show: false }, select: { show: false },
    scales: { x: { time: false }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    axes: [{ show: false }, { show: false }],
    series: [{}, { stroke: COLORS.mean, fill: "rgba(21,101,192,0.15)", width: 1, points: { show: false } }],
  };
  return new uPlot(opts, [xs, counts], container);
}

function timeSeriesChart(container, kapi, report) {
  const step = report.overview.bucket_seconds;
  const start = report.window.start;
  const mean = kapi.series.mean;
  const xs = mean.map((_, i) => start + i * step);
  const base = kapi.baseline;
  const flat = (value) => xs.map(() => (value === null ? null : value));
  const opts = {
    width: chartWidth(container), height: 200,
    scales: { x: { time: true } },
    series: [
      {},
      { label: "mean", stroke: COLORS.mean, width: 2, spanGaps: true },
      { label: "p90", stroke: COLORS.p90, width: 1.5, spanGaps: true },
      { label: "baseline p90", stroke: COLORS.base, dash: [4, 4], width: 1, points: { show: false } },
      { label: "baseline mean", stroke: COLORS.base, width: 1, points: { show: false } },
    ],
    bands: [{ series: [3, 4], fill: COLORS.band }],
    axes: [{}, { size: 60 }],
  };
  return new uPlot(opts, [xs, mean, kapi.series.p90, flat(base.p90), flat(base.mean)], container);
}

function histogramChart(container, kapi) {
  const bins = kapi.bins;
  const total = (counts) => counts.reduce((a, b) => a + b, 0) || 1;
  const share = (counts) => counts.map((count) => count / total(counts));
  const xs = bins.window.map((_, i) => i);
  const edges = bins.edges;
  const label = (i) => (i === 0 ? `≤${fmt(edges[0], 2)}` : i >= edges.length ? `>${fmt(edges[edges.length - 1], 2)}` : `≤${fmt(edges[i], 2)}`);
  const bars = uPlot.paths.bars;
  const opts = {
    width: chartWidth(container), height: 160,
    scales: { x: { time: false, range: [-0.5, xs.length - 0.5] }, y: { range: (u, min, max) => [0, max * 1.1 || 1] } },
    series: [
      { value: (u, i) => (i === null ? "" : label(i)) },
      { label: "window", stroke: COLORS.mean, fill: "rgba(21,101,192,0.5)", paths: bars({ size: [0.4], align: -1 }), points: { show: false }, value: (u, v) => pct(v) },
      { label: "baseline", stroke: COLORS.base, fill: "rgba(144,164,174,0.6)", paths: bars({ size: [0.4], align: 1 }), points: { show: false }, value: (u, v) => pct(v) },
    ],
    axes: [{ values: (u, splits) => splits.map((i) => (Number.isInteger(i) ? label(i) : "")), space: 30 }, { size: 50, values: (u, splits) => splits.map((v) => `${Math.round(v * 100)}%`) }],
  };
  if (bins.window.length === 0) return null;
  return new uPlot(opts, [xs, share(bins.window), share(bins.baseline)], container);
}

// --- tables --------------------------------------------------------------------------------------

function table(headers, rows, options = {}) {
  const head = el("tr", {}, headers.map((h) => el("th", { class: h.num ? "num" : "", text: h.label })));
  const body = el("tbody", {}, rows);
  const node = el("table", { class: options.class || "" }, [el("thead", {}, head), body]);
  if (options.sortable) makeSortable(node, headers);
  return node;
}

// Click a column header to sort by it (again: the other way round). Cells sort by data-sort.
function makeSortable(node, headers) {
  const ths = node.querySelectorAll("th");
  ths.forEach((th, column) => {
    th.classList.add("sortable");
    th.addEventListener("click", () => {
      const descending = !th.classList.contains("sorted-desc");
      ths.forEach((other) => other.classList.remove("sorted-asc", "sorted-desc"));
      th.classList.add(descending ? "sorted-desc" : "sorted-asc");
      const body = node.querySelector("tbody");
      const rows = Array.from(body.children);
      const key = (row) => {
        const cell = row.children[column];
        const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent;
        const number = Number(raw);
        return headers[column].num && raw !== "" && !Number.isNaN(number) ? number : raw.toLowerCase();
      };
      rows.sort((a, b) => {
        const x = key(a), y = key(b);
        const order = x < y ? -1 : x > y ? 1 : 0;
        return descending ? -order : order;
      });
      body.append(...rows);
    });
  });
}

// A table row that opens ``target`` when clicked anywhere (its link handles clicks on itself).
function rowLink(target) {
  return (event) => { if (!event.target.closest("a")) navigate(target); };
}

function cell(value, options = {}) {
  const node = el("td", { class: options.num ? "num" : "" }, [value instanceof Node ? value : String(value)]);
  if (options.sort !== undefined && options.sort !== null) node.dataset.sort = String(options.sort);
  return node;
}

function keyValues(entries) {
  const rows = entries.map(([key, value]) => el("tr", {}, [el("td", { text: key }), el("td", { text: typeof value === "object" && value !== null ? JSON.stringify(value) : fmt(value, 6) })]));
  return el("table", { class: "kv" }, el("tbody", {}, rows));
}

// --- pages ---------------------------------------------------------------------------------------

async function overviewPage(main) {
  const data = await api("/api/classes", periodParams());
  main.replaceChildren(
    el("h1", { text: "ARC classes" }),
    el("p", { class: "muted", text: `Window ${fmtTime(data.window.start)} – ${fmtTime(data.window.end)}; baseline ${fmtTime(data.baseline.start)} – ${fmtTime(data.baseline.end)}` }),
  );
  if (data.classes.length === 0) {
    main.append(el("p", { text: "No ARC with a class in this database yet." }));
    return;
  }
  const charts = [];
  const rows = data.classes.map((row) => {
    const spark = el("div", { class: "chart sparkline-cell" });
    charts.push(() => sparkline(spark, row.arcs_per_bucket, data.window.start, row.bucket_seconds));
    const drift = row.worst_drift;
    const target = link(`/class/${encodeURIComponent(row.arc_class)}`);
    return el("tr", { class: "clickable", "data-class": row.arc_class, onclick: rowLink(target) }, [
      cell(el("a", { href: target, text: row.arc_class })),
      cell(badge(row.status), { sort: row.status }),
      cell(fmt(row.arcs_window), { num: true, sort: row.arcs_window }),
      cell(fmt(row.arcs_baseline), { num: true, sort: row.arcs_baseline }),
      cell(spark),
      cell(fmt(row.open_alerts), { num: true, sort: row.open_alerts }),
      cell(drift ? el("span", {}, [`${drift.kapi} PSI ${fmt(drift.psi)} `, badge(drift.status)]) : "–"),
    ]);
  });
  main.append(table([
    { label: "class" }, { label: "status" }, { label: "ARCs in window", num: true }, { label: "ARCs in baseline", num: true },
    { label: "ARCs per hour" }, { label: "open alerts", num: true }, { label: "worst drift" },
  ], rows, { sortable: true, class: "overview" }));
  charts.forEach((draw) => draw());
}

function kapiCard(kapi, report) {
  const series = el("div", { class: "chart series-chart" });
  const histogram = el("div", { class: "chart histogram-chart" });
  const drift = Object.entries(kapi.drift).map(([name, m]) =>
    el("tr", {}, [cell(name), cell(fmt(m.value), { num: true }), cell(fmt(m.warn), { num: true }), cell(fmt(m.alert), { num: true }), cell(badge(m.status))]));
  const stats = ["n", "mean", "std", "p50", "p90", "max"].map((key) =>
    el("tr", {}, [cell(key), cell(fmt(kapi.window[key]), { num: true }), cell(fmt(kapi.baseline[key]), { num: true })]));
  const card = el("section", { class: "card kapi", "data-kapi": kapi.name }, [
    el("h3", {}, [`${kapi.name} `, badge(kapi.status)]),
    el("div", { class: "muted", text: "hourly mean and p90; the band spans the baseline's mean to p90" }),
    series,
    el("div", { class: "muted", text: "share of values per baseline decile: window vs baseline" }),
    histogram,
    table([{ label: "drift" }, { label: "value", num: true }, { label: "warn", num: true }, { label: "alert", num: true }, { label: "status" }], drift, { class: "drift" }),
    table([{ label: "" }, { label: "window", num: true }, { label: "baseline", num: true }], stats),
  ]);
  return { card, draw: () => { timeSeriesChart(series, kapi, report); histogramChart(histogram, kapi); } };
}

function segmentTable(report) {
  const arcClass = report.arc_class;
  const rows = report.segments.map((row) => {
    const filters = Object.entries(row.segment).map(([name, value]) => ["filter", `${name} = ${value}`]);
    const target = link("/arcs", [["arc_class", arcClass], ...filters]);
    const label = Object.entries(row.segment).map(([name, value]) => `${name} = ${value}`).join(", ");
    return el("tr", { class: "clickable segment", onclick: rowLink(target) }, [
      cell(el("a", { href: target, text: label })),
      cell(row.kind), cell(row.kapi === null ? "–" : row.kapi),
      cell(fmt(row.value), { num: true, sort: row.value }), cell(fmt(row.baseline), { num: true, sort: row.baseline }),
      cell(fmt(row.n), { num: true, sort: row.n }), cell(fmt(row.score), { num: true, sort: row.score }),
      cell(badge(row.status), { sort: row.severity }), cell(row.reason),
    ]);
  });
  if (rows.length === 0) return el("p", { class: "muted", text: "No segment stands out." });
  return table([
    { label: "segment" }, { label: "kind" }, { label: "KAPI" }, { label: "now", num: true }, { label: "baseline", num: true },
    { label: "n", num: true }, { label: "score", num: true }, { label: "status" }, { label: "reason" },
  ], rows, { sortable: true, class: "segments" });
}

function dimensionCard(dimension) {
  const bar = (share, kind) => el("span", { class: `share-bar ${kind}` });
  const rows = dimension.values.map((value) => {
    const now = bar(value.share_window, "window");
    const then = bar(value.share_baseline, "baseline");
    now.style.width = `${Math.round((value.share_window || 0) * 120)}px`;
    then.style.width = `${Math.round((value.share_baseline || 0) * 120)}px`;
    return el("tr", {}, [cell(value.value), cell(el("span", {}, [now, ` ${pct(value.share_window)}`])), cell(el("span", {}, [then, ` ${pct(value.share_baseline)}`]))]);
  });
  const psi = dimension.drift.psi;
  return el("section", { class: "card dimension" }, [
    el("h3", {}, [`${dimension.name} `, badge(dimension.status)]),
    el("div", { class: "muted", text: `PSI ${fmt(psi.value)} (warn ${fmt(psi.warn)}, alert ${fmt(psi.alert)}); ${dimension.new_values_total} new value(s)` }),
    table([{ label: "value" }, { label: "share now" }, { label: "share in baseline" }], rows),
  ]);
}

function metricsSection(metrics) {
  // Model metrics per day, when the report has labels to compute them from.
  const days = Array.isArray(metrics) ? metrics : metrics.days || [];
  if (days.length === 0) return null;
  const keys = Object.keys(days[0]);
  return table(keys.map((key) => ({ label: key })), days.map((day) => el("tr", {}, keys.map((key) => cell(fmt(day[key]))))));
}

async function classPage(main, arcClass) {
  const params = periodParams();
  const by = query().get("by");
  if (by) params.set("by", by);
  const report = await api(`/api/classes/${encodeURIComponent(arcClass)}/report`, params);
  const kapis = report.kapis.map((kapi) => kapiCard(kapi, report));
  main.replaceChildren(
    el("h1", {}, [`${arcClass} `, badge(report.status)]),
    el("p", { class: "muted", text: `${fmt(report.window.arcs)} ARCs in ${fmtTime(report.window.start)} – ${fmtTime(report.window.end)}; ${fmt(report.baseline.arcs)} in the baseline ${fmtTime(report.baseline.start)} – ${fmtTime(report.baseline.end)}` }),
    el("h2", { text: "Segment insights" }),
    segmentTable(report),
    el("h2", { text: "KAPIs" }),
    el("div", { class: "cards" }, kapis.map((k) => k.card)),
    el("h2", { text: "Dimensions: share now vs baseline" }),
    el("div", { class: "cards" }, report.dimensions.map(dimensionCard)),
  );
  if (report.metrics) {
    const section = metricsSection(report.metrics);
    if (section) main.append(el("h2", { text: "Model metrics per day" }), section);
  }
  kapis.forEach((k) => k.draw());
}

function splitFilters(text) {
  return text.split(";").map((part) => part.trim()).filter((part) => part);
}

async function explorerPage(main) {
  const current = query();
  const form = el("form", { class: "toolbar", id: "arc-search" }, [
    el("input", { name: "id", placeholder: "ARC id", value: current.get("id") || "" }),
    el("input", { name: "arc_class", placeholder: "class", value: current.get("arc_class") || "" }),
    el("input", { name: "filters", placeholder: "filters: country = DE; score < 0.5", value: current.getAll("filter").join("; ") }),
    el("button", { type: "submit", text: "Search" }),
  ]);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const extra = [];
    for (const name of ["id", "arc_class"]) if (form.elements[name].value.trim()) extra.push([name, form.elements[name].value.trim()]);
    for (const filter of splitFilters(form.elements.filters.value)) extra.push(["filter", filter]);
    navigate(link("/arcs", extra));
  });
  main.replaceChildren(el("h1", { text: "ARC explorer" }), form);
  const params = periodParams();
  params.delete("baseline");
  for (const key of ["id", "arc_class", "cursor", "limit"]) if (current.get(key)) params.set(key, current.get(key));
  for (const filter of current.getAll("filter")) params.append("filter", filter);
  const page = await api("/api/arcs", params);
  const fieldNames = [];
  for (const arc of page.arcs) for (const name of Object.keys(arc.fields)) if (!fieldNames.includes(name) && fieldNames.length < 6) fieldNames.push(name);
  const rows = page.arcs.map((arc) => {
    const target = link(`/arc/${encodeURIComponent(arc.context_id)}`);
    return el("tr", { class: "clickable arc-row", onclick: rowLink(target) }, [
      cell(el("a", { href: target, text: arc.context_id })), cell(arc.arc_class === null ? "–" : arc.arc_class),
      cell(fmtTime(arc.first_export)), cell(fmt(arc.export_count), { num: true }),
      ...fieldNames.map((name) => cell(fmt(arc.fields[name]))),
    ]);
  });
  main.append(el("p", { class: "muted", text: `${page.arcs.length} ARC(s) shown, ${fmt(page.scanned)} read${page.partial ? " (stopped early: more may match further on)" : ""}` }));
  main.append(table([{ label: "id" }, { label: "class" }, { label: "first export" }, { label: "exports", num: true }, ...fieldNames.map((name) => ({ label: name }))], rows, { class: "arcs" }));
  const pager = el("div", { class: "pager" });
  if (current.get("cursor")) {
    const first = new URLSearchParams(current);
    first.delete("cursor");
    pager.append(el("a", { href: `/arcs?${first}`, text: "« first page" }));
  }
  if (page.next_cursor) {
    const next = new URLSearchParams(current);
    next.set("cursor", page.next_cursor);
    pager.append(el("a", { href: `/arcs?${next}`, class: "next", text: "next page »" }));
  }
  main.append(pager);
}

function subArcTree(subArcs) {
  const items = Object.entries(subArcs || {}).map(([id, node]) => el("li", {}, [
    el("strong", { text: node.arc_class ? `${node.arc_class} (${id})` : id }),
    keyValues(Object.entries(node.fields || {})),
    Object.keys(node.sub_arcs || {}).length ? subArcTree(node.sub_arcs) : null,
  ]));
  return el("ul", {}, items);
}

async function arcPage(main, contextId) {
  const data = await api(`/api/arcs/${encodeURIComponent(contextId)}`);
  main.replaceChildren(el("h1", { text: `ARC ${contextId}` }));
  for (const arc of data.arcs) {
    main.append(
      el("section", { class: "card arc" }, [
        keyValues([["user", arc.user_id], ["class", arc.arc_class], ["first export", fmtTime(arc.first_export)], ["last export", fmtTime(arc.last_export)], ["exports", arc.export_count]]),
        el("h2", { text: "Fields" }), keyValues(Object.entries(arc.fields || {})),
        el("h2", { text: "Globals" }), keyValues(Object.entries(arc.globals || {})),
        el("h2", { text: "Sub-ARCs" }), el("div", { class: "tree" }, subArcTree(arc.sub_arcs)),
      ]),
    );
  }
}

async function alertsPage(main) {
  const state = query().get("state") || "open";
  const data = await api("/api/alerts", new URLSearchParams({ state }));
  const tabs = ["open", "resolved", "all"].map((name) => el("a", { href: `/alerts?state=${name}`, class: name === state ? "active" : "", text: name }));
  main.replaceChildren(el("h1", { text: "Alerts" }), el("nav", { class: "toolbar" }, tabs));
  if (data.alerts.length === 0) {
    main.append(el("p", { class: "muted", text: `No ${state === "all" ? "" : state + " "}alert.` }));
    return;
  }
  const known = ["arc_class", "rule", "subject", "severity", "state", "opened_at", "resolved_at", "last_seen", "value", "threshold", "message"];
  const keys = known.filter((key) => data.alerts.some((alert) => key in alert));
  const rows = data.alerts.map((alert) => el("tr", {}, keys.map((key) => cell(key.endsWith("_at") ? fmtTime(alert[key]) : fmt(alert[key])))));
  main.append(table(keys.map((key) => ({ label: key.replace("_", " ") })), rows, { sortable: true, class: "alerts" }));
}

// --- routing, the period picker, refresh ---------------------------------------------------------

function route() {
  const path = location.pathname;
  if (path.startsWith("/class/")) return ["overview", (main) => classPage(main, decodeURIComponent(path.slice(7)))];
  if (path.startsWith("/arc/")) return ["arcs", (main) => arcPage(main, decodeURIComponent(path.slice(5)))];
  if (path === "/arcs") return ["arcs", explorerPage];
  if (path === "/alerts") return ["alerts", alertsPage];
  return ["overview", overviewPage];
}

let rendering = false;

async function render() {
  if (rendering) return;
  rendering = true;
  const [page, draw] = route();
  syncPeriods();
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  const main = document.getElementById("main");
  try {
    await draw(main);
    document.getElementById("footer").textContent = `updated ${fmtTime(Date.now() / 1000)}`;
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    main.replaceChildren(el("p", { class: "problem", text: error.message }));
  } finally {
    rendering = false;
  }
}

function navigate(target) {
  history.pushState(null, "", target);
  render();
}

// Fill the period picker from the address.
function syncPeriods() {
  const form = document.getElementById("periods");
  const current = query();
  const since = current.get("since") || "24h";
  const custom = current.get("until") || !["1h", "24h", "7d"].includes(since);
  form.elements.range.value = custom ? "custom" : since;
  form.elements.since.value = custom ? since : "";
  form.elements.until.value = current.get("until") || "";
  const baseline = current.get("baseline") || "7d";
  const customBaseline = !["24h", "7d", "30d"].includes(baseline);
  form.elements.baseline.value = customBaseline ? "custom" : baseline;
  form.elements.baseline_custom.value = customBaseline ? baseline : "";
  toggleCustom(form);
}

function toggleCustom(form) {
  form.classList.toggle("show-range", form.elements.range.value === "custom");
  form.classList.toggle("show-baseline", form.elements.baseline.value === "custom");
}

function setupPeriods() {
  const form = document.getElementById("periods");
  form.addEventListener("change", (event) => {
    toggleCustom(form);
    if (event.target.tagName === "SELECT" && event.target.value !== "custom") form.requestSubmit();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = query();
    const range = form.elements.range.value;
    params.set("since", range === "custom" ? form.elements.since.value.trim() || "24h" : range);
    const until = form.elements.until.value.trim();
    if (range === "custom" && until) params.set("until", until); else params.delete("until");
    const choice = form.elements.baseline.value;
    params.set("baseline", choice === "custom" ? form.elements.baseline_custom.value.trim() || "7d" : choice);
    params.delete("cursor");
    navigate(`${location.pathname}?${params}`);
  });
}

document.addEventListener("click", (event) => {
  // Links inside the dashboard change the page without reloading it; a click on a row follows its link.
  const anchor = event.target.closest && event.target.closest("a[href^='/']");
  if (!anchor || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  event.stopPropagation();
  navigate(anchor.getAttribute("href"));
});
window.addEventListener("popstate", render);
window.addEventListener("DOMContentLoaded", () => {
  setupPeriods();
  render();
  setInterval(() => { if (document.visibilityState === "visible" && !document.querySelector("form:focus-within")) render(); }, REFRESH_MS);
});

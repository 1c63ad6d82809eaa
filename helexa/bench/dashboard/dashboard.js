// helexa bench dashboard: reads the bench API's JSON and draws plain SVG line charts.
// No libraries and no network beyond the bench API, so it works on an offline fleet.
//
// URL parameters: host, model, scenario (the filters, kept in the URL so a view can be shared),
// refresh (seconds between reloads, default 60), api (the bench API's base URL when this page is
// served from elsewhere; the API answers cross-origin GETs).
"use strict";

const params = new URLSearchParams(location.search);
const API = params.has("api") ? params.get("api").replace(/\/+$/, "") + "/" : "";
const REFRESH_S = Math.max(1, Number(params.get("refresh")) || 60);
const FILTERS = ["host", "model", "scenario"];
const METRICS = [
  { key: "ttft_s", title: "Time to first token", unit: "s", digits: 3, lowerIsBetter: true },
  { key: "decode_tps", title: "Decode speed", unit: "tokens/s", digits: 1, lowerIsBetter: false },
  { key: "total_s", title: "Total time", unit: "s", digits: 3, lowerIsBetter: true },
];
// Okabe-Ito: tells lines apart for colour-blind readers too.
const COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999"];
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, text = null, parent = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function svg(tag, attrs = {}, parent = null, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function selection() {
  const form = $("#filters");
  const chosen = {};
  for (const name of FILTERS) {
    const value = form.elements[name].value;
    if (value) chosen[name] = value;
  }
  return chosen;
}

function query(fields) {
  const q = new URLSearchParams(fields).toString();
  return q ? "?" + q : "";
}

function runsLink(fields) {
  return API + "api/runs" + query(fields);
}

async function getJSON(path) {
  let response;
  try {
    response = await fetch(API + path, { cache: "no-store" });
  } catch (err) {
    throw new Error(`Cannot reach the bench API at ${new URL(API || ".", location.href)}: ${err.message}`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    throw new Error(`${path}: HTTP ${response.status}, not JSON`);
  }
  if (!response.ok) {
    const message = body && body.error && body.error.message;
    const err = new Error(`The bench API refused ${path}: ${message || "HTTP " + response.status}`);
    err.status = response.status;
    throw err;
  }
  return body;
}

function fmt(value, digits) {
  return value === null || value === undefined ? "—" : value.toFixed(digits);
}

function showMessage(kind, text) {
  const box = $("#message");
  box.className = kind;
  box.textContent = text;
  box.hidden = false;
}

// ---- filters ---------------------------------------------------------------------------------

function fillFilters(dimensions) {
  const form = $("#filters");
  const lists = { host: dimensions.hosts, model: dimensions.models, scenario: dimensions.scenarios };
  for (const name of FILTERS) {
    const select = form.elements[name];
    const wanted = new URLSearchParams(location.search).get(name) || "";  // the URL is the source of truth
    while (select.options.length > 1) select.remove(1);
    const values = [...lists[name]];
    for (const value of values) {
      const label = name === "host" && dimensions.host_gpus[value] !== "-"
        ? `${value} (${dimensions.host_gpus[value]})` : value;
      el("option", { value }, label, select);
    }
    if (wanted && !values.includes(wanted)) el("option", { value: wanted }, `${wanted} (not measured)`, select);
    select.value = wanted;
  }
}

function onFilterChange() {
  const url = new URL(location.href);
  const chosen = selection();
  for (const name of FILTERS) {
    if (chosen[name]) url.searchParams.set(name, chosen[name]);
    else url.searchParams.delete(name);
  }
  history.replaceState(null, "", url);
  refresh();
}

// ---- the table of the latest build -----------------------------------------------------------

function changeCell(td, pct, lowerIsBetter) {
  if (pct === null || pct === undefined) return;
  const better = lowerIsBetter ? pct < 0 : pct > 0;
  const sign = pct > 0 ? "+" : "";
  td.appendChild(document.createTextNode(" "));
  el("span", { class: "change " + (pct === 0 ? "" : better ? "better" : "worse") }, `(${sign}${pct.toFixed(1)}%)`, td);
}

function renderTable(items, chosen) {
  const rows = items.filter((i) =>
    (!chosen.host || i.target_name === chosen.host) &&
    (!chosen.model || i.model_id === chosen.model) &&
    (!chosen.scenario || i.scenario_id === chosen.scenario));
  const section = $("#latest");
  section.hidden = rows.length === 0;
  const head = section.querySelector("thead tr");
  head.replaceChildren();
  const columns = ["target", "GPU", "model", "scenario", "prompt tok", "TTFT (s)", "decode (tokens/s)",
    "total (s)", "aggregate (tokens/s)", "build", "samples"];
  for (const column of columns) el("th", {}, column, head);
  const body = section.querySelector("tbody");
  body.replaceChildren();
  for (const item of rows) {
    const tr = el("tr", { "data-target": item.target_name, "data-model": item.model_id,
      "data-scenario": item.scenario_id }, null, body);
    el("td", {}, item.target_name, tr);
    el("td", {}, item.gpu, tr);
    el("td", {}, item.model_id, tr);
    el("td", {}, item.scenario_id, tr);
    el("td", { class: "number" }, item.prompt_tokens ? String(Math.round(item.prompt_tokens))
      : `~${item.prompt_size_approx}`, tr);
    for (const metric of METRICS) {
      const td = el("td", { class: "number", "data-metric": metric.key },
        fmt(item[`${metric.key}_median`], metric.digits), tr);
      changeCell(td, item[`${metric.key}_change_pct`], metric.lowerIsBetter);
    }
    el("td", { class: "number", "data-metric": "aggregate_tps" }, fmt(item.aggregate_tps_median, 1), tr);
    const build = el("td", {}, null, tr);
    el("a", { href: runsLink({ host: item.target_name, model: item.model_id, scenario: item.scenario_id,
      sha: item.git_sha }), title: "this build's raw runs" }, item.git_sha, build);
    el("td", { class: "number" }, String(item.samples), tr);
  }
}

// ---- charts ----------------------------------------------------------------------------------

function niceTop(max) {
  if (!(max > 0)) return { top: 1, step: 0.25 };
  const raw = max / 4;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const n = raw / magnitude;
  const step = (n <= 1 ? 1 : n <= 2 ? 2 : n <= 2.5 ? 2.5 : n <= 5 ? 5 : 10) * magnitude;
  return { top: step * Math.ceil(max / step), step };
}

function tick(value) {
  return String(Number(value.toPrecision(4)));
}

const tooltip = () => $("#tooltip");

function showTooltip(target, lines) {
  const box = tooltip();
  box.replaceChildren();
  lines.forEach((line, n) => {
    if (n) el("br", {}, null, box);
    if (n === 0) el("b", {}, line, box);
    else box.appendChild(document.createTextNode(line));
  });
  box.hidden = false;
  const at = target.getBoundingClientRect();
  const left = Math.min(window.scrollX + at.right + 8, window.scrollX + document.documentElement.clientWidth
    - box.offsetWidth - 4);
  box.style.left = `${Math.max(4, left)}px`;
  box.style.top = `${window.scrollY + at.top - box.offsetHeight - 6}px`;
}

function hideTooltip() {
  tooltip().hidden = true;
}

function drawChart(metric, group, builds, colourOf) {
  const W = 440, H = 250, left = 56, right = 14, top = 30, bottom = 52;
  const plotW = W - left - right, plotH = H - top - bottom;
  const shas = builds.map((b) => b.git_sha);
  const values = group.lines.flatMap((l) => l.points.map((p) => p[`${metric.key}_median`]))
    .filter((v) => v !== null);
  const { top: yTop, step } = niceTop(Math.max(...values, 0));
  const x = (sha) => left + plotW * (shas.indexOf(sha) + 0.5) / shas.length;
  const y = (value) => top + plotH * (1 - value / yTop);

  const chart = svg("svg", { class: "chart", "data-metric": metric.key, viewBox: `0 0 ${W} ${H}`,
    role: "img", "aria-label": `${metric.title} (${metric.unit}) per build` });
  svg("text", { class: "title", x: left, y: 16 }, chart, `${metric.title} (${metric.unit})`);
  for (let v = 0; v <= yTop + step / 2; v += step) {
    svg("line", { class: "grid", x1: left, x2: W - right, y1: y(v), y2: y(v) }, chart);
    svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, chart, tick(v));
  }
  svg("text", { x: 12, y: top + plotH / 2, transform: `rotate(-90 12 ${top + plotH / 2})`,
    "text-anchor": "middle" }, chart, metric.unit);
  svg("line", { class: "axis", x1: left, x2: W - right, y1: top + plotH, y2: top + plotH }, chart);
  svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: top + plotH }, chart);

  // Labels: the short sha, and the build's date under it; thinned out when builds are many.
  const every = Math.ceil(shas.length / 8);
  builds.forEach((build, n) => {
    if (n % every && n !== builds.length - 1) return;
    const link = svg("a", { class: "build", href: runsLink({ ...selectionFor(group), sha: build.git_sha }) }, chart);
    svg("title", {}, link, `raw runs of build ${build.git_sha} (${build.package_version})`);
    const label = svg("text", { x: x(build.git_sha), y: top + plotH + 16, "text-anchor": "middle" }, link);
    svg("tspan", { x: x(build.git_sha) }, label, build.git_sha.slice(0, 8));
    svg("tspan", { x: x(build.git_sha), dy: 13 }, label, build.date);
  });

  for (const line of group.lines) {
    const colour = colourOf(line.target_name);
    const points = line.points.filter((p) => p[`${metric.key}_median`] !== null);
    if (points.length > 1) {
      svg("polyline", { fill: "none", stroke: colour, "stroke-width": 2, "data-line": line.label,
        points: points.map((p) => `${x(p.git_sha)},${y(p[`${metric.key}_median`])}`).join(" ") }, chart);
    }
    for (const p of points) {
      const value = p[`${metric.key}_median`];
      const build = builds.find((b) => b.git_sha === p.git_sha);
      const text = [
        line.label,
        `build ${p.git_sha.slice(0, 8)} · ${build.date} · ${build.package_version}`,
        `median ${fmt(value, metric.digits)} ${metric.unit}`,
        `${p.samples} sample${p.samples === 1 ? "" : "s"}` + (p.failures ? `, ${p.failures} failed` : ""),
      ];
      const dot = svg("circle", { class: "point", cx: x(p.git_sha), cy: y(value), r: 4.5, fill: colour,
        tabindex: 0, "data-line": line.label, "data-build": p.git_sha, "data-value": value,
        "data-samples": p.samples }, chart);
      svg("title", {}, dot, text.join("\n"));
      dot.addEventListener("mouseenter", () => showTooltip(dot, text));
      dot.addEventListener("focus", () => showTooltip(dot, text));
      dot.addEventListener("mouseleave", hideTooltip);
      dot.addEventListener("blur", hideTooltip);
    }
  }
  return chart;
}

function selectionFor(group) {
  const chosen = selection();
  return { ...(chosen.host ? { host: chosen.host } : {}), model: group.model_id, scenario: group.scenario_id };
}

function renderCharts(data, hosts) {
  const holder = $("#charts");
  holder.replaceChildren();
  const colourOf = (target) => COLOURS[Math.max(0, hosts.indexOf(target)) % COLOURS.length];
  for (const group of data.charts) {
    const shas = new Set(group.lines.flatMap((l) => l.points.map((p) => p.git_sha)));
    const builds = data.builds.filter((b) => shas.has(b.git_sha));
    const section = el("section", { class: "chart-group", "data-model": group.model_id,
      "data-scenario": group.scenario_id }, null, holder);
    el("h3", {}, `${group.model_id} · ${group.scenario_id}`, section);
    const legend = el("div", { class: "legend" }, null, section);
    for (const line of group.lines) {
      const item = el("span", { class: "legend-item" }, null, legend);
      el("span", { class: "swatch", style: `background:${colourOf(line.target_name)}` }, null, item);
      item.appendChild(document.createTextNode(line.label));
    }
    const row = el("div", { class: "chart-row" }, null, section);
    for (const metric of METRICS) row.appendChild(drawChart(metric, group, builds, colourOf));
  }
}

// ---- the refresh loop ------------------------------------------------------------------------

let timer = null;
let generation = 0;  // a refresh started later (a filter change) wins over one still in flight

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

async function refresh() {
  const mine = ++generation;
  clearTimeout(timer);
  hideTooltip();
  try {
    const [health, dimensions] = await Promise.all([getJSON("api/health"), getJSON("api/dimensions")]);
    if (mine !== generation) return;
    fillFilters(dimensions);
    $("#overview").textContent = [plural(health.run_count, "run"), plural(dimensions.builds.length, "build"),
      plural(dimensions.models.length, "model"), plural(dimensions.hosts.length, "host")].join(" · ");
    if (dimensions.hosts.length === 0) {
      $("#latest").hidden = true;
      $("#charts").replaceChildren();
      showMessage("empty", "Nothing has been measured yet. The bench records runs during its first sweep "
        + `over its targets; this page looks again every ${REFRESH_S} s.`);
    } else {
      const chosen = selection();
      const [charts, summary] = await Promise.all([getJSON("api/charts" + query(chosen)),
        getJSON("api/summary")]);
      if (mine !== generation) return;
      $("#message").hidden = true;
      renderTable(summary, chosen);
      renderCharts(charts, dimensions.hosts);
    }
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}; next in ${REFRESH_S} s`;
  } catch (err) {
    if (mine !== generation) return;
    // What was drawn stays (it may be a passing outage); the message says what went wrong.
    showMessage("error", `${err.message}. Trying again in ${REFRESH_S} s.`);
    if (err.status >= 400 && err.status < 500) {  // this selection has no answer: drawing it would mislead
      $("#latest").hidden = true;
      $("#charts").replaceChildren();
    }
  }
  timer = setTimeout(refresh, REFRESH_S * 1000);
}

for (const name of FILTERS) $("#filters").elements[name].addEventListener("change", onFilterChange);
refresh();

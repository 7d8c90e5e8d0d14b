// ddpm-serve playground: plain JavaScript, no dependencies, no build step. Talks only to this origin.
"use strict";

const KEY_STORAGE = "ddpm-serve-api-key"; // sessionStorage: this tab only, gone when it closes
const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORAGE),
  models: [], // ModelCard[] from /v1/models
  tradeoff: null, // TradeoffResponse of the selected model
  running: null, // AbortController of the request in flight
};

class KeyNeeded extends Error {}

// ---- API -------------------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    askForKey(state.key ? "That key was refused; enter another." : "This server needs an API key.");
    throw new KeyNeeded();
  }
  return response;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    const error = body.error || {};
    return `${response.status} ${error.code || ""}: ${error.message || response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function askForKey(message) {
  $("key-form").hidden = false;
  setStatus(message);
  $("api-key").focus();
}

// ---- models, samplers, calibrated points -----------------------------------------------------

async function loadModels() {
  setStatus("Loading models…");
  const response = await api("/v1/models");
  if (!response.ok) throw new Error(await errorMessage(response));
  state.models = (await response.json()).models;
  fillSelect($("model"), state.models.map((m) => [m.name, m.name]));
  await selectModel();
  setStatus("Ready.");
}

function card() {
  return state.models.find((m) => m.name === $("model").value);
}

async function selectModel() {
  const model = card();
  const classes = model.num_classes
    ? model.class_names.map((name, i) => [String(i), `${i}: ${name}`])
    : [["", "unconditional"]];
  fillSelect($("class-label"), classes);
  $("num-images").max = model.max_num_images;
  $("steps").max = model.num_timesteps;
  $("steps").value = model.default_steps;
  const response = await api(`/v1/models/${encodeURIComponent(model.name)}/tradeoff`);
  state.tradeoff = response.ok ? await response.json() : null;
  fillSamplers(model);
  selectSampler();
}

// Sampler choices: the server's default, auto, every calibrated variant (with the request fields that
// run it, e.g. ddpm + variance fixed_small), then the samplers that have no calibrated points.
function fillSamplers(model) {
  const options = [
    ["default", "server default (learned-variance DDPM)"],
    ["auto", "auto: best calibrated sampler at this K"],
  ];
  const kinds = new Set(points().map((p) => p.sampler));
  for (const kind of kinds) options.push([kind, `${kind} (calibrated)`]);
  for (const name of model.samplers) if (name !== "auto" && !kinds.has(name)) options.push([name, name]);
  fillSelect($("sampler"), options);
}

function points() {
  return state.tradeoff ? state.tradeoff.points : [];
}

// The calibrated points the K slider and the chart show for the chosen sampler.
function shownPoints() {
  const choice = $("sampler").value;
  const all = points();
  let shown;
  if (choice === "auto") shown = all.filter((p) => p.on_frontier);
  else if (choice === "default") shown = all.filter((p) => p.sampler === "ddpm");
  else shown = all.filter((p) => p.sampler === choice);
  return shown.sort((a, b) => a.steps - b.steps);
}

function requestFields(choice) {
  if (choice === "default") return {};
  if (choice === "auto") return { sampler: "auto" };
  const point = points().find((p) => p.sampler === choice);
  return point ? { ...point.request } : { sampler: choice };
}

// `snap`: move K to the nearest calibrated point (a new sampler); otherwise K stays as typed.
function selectSampler(snap = true) {
  const shown = shownPoints();
  const slider = $("k-slider");
  slider.max = Math.max(0, shown.length - 1);
  slider.disabled = shown.length === 0;
  const k = Number($("steps").value);
  const nearest = shown.reduce((best, p, i) => (Math.abs(p.steps - k) < Math.abs(shown[best].steps - k) ? i : best), 0);
  slider.value = shown.length ? nearest : 0;
  if (shown.length && snap) $("steps").value = shown[nearest].steps;
  describeMark();
  drawChart(null);
}

function latencyOf(point) {
  const live = point.live_latency;
  if (live && live.count > 0) return { ms: live.p50_ms, live: true };
  return { ms: point.seconds_per_image * 1000, live: false };
}

function describeMark() {
  const shown = shownPoints();
  const mark = $("k-mark");
  if (!shown.length) {
    mark.value = "No calibrated points for this sampler: any K runs, without a quality estimate.";
    return;
  }
  const p = shown[Number($("k-slider").value)];
  const latency = latencyOf(p);
  const when = latency.live ? "p50 now" : "calibration, per image";
  const nearest = p.steps === Number($("steps").value) ? "" : "nearest calibrated: ";
  mark.value = `${nearest}K=${p.steps} · FID ${p.fid.toFixed(2)} · ${formatMs(latency.ms)} (${when})`;
  $("k-slider").setAttribute("aria-valuetext", mark.value);
}

// ---- the request -----------------------------------------------------------------------------

function requestBody() {
  const model = card();
  const body = { model: model.name, stream: true, ...requestFields($("sampler").value) };
  const label = $("class-label").value;
  if (label !== "") body.class_label = Number(label);
  const mode = document.querySelector('input[name="mode"]:checked').value;
  if (mode === "steps") body.steps = Number($("steps").value);
  if (mode === "latency") body.latency_budget_ms = Number($("latency-budget").value);
  if (mode === "quality") body.max_fid = Number($("max-fid").value);
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  body.num_images = Number($("num-images").value) || 1;
  const every = Number($("preview-every").value);
  if (every >= 1) body.preview_every = every;
  return body;
}

async function generate(event) {
  event.preventDefault();
  if (state.running) return;
  const body = requestBody();
  const controller = new AbortController();
  state.running = controller;
  $("generate").disabled = true;
  $("cancel").disabled = false;
  $("previews").replaceChildren();
  $("images").replaceChildren();
  $("timings").hidden = true;
  $("progress").value = 0;
  setStatus("Queued…");
  const started = performance.now();
  const seen = { firstPreviewMs: null };
  try {
    const response = await api("/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const [name, data] of serverSentEvents(response)) {
      if (name === "progress") onProgress(data);
      else if (name === "preview") {
        if (seen.firstPreviewMs === null) seen.firstPreviewMs = performance.now() - started;
        onPreview(data);
      } else if (name === "result") onResult(data, performance.now() - started, seen.firstPreviewMs);
      else if (name === "error") throw new Error(`${data.error.code}: ${data.error.message}`);
    }
  } catch (error) {
    if (error.name === "AbortError") setStatus("Cancelled.");
    else if (!(error instanceof KeyNeeded)) setStatus(`Failed: ${error.message}`);
  } finally {
    state.running = null;
    $("generate").disabled = false;
    $("cancel").disabled = true;
  }
}

// fetch + a stream reader rather than EventSource: EventSource can neither POST nor send a key.
async function* serverSentEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) yield [name, JSON.parse(data.join("\n"))];
    }
  }
}

function onProgress(p) {
  $("progress").value = p.progress;
  setStatus(`Sampling: image ${p.image + 1}, step ${p.step} of ${p.steps}.`);
}

function onPreview(p) {
  const id = `preview-${p.image}`;
  let figure = document.getElementById(id);
  if (!figure) {
    figure = figureOf(id, "", "");
    $("previews").append(figure);
  }
  const label = `Image ${p.image + 1}, predicted after step ${p.step} of ${p.steps}`;
  figure.querySelector("img").src = `data:image/png;base64,${p.png}`;
  figure.querySelector("img").alt = label;
  figure.querySelector("figcaption").textContent = `step ${p.step}/${p.steps}`;
}

function onResult(result, clientMs, firstPreviewMs) {
  $("progress").value = 1;
  const images = result.images.map((png, i) =>
    figureOf(`image-${i}`, `data:image/png;base64,${png}`, `Image ${i + 1}: class ${classText(result.class_label)}, K=${result.steps}`, `image ${i + 1}`),
  );
  $("images").replaceChildren(...images);
  const t = result.timings;
  const rows = [
    ["Model", result.model],
    ["Sampler", result.variance ? `${result.sampler} (variance ${result.variance})` : result.sampler],
    ["K", result.degraded ? `${result.steps} (asked ${result.degradation.steps_asked}: ${result.degradation.reason})` : String(result.steps)],
    ["Seed", `${result.seed}${result.seed_chosen_by_server ? " (chosen by the server)" : ""}`],
    ["Why this K", result.selection.reason],
    ["Calibrated FID", result.quality ? `${result.quality.fid.toFixed(2)} (${result.quality.num_samples} samples)` : "not calibrated"],
    ["Queue", formatMs(t.queue_ms)],
    ["Compute", formatMs(t.compute_ms)],
    ["Total (server)", formatMs(t.total_ms)],
    ["First preview (here)", firstPreviewMs === null ? "none" : formatMs(firstPreviewMs)],
    ["Total (here)", formatMs(clientMs)],
  ];
  const body = $("timings").querySelector("tbody");
  body.replaceChildren(
    ...rows.map(([name, value]) => {
      const row = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = name;
      const td = document.createElement("td");
      td.textContent = value;
      row.append(th, td);
      return row;
    }),
  );
  $("timings").hidden = false;
  setStatus(`Done: ${result.num_images} image(s) at K=${result.steps} in ${formatMs(t.total_ms)}.`);
  drawChart({ steps: result.steps, ms: t.total_ms / result.num_images });
}

function figureOf(id, src, alt, caption = "") {
  const figure = document.createElement("figure");
  figure.id = id;
  const img = document.createElement("img");
  if (src) img.src = src;
  img.alt = alt;
  const text = document.createElement("figcaption");
  text.textContent = caption;
  figure.append(img, text);
  return figure;
}

// ---- the FID-vs-latency chart (inline SVG, log-scaled FID) ------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function drawChart(chosen) {
  const shown = shownPoints();
  const chart = $("chart");
  if (!shown.length) {
    chart.replaceChildren();
    $("chart-note").textContent = "No calibrated points for this model and sampler.";
    return;
  }
  const data = shown.map((p) => ({ ...latencyOf(p), steps: p.steps, fid: p.fid }));
  const live = data.every((d) => d.live);
  $("chart-note").textContent = live
    ? "Latency: live p50 per image on this server."
    : "Latency: calibration throughput per image (live p50 where this server has served that K).";
  // Both axes logarithmic: latency spans 100x between K = 10 and K = 1000, FID about 10x.
  const width = 480, height = 260, left = 48, right = 16, top = 24, bottom = 36;
  const times = data.map((d) => Math.log(d.ms)).concat(chosen ? [Math.log(chosen.ms)] : []);
  const fids = data.map((d) => Math.log(d.fid));
  const slow = Math.max(...times) + 0.1, fast = Math.min(...times) - 0.1;
  const low = Math.min(...fids) - 0.1, high = Math.max(...fids) + 0.1;
  const x = (ms) => left + ((Math.log(ms) - fast) / (slow - fast)) * (width - left - right);
  const y = (fid) => top + ((high - Math.log(fid)) / (high - low)) * (height - top - bottom);
  const svg = element("svg", { viewBox: `0 0 ${width} ${height}` });
  svg.append(
    element("line", { class: "axis", x1: left, y1: height - bottom, x2: width - right, y2: height - bottom }),
    element("line", { class: "axis", x1: left, y1: top, x2: left, y2: height - bottom }),
    text("latency per image (log scale)", (width + left) / 2, height - 4, "middle"),
    text(formatMs(Math.exp(slow)), width - right, height - bottom + 14, "end"),
    text(formatMs(Math.exp(fast)), left, height - bottom + 14, "middle"),
    text("FID (log scale)", 4, 12, "start"),
    text(Math.exp(high).toFixed(1), left - 4, top + 4, "end"),
    text(Math.exp(low).toFixed(1), left - 4, height - bottom, "end"),
  );
  svg.append(element("polyline", { class: "line", points: data.map((d) => `${x(d.ms)},${y(d.fid)}`).join(" ") }));
  for (const d of data) {
    svg.append(element("circle", { class: "point", cx: x(d.ms), cy: y(d.fid), r: 4 }));
    const nearRight = x(d.ms) > width - right - 60; // keep the label inside the chart
    svg.append(text(`K=${d.steps}`, x(d.ms) + (nearRight ? -6 : 6), y(d.fid) - 6, nearRight ? "end" : "start"));
  }
  const mark = chosen && data.find((d) => d.steps === chosen.steps);
  if (mark) {
    const point = element("circle", { class: "chosen", cx: x(chosen.ms), cy: y(mark.fid), r: 7 });
    point.append(element("title", {}, `this request: K=${chosen.steps}, ${formatMs(chosen.ms)} per image, FID ${mark.fid.toFixed(2)}`));
    svg.append(point);
  }
  chart.replaceChildren(svg);
}

function element(name, attributes, content) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (content !== undefined) node.textContent = content;
  return node;
}

function text(content, x, y, anchor) {
  return element("text", { x, y, "text-anchor": anchor }, content);
}

// ---- small helpers and wiring ----------------------------------------------------------------

function fillSelect(select, options) {
  const previous = select.value;
  select.replaceChildren(
    ...options.map(([value, label]) => {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = label;
      return option;
    }),
  );
  if (options.some(([value]) => value === previous)) select.value = previous;
}

function classText(label) {
  const model = card();
  if (label === null || label === undefined) return "unconditional";
  return model && model.class_names[label] ? `${label} (${model.class_names[label]})` : String(label);
}

function formatMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

function setStatus(message) {
  $("status").textContent = message;
}

function showMode() {
  const mode = document.querySelector('input[name="mode"]:checked').value;
  $("steps-controls").hidden = mode !== "steps";
  $("latency-controls").hidden = mode !== "latency";
  $("quality-controls").hidden = mode !== "quality";
}

function start() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, state.key);
    $("key-form").hidden = true;
    loadModels().catch(report);
  });
  $("generate-form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", () => state.running && state.running.abort());
  $("model").addEventListener("change", () => selectModel().catch(report));
  $("sampler").addEventListener("change", () => selectSampler(true));
  $("k-slider").addEventListener("input", () => {
    const shown = shownPoints();
    if (shown.length) $("steps").value = shown[Number($("k-slider").value)].steps;
    describeMark();
  });
  $("steps").addEventListener("change", () => selectSampler(false));
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", showMode);
  loadModels().catch(report);
}

function report(error) {
  if (!(error instanceof KeyNeeded)) setStatus(`Failed: ${error.message}`);
}

start();

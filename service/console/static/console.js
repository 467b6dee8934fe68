// The QA console: pages over the service's documented HTTP API (and its /metrics), nothing else.
// One page, routed by the address's fragment (#/models, #/models/NAME/thresholds), so that the admin
// token, entered once, lives in this module's memory for as long as the page is open.

const POLL_MS = 2000; // how often the models page reads /metrics
const WINDOW_S = 60; // the live figures cover this much of the past
const main = document.getElementById("main");
let adminToken = null;
let stopPage = () => {};

// --- the API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, { method = "GET", json, body, contentType, write = false } = {}) {
  const headers = {};
  if (json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(json);
  } else if (contentType) {
    headers["content-type"] = contentType;
  }
  if (write && adminToken) headers["authorization"] = `Bearer ${adminToken}`;
  const response = await fetch(path, { method, headers, body, credentials: "omit" });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!response.ok) {
    const error = data && data.error;
    throw new ApiError(response.status, error?.code ?? "http_error", error?.message ?? `HTTP ${response.status}`);
  }
  return data;
}

const modelPath = (name) => `/v1/models/${encodeURIComponent(name)}`;

// --- small DOM helpers --------------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null) continue;
    if (key === "testid") node.dataset.testid = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attributes = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "testid") node.dataset.testid = value;
    else node.setAttribute(key, value);
  }
  return node;
}

function message(node, kind, text) {
  node.className = `message ${kind}`;
  node.textContent = text;
}

const fixed = (value, digits = 3) => (value === null || value === undefined ? "-" : Number(value).toFixed(digits));

// --- the admin token ---------------------------------------------------------------------------

function showToken() {
  document.getElementById("token-state").textContent = adminToken ? "admin token entered" : "read only";
}

document.getElementById("token-button").addEventListener("click", () => {
  document.getElementById("token-input").value = "";
  document.getElementById("token-dialog").showModal();
});
document.getElementById("token-form").addEventListener("submit", (event) => {
  const value = document.getElementById("token-input").value.trim();
  adminToken = event.submitter?.value === "ok" && value ? value : null;
  document.getElementById("token-input").value = "";
  showToken();
});

// --- routing ------------------------------------------------------------------------------------

function route() {
  stopPage();
  stopPage = () => {};
  main.replaceChildren();
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "models" && parts[1] && parts[2] === "thresholds") {
    thresholdsPage(parts[1]);
  } else {
    modelsPage();
  }
}
window.addEventListener("hashchange", route);

// --- the models page ----------------------------------------------------------------------------

// The Prometheus text format's samples: [{name, labels, value}].
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[3] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]] = pair[2].replace(/\\"/g, '"').replace(/\\\\/g, "\\");
    }
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}

// Per model: answers, rejects, defects per class, and the latency histogram's buckets (answered).
function tally(samples) {
  const models = {};
  const of = (name) =>
    (models[name] ??= { answers: 0, rejects: 0, defects: {}, buckets: {}, answered: 0 });
  for (const { name, labels, value } of samples) {
    if (!labels.model) continue;
    const model = of(labels.model);
    if (name === "inspection_decisions_total") {
      model.answers += value;
      if (labels.decision === "reject") model.rejects += value;
    } else if (name === "inspection_defects_total") {
      model.defects[labels.class_name] = (model.defects[labels.class_name] ?? 0) + value;
    } else if (name === "inspection_request_duration_seconds_bucket" && labels.status === "200") {
      model.buckets[labels.le] = (model.buckets[labels.le] ?? 0) + value;
    }
  }
  return models;
}

// What happened between two tallies: counts, and the 99th percentile as its histogram bucket's bound.
function figures(older, newer, seconds) {
  const before = older ?? { answers: 0, rejects: 0, defects: {}, buckets: {} };
  const answers = newer.answers - before.answers;
  const rejects = newer.rejects - before.rejects;
  const defects = {};
  for (const [name, count] of Object.entries(newer.defects)) defects[name] = count - (before.defects[name] ?? 0);
  const bounds = Object.keys(newer.buckets)
    .filter((le) => le !== "+Inf")
    .map(Number)
    .sort((a, b) => a - b);
  const total = (newer.buckets["+Inf"] ?? 0) - (before.buckets["+Inf"] ?? 0);
  let p99 = null;
  if (total > 0) {
    p99 = Infinity;
    for (const bound of bounds) {
      const key = Object.keys(newer.buckets).find((le) => Number(le) === bound);
      if (newer.buckets[key] - (before.buckets[key] ?? 0) >= 0.99 * total) {
        p99 = bound;
        break;
      }
    }
  }
  return { answers, rejects, defects, p99, perSecond: seconds > 0 ? answers / seconds : null };
}

async function modelsPage() {
  main.append(el("h2", {}, "Models"));
  const note = el("p", { class: "muted", testid: "window" }, "Live figures: measuring...");
  const table = el("table", { testid: "models" });
  main.append(table, note);
  let described;
  try {
    described = (await api("/v1/models")).models;
  } catch (error) {
    main.append(el("p", { class: "message error", testid: "models-error" }, error.message));
    return;
  }
  table.append(
    el(
      "tr",
      {},
      ["model", "version", "task", "classes", "provider", "thresholds revision", "answers", "per second", "p99",
        "reject rate", "defects by class", ""].map((text) => el("th", {}, text)),
    ),
  );
  const cells = {};
  for (const model of described) {
    const cell = (key) => (cells[`${key}-${model.name}`] = el("td", { class: "num", testid: `${key}-${model.name}` }, "-"));
    const defects = (cells[`defects-${model.name}`] = el("td", { testid: `defects-${model.name}` }, "-"));
    table.append(
      el(
        "tr",
        { testid: `model-row-${model.name}` },
        el("td", { testid: `name-${model.name}` }, model.name),
        el("td", { class: "num", testid: `version-${model.name}` }, model.version),
        el("td", { testid: `task-${model.name}` }, model.task),
        el("td", { testid: `classes-${model.name}` }, model.classes.join(", ")),
        el("td", { testid: `provider-${model.name}` }, model.provider),
        el("td", { class: "num", testid: `revision-${model.name}` }, model.thresholds.revision),
        cell("answers"),
        cell("throughput"),
        cell("p99"),
        cell("reject"),
        defects,
        el("td", {}, el("a", { href: `#/models/${encodeURIComponent(model.name)}/thresholds`, testid: `open-${model.name}` }, "thresholds")),
      ),
    );
  }
  // Tallies of /metrics, newest last, over the window.
  const history = [];
  let timer = null;
  let stopped = false;
  let polls = 0;
  const poll = async () => {
    try {
      const text = await (await fetch("/metrics", { credentials: "omit" })).text();
      history.push({ at: performance.now() / 1000, tally: tally(parseMetrics(text)) });
      while (history.length > 2 && history[history.length - 1].at - history[1].at >= WINDOW_S) history.shift();
      polls += 1;
      note.dataset.polls = String(polls);
      show();
    } catch (error) {
      note.textContent = `Live figures: /metrics unreadable (${error.message})`;
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  };
  const show = () => {
    if (history.length < 2) return;
    const first = history[0];
    const last = history[history.length - 1];
    const seconds = last.at - first.at;
    note.textContent = `Live figures over the last ${seconds.toFixed(0)} s (from this server's /metrics, every ${POLL_MS / 1000} s).`;
    for (const model of described) {
      const now = last.tally[model.name];
      if (!now) continue;
      const seen = figures(first.tally[model.name], now, seconds);
      cells[`answers-${model.name}`].textContent = String(seen.answers);
      cells[`throughput-${model.name}`].textContent = fixed(seen.perSecond, 1);
      cells[`p99-${model.name}`].textContent =
        seen.p99 === null ? "-" : seen.p99 === Infinity ? "> 10 s" : `<= ${Math.round(seen.p99 * 1000)} ms`;
      cells[`reject-${model.name}`].textContent = seen.answers ? `${((100 * seen.rejects) / seen.answers).toFixed(1)}%` : "-";
      cells[`reject-${model.name}`].dataset.rejects = String(seen.rejects);
      const shown = Object.entries(seen.defects).filter(([, count]) => count > 0);
      cells[`defects-${model.name}`].textContent = shown.length ? shown.map(([name, count]) => `${name} ${count}`).join(", ") : "none";
    }
  };
  stopPage = () => {
    stopped = true;
    clearTimeout(timer);
  };
  poll();
}

// --- frames: the sample set's zip, read here; masks; what a frame's answer means at some thresholds ---

// The entries of a zip archive the user chose (stored or deflated), read in the page: frames are
// shown from the file itself, never sent anywhere but the sweep.
async function readZip(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const view = new DataView(bytes.buffer);
  let end = -1;
  for (let i = bytes.length - 22; i >= Math.max(0, bytes.length - 65557); i--) {
    if (view.getUint32(i, true) === 0x06054b50) {
      end = i;
      break;
    }
  }
  if (end < 0) throw new Error("not a zip archive");
  const entries = new Map();
  let at = view.getUint32(end + 16, true);
  for (let n = view.getUint16(end + 10, true); n > 0; n--) {
    const nameLength = view.getUint16(at + 28, true);
    const name = new TextDecoder().decode(bytes.subarray(at + 46, at + 46 + nameLength));
    entries.set(name, { method: view.getUint16(at + 10, true), size: view.getUint32(at + 20, true), local: view.getUint32(at + 42, true) });
    at += 46 + nameLength + view.getUint16(at + 30, true) + view.getUint16(at + 32, true);
  }
  return {
    // A sample's bytes by its name in the set (the set may sit in one top-level folder of the zip).
    async read(name) {
      const key = entries.has(name) ? name : [...entries.keys()].find((k) => k.endsWith(`/${name}`));
      const entry = entries.get(key);
      if (!entry) throw new Error(`${name} is not in the archive`);
      const start = entry.local + 30 + view.getUint16(entry.local + 26, true) + view.getUint16(entry.local + 28, true);
      const data = bytes.subarray(start, start + entry.size);
      if (entry.method === 0) return data;
      const inflated = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
      return new Uint8Array(await new Response(inflated).arrayBuffer());
    },
  };
}

// A COCO run-length mask ({size: [h, w], counts}) as one byte per pixel, row by row.
function decodeRle({ size: [height, width], counts }) {
  const runs = [];
  for (let p = 0; p < counts.length; ) {
    let x = 0;
    let k = 0;
    let more = 1;
    while (more) {
      const c = counts.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++;
      k++;
      if (!more && c & 0x10) x |= -1 << (5 * k);
    }
    if (runs.length > 2) x += runs[runs.length - 2];
    runs.push(x);
  }
  const mask = new Uint8Array(height * width);
  let index = 0;
  runs.forEach((run, i) => {
    if (i % 2) {
      for (let j = index; j < index + run; j++) mask[(j % height) * width + Math.floor(j / height)] = 1;
    }
    index += run;
  });
  return mask;
}

const PALETTE = ["#e53935", "#fb8c00", "#8e24aa", "#1e88e5", "#43a047", "#00897b"];
const colour = (classes, name) => PALETTE[Math.max(0, classes.indexOf(name)) % PALETTE.length];
const NEAR = 0.05; // a score this close to its threshold is a near miss

function iou(a, b) {
  const w = Math.max(0, Math.min(a.x2, b.x2) - Math.max(a.x1, b.x1));
  const h = Math.max(0, Math.min(a.y2, b.y2) - Math.max(a.y1, b.y1));
  const inter = w * h;
  const union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter;
  return union > 0 ? inter / union : 0;
}

// What a frame's answer (every threshold at 0) decides at `thresholds`, against its labels: the classes
// that cross, those missed and spurious, those near their threshold; for a detector, each box's fate.
function outcome(task, truth, answer, thresholds) {
  const crossed = new Set();
  const scores = {};
  const near = new Set();
  let kept = [];
  let missedBoxes = [];
  if (task === "classification") {
    for (const [name, threshold] of Object.entries(thresholds)) {
      scores[name] = answer.scores[name];
      if (answer.scores[name] >= threshold) crossed.add(name);
    }
  } else if (task === "segmentation") {
    for (const [name, threshold] of Object.entries(thresholds)) {
      const segment = answer.segments.find((s) => s.class_name === name);
      scores[name] = segment ? segment.confidence : 0;
      if (segment && segment.confidence >= threshold) crossed.add(name);
    }
  } else {
    kept = answer.detections.filter((d) => d.confidence >= thresholds[d.class_name]);
    for (const name of Object.keys(thresholds)) {
      const best = answer.detections.filter((d) => d.class_name === name).map((d) => d.confidence);
      scores[name] = best.length ? Math.max(...best) : 0;
    }
    const used = new Set();
    kept = kept.map((d) => {
      let match = -1;
      truth.boxes.forEach((t, i) => {
        if (!used.has(i) && t.class_name === d.class_name && iou(t.box, d.box) >= 0.5 && match < 0) match = i;
      });
      if (match >= 0) used.add(match);
      crossed.add(d.class_name);
      return { ...d, matched: match >= 0 };
    });
    missedBoxes = truth.boxes.filter((_, i) => !used.has(i));
    for (const d of answer.detections) if (Math.abs(d.confidence - thresholds[d.class_name]) <= NEAR) near.add(d.class_name);
  }
  if (task !== "detection") {
    for (const [name, threshold] of Object.entries(thresholds)) if (Math.abs(scores[name] - threshold) <= NEAR) near.add(name);
  }
  const present = new Set(truth.present);
  const missed =
    task === "detection" ? [...new Set(missedBoxes.map((b) => b.class_name))] : [...present].filter((c) => !crossed.has(c));
  const spurious =
    task === "detection" ? [...new Set(kept.filter((d) => !d.matched).map((d) => d.class_name))] : [...crossed].filter((c) => !present.has(c));
  return { crossed, scores, near: [...near], missed, spurious, kept, missedBoxes, decision: crossed.size ? "reject" : "accept" };
}

// A frame with what its answer shows at `thresholds`: boxes (dashed: labelled), masks, or class scores;
// the decision, and which class crossed which threshold.
// The colour ramp `python -m service.heatmaps` draws heat maps with (service/heatmaps.py), dark to bright,
// as a table of 256 colours.
const RAMP = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]];
const RAMP_LUT = Array.from({ length: 256 }, (_, v) => {
  const x = (v / 255) * (RAMP.length - 1);
  const i = Math.min(Math.floor(x), RAMP.length - 2);
  return RAMP[i].map((c, k) => Math.round(c + (RAMP[i + 1][k] - c) * (x - i)));
});

// An answer's heat map (its 8-bit PNG at the frame's size) painted over the frame: the ramp's colour of
// each pixel's intensity, opaque in proportion (60% at full evidence).
// Its pixels are `downscale` frame pixels wide, from the top left; `shown` is screen pixels per frame pixel.
function heatmapCanvas(testid, heatmap, shown) {
  const canvas = el("canvas", { width: heatmap.width, height: heatmap.height, class: "masks", testid: `${testid}-heatmap` });
  canvas.style.width = `${heatmap.width * heatmap.downscale * shown}px`;
  canvas.style.height = `${heatmap.height * heatmap.downscale * shown}px`;
  const image = new Image();
  image.addEventListener("load", () => {
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const pixels = context.getImageData(0, 0, heatmap.width, heatmap.height);
    const data = pixels.data;
    for (let i = 0; i < data.length; i += 4) {
      const [r, g, b] = RAMP_LUT[data[i]];
      data[i + 3] = Math.round(data[i] * 0.6);
      data[i] = r;
      data[i + 1] = g;
      data[i + 2] = b;
    }
    context.putImageData(pixels, 0, 0);
    canvas.dataset.painted = "true";
  });
  image.src = `data:image/png;base64,${heatmap.png}`;
  return canvas;
}

function frameView(testid, title, url, task, classes, truth, answer, thresholds) {
  const seen = outcome(task, truth, answer, thresholds);
  const { width, height } = answer.image;
  const scale = Math.min(1, 420 / width);
  const shownWidth = Math.round(width * scale);
  const shownHeight = Math.round(height * scale);
  const stage = el("div", { class: "stage", testid: `${testid}-stage` });
  const image = el("img", { src: url, width: shownWidth, height: shownHeight, alt: title, testid: `${testid}-image` });
  stage.append(image);
  const overlay = svg("svg", { width: shownWidth, height: shownHeight, viewBox: `0 0 ${width} ${height}`, class: "overlay", testid: `${testid}-overlay` });
  if (task === "detection") {
    for (const t of truth.boxes) {
      overlay.append(svg("rect", { x: t.box.x1, y: t.box.y1, width: t.box.x2 - t.box.x1, height: t.box.y2 - t.box.y1, class: "truth", stroke: colour(classes, t.class_name), testid: `${testid}-truth-${t.class_name}` }));
    }
    for (const d of seen.kept) {
      overlay.append(svg("rect", { x: d.box.x1, y: d.box.y1, width: d.box.x2 - d.box.x1, height: d.box.y2 - d.box.y1, class: "detection", stroke: colour(classes, d.class_name), testid: `${testid}-box-${d.class_name}` }));
    }
  }
  stage.append(overlay);
  if (task === "segmentation") {
    const canvas = el("canvas", { width, height, class: "masks", testid: `${testid}-masks` });
    canvas.style.width = `${shownWidth}px`;
    canvas.style.height = `${shownHeight}px`;
    const context = canvas.getContext("2d");
    const pixels = context.createImageData(width, height);
    for (const segment of answer.segments) {
      if (!seen.crossed.has(segment.class_name) || !segment.mask.counts) continue;
      const mask = decodeRle(segment.mask);
      const hex = colour(classes, segment.class_name);
      const rgb = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
      mask.forEach((on, i) => {
        if (on) pixels.data.set([...rgb, 115], 4 * i);
      });
    }
    context.putImageData(pixels, 0, 0);
    stage.append(canvas);
  }
  const heatmap = answer.heatmap;
  if (heatmap) stage.append(heatmapCanvas(testid, heatmap, scale));
  const rows = Object.entries(thresholds).map(([name, threshold]) =>
    el(
      "tr",
      { class: seen.crossed.has(name) ? "crossed" : "" },
      el("td", {}, name),
      el("td", { class: "num" }, fixed(seen.scores[name])),
      el("td", { class: "num" }, fixed(threshold, 2)),
      el("td", { testid: `${testid}-crossed-${name}` }, seen.crossed.has(name) ? "crossed" : ""),
    ),
  );
  return el(
    "div",
    { class: "frame card", testid },
    el("h3", {}, title),
    stage,
    el("p", { testid: `${testid}-decision` }, `${seen.decision}`, seen.crossed.size ? `: ${[...seen.crossed].join(", ")}` : ""),
    heatmap
      ? el(
          "p",
          { testid: `${testid}-heatmap-caption` },
          `Heat map of ${heatmap.class_name} (${heatmap.method}): full colour at ${heatmap.scale} (${heatmap.unit}); `
            + `peak ${fixed(heatmap.peak, 3)} at (${heatmap.peak_x}, ${heatmap.peak_y})`,
        )
      : null,
    el("table", {}, el("tr", {}, ["class", "score", "threshold", ""].map((t) => el("th", {}, t))), rows),
  );
}

// --- the thresholds page --------------------------------------------------------------------------

const CHART = { width: 360, height: 210, pad: 30 };
const chartX = (t) => CHART.pad + t * (CHART.width - 2 * CHART.pad);
const chartY = (v) => CHART.height - CHART.pad - v * (CHART.height - 2 * CHART.pad);

// Where a threshold falls on the sweep's grid.
function gridIndex(curve, threshold) {
  let best = 0;
  for (let i = 1; i < curve.thresholds.length; i++) {
    if (Math.abs(curve.thresholds[i] - threshold) < Math.abs(curve.thresholds[best] - threshold)) best = i;
  }
  return best;
}

// The grid point of best F1 (the lowest threshold among equals).
function f1Optimum(curve) {
  let best = null;
  curve.f1.forEach((value, i) => {
    if (value !== null && (best === null || value > curve.f1[best])) best = i;
  });
  return best;
}

function chart(name, sweep, current) {
  const { curve } = sweep;
  const node = svg("svg", {
    class: "chart",
    width: CHART.width,
    height: CHART.height,
    viewBox: `0 0 ${CHART.width} ${CHART.height}`,
    testid: `chart-${name}`,
  });
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    node.append(svg("line", { class: "grid", x1: chartX(0), x2: chartX(1), y1: chartY(v), y2: chartY(v) }));
    const label = svg("text", { x: 4, y: chartY(v) + 3 });
    label.textContent = v.toFixed(2);
    node.append(label);
    const tick = svg("text", { x: chartX(v) - 8, y: CHART.height - 10 });
    tick.textContent = v.toFixed(2);
    node.append(tick);
  }
  node.append(svg("line", { class: "axis", x1: chartX(0), x2: chartX(1), y1: chartY(0), y2: chartY(0) }));
  node.append(svg("line", { class: "axis", x1: chartX(0), x2: chartX(0), y1: chartY(0), y2: chartY(1) }));
  for (const series of ["precision", "recall", "f1"]) {
    const points = curve.thresholds
      .map((t, i) => (curve[series][i] === null ? null : `${chartX(t).toFixed(2)},${chartY(curve[series][i]).toFixed(2)}`))
      .filter((point) => point !== null)
      .join(" ");
    node.append(svg("polyline", { class: series, points, testid: `curve-${name}-${series}` }));
  }
  const marker = (kind, t) =>
    svg("line", { class: kind, x1: chartX(t), x2: chartX(t), y1: chartY(0), y2: chartY(1), testid: `marker-${name}-${kind}` });
  node.append(marker("current", current));
  const proposed = marker("proposed", sweep.proposed.threshold);
  node.append(proposed);
  const best = f1Optimum(curve);
  if (best !== null) {
    node.append(svg("circle", { class: "f1max", r: 4, cx: chartX(curve.thresholds[best]), cy: chartY(curve.f1[best]), testid: `marker-${name}-f1max` }));
  }
  if (sweep.proposed.basis === "target_recall" && sweep.proposed.target_met) {
    node.append(svg("circle", { class: "target", r: 4, cx: chartX(sweep.proposed.threshold), cy: chartY(sweep.proposed.recall), testid: `marker-${name}-target` }));
  }
  return { node, moveProposed: (t) => ["x1", "x2"].forEach((a) => proposed.setAttribute(a, chartX(t))) };
}

async function thresholdsPage(name) {
  const path = modelPath(name);
  let model;
  try {
    model = await api(path);
  } catch (error) {
    main.append(el("p", { class: "message error", testid: "model-error" }, error.message));
    return;
  }
  const defectClasses = Object.keys(model.thresholds.values);
  main.append(
    el("h2", {}, `${model.name} `, el("span", { class: "muted" }, `version ${model.version}, ${model.task}, ${model.provider}`)),
  );

  // The active revision.
  const active = el("table", { testid: "active" });
  const activeNote = el("p", { class: "muted", testid: "active-revision" });
  main.append(el("h2", {}, "Active thresholds"), activeNote, active);
  let activeRevision = null;
  const showActive = async () => {
    activeRevision = await api(`${path}/thresholds`);
    activeNote.textContent = `Revision ${activeRevision.revision} (${activeRevision.kind}) by ${activeRevision.author}: ${activeRevision.reason}`;
    activeNote.dataset.revision = String(activeRevision.revision);
    active.replaceChildren(
      el("tr", {}, el("th", {}, "class"), el("th", {}, "threshold"), el("th", {}, "review from")),
      ...defectClasses.map((c) =>
        el(
          "tr",
          {},
          el("td", {}, c),
          el("td", { class: "num", testid: `active-${c}` }, fixed(activeRevision.thresholds[c], 2)),
          el("td", { class: "num", testid: `active-review-${c}` }, c in activeRevision.review_thresholds ? fixed(activeRevision.review_thresholds[c], 2) : "-"),
        ),
      ),
    );
  };

  // The sweep.
  const file = el("input", { type: "file", accept: ".zip,application/zip", testid: "sweep-file" });
  const targets = Object.fromEntries(
    defectClasses.map((c) => [c, el("input", { type: "number", min: 0, max: 1, step: 0.01, placeholder: "-", testid: `target-${c}`, size: 4 })]),
  );
  const missTarget = el("input", { type: "number", min: 0, max: 1, step: 0.001, placeholder: "-", testid: "sweep-miss-rate", size: 5 });
  const reviewTarget = el("input", { type: "number", min: 0, max: 1, step: 0.01, placeholder: "-", testid: "sweep-review-rate", size: 5 });
  const setChoice = el("select", { testid: "sweep-set" }, el("option", { value: "" }, "the zip chosen here"));
  api("/v1/sample-sets").then((found) => {
    for (const set of found.sets) setChoice.append(el("option", { value: set.name }, `${set.name} (on the server, ${set.kind})`));
  });
  const sweepStatus = el("div", { testid: "sweep-status" });
  const sweepOut = el("div", { testid: "sweep" });
  const run = el("button", { type: "button", testid: "sweep-run" }, "Sweep");
  main.append(
    el("h2", {}, "Sweep labelled samples"),
    el("p", { class: "muted" }, "A zip in the layout `python -m export.samples` writes. The model runs once per image; moving a threshold below reads the sweep, without running it again."),
    el("div", { class: "row" }, el("label", {}, "Samples: ", setChoice), file),
    el("div", { class: "row" }, ...defectClasses.map((c) => el("label", {}, `target recall ${c} `, targets[c]))),
    el(
      "div",
      { class: "row" },
      el("label", {}, "review band: defects that may escape ", missTarget),
      el("label", {}, "parts the line can review ", reviewTarget),
      run,
    ),
    sweepStatus,
    sweepOut,
  );

  // Inspecting one frame: its answer with every threshold at 0, shown at the active and the proposed thresholds.
  const inspectFile = el("input", { type: "file", accept: "image/*", testid: "inspect-file" });
  const inspectRun = el("button", { type: "button", testid: "inspect-run" }, "Inspect");
  const inspectHeatmap = el("input", { type: "checkbox", testid: "inspect-heatmap" });
  const inspected = el("div", { class: "cards", testid: "inspected" });
  const inspectMessage = el("div", { testid: "inspect-message" });
  inspectRun.addEventListener("click", async () => {
    if (!inspectFile.files.length) {
      message(inspectMessage, "error", "Choose an image first.");
      return;
    }
    const frame = inspectFile.files[0];
    const zeros = defectClasses.map((c) => `${c}:0`).join(",");
    try {
      const asked = inspectHeatmap.checked ? "&heatmap=auto" : "";
      const answer = await api(`${path}/predict?thresholds=${encodeURIComponent(zeros)}${asked}`, {
        method: "POST",
        body: frame,
        contentType: frame.type || "application/octet-stream",
      });
      const url = URL.createObjectURL(frame);
      const current = Object.fromEntries(defectClasses.map((c) => [c, activeRevision.thresholds[c]]));
      const none = { present: [], boxes: [] };
      const views = [frameView("inspect-active", `${frame.name} at the active thresholds`, url, model.task, model.classes, none, answer, current)];
      if (swept) views.push(frameView("inspect-proposed", "at the proposed thresholds", url, model.task, model.classes, none, answer, proposal));
      inspected.replaceChildren(...views);
      inspectMessage.replaceChildren();
    } catch (error) {
      message(inspectMessage, "error", `Not inspected: ${error.message}`);
    }
  });
  main.append(
    el("h2", {}, "Inspect a frame"),
    el("div", { class: "row" }, inspectFile, el("label", {}, inspectHeatmap, " heat map"), inspectRun),
    inspectMessage,
    inspected,
  );

  // Live frames this model rejected, kept for review when the service is asked to.
  const live = el("div", { testid: "live" });
  const liveDetail = el("div", { class: "cards", testid: "live-detail" });
  main.append(el("h2", {}, "Live frames kept for review"), live, liveDetail);
  const showLive = async () => {
    const kept = await api(`${path}/review/frames?limit=100`);
    if (!kept.keeping) {
      live.replaceChildren(
        el("p", { class: "muted", testid: "live-off" }, "Off: these are production images. Start the service with INSPECTION_KEEP_REJECTED_FRAMES=N to keep the newest N rejected frames of each model."),
      );
      return;
    }
    live.replaceChildren(
      el("p", { class: "muted", testid: "live-count" }, `${kept.frames.length} of the newest ${kept.keeping} rejected frames kept.`),
      el(
        "ul",
        {},
        kept.frames.map((f) =>
          el(
            "li",
            {},
            el("button", { type: "button", class: "link", testid: "live-open", "data-id": String(f.id), onclick: () => openLive(f) }, `frame ${f.id}`),
            ` ${new Date(f.created_at).toLocaleString()}: ${f.answer.decision} (${f.answer.defects.join(", ")}) at revision ${f.answer.thresholds_revision}`,
          ),
        ),
      ),
    );
  };
  const openLive = (kept) => {
    const url = `${path}/review/frames/${kept.id}`;
    const none = { present: [], boxes: [] };
    const current = Object.fromEntries(defectClasses.map((c) => [c, activeRevision.thresholds[c]]));
    const views = [frameView("live-active", `frame ${kept.id} at the active thresholds`, url, model.task, model.classes, none, kept.answer, current)];
    if (swept) views.push(frameView("live-proposed", "at the proposed thresholds", url, model.task, model.classes, none, kept.answer, proposal));
    liveDetail.replaceChildren(...views);
    liveDetail.dataset.id = String(kept.id);
  };

  // Saving.
  const author = el("input", { type: "text", placeholder: "your name", testid: "save-author" });
  const reason = el("input", { type: "text", placeholder: "why", size: 40, testid: "save-reason" });
  const save = el("button", { type: "button", testid: "save", disabled: "" }, "Save as a new revision");
  const saveMessage = el("div", { testid: "save-message" });
  main.append(el("h2", {}, "Save"), el("div", { class: "row" }, author, reason, save), saveMessage);

  // History.
  const history = el("table", { testid: "history" });
  const diff = el("div", { testid: "diff" });
  const historyMessage = el("div", { testid: "history-message" });
  main.append(el("h2", {}, "History"), historyMessage, history, el("h2", {}, "Difference"), diff);
  let revisions = [];
  const diffPick = { from: null, to: null };
  const showDiff = () => {
    const from = revisions.find((r) => r.revision === diffPick.from);
    const to = revisions.find((r) => r.revision === diffPick.to);
    if (!from || !to) {
      diff.replaceChildren(el("p", { class: "muted" }, "Pick two revisions."));
      return;
    }
    diff.replaceChildren(
      el(
        "table",
        { testid: "diff-table" },
        el("tr", {}, el("th", {}, "class"), el("th", {}, `revision ${from.revision}`), el("th", {}, `revision ${to.revision}`)),
        ...defectClasses.map((c) =>
          el(
            "tr",
            { class: from.thresholds[c] === to.thresholds[c] ? "" : "changed", testid: `diff-${c}` },
            el("td", {}, c),
            el("td", { class: "num" }, fixed(from.thresholds[c], 2)),
            el("td", { class: "num" }, fixed(to.thresholds[c], 2)),
          ),
        ),
      ),
    );
  };
  const showHistory = async () => {
    revisions = (await api(`${path}/thresholds/history?limit=50`)).revisions;
    diffPick.to ??= revisions[0]?.revision ?? null;
    diffPick.from ??= revisions[1]?.revision ?? null;
    history.replaceChildren(
      el("tr", {}, ["revision", "kind", "by", "reason", "when", ...defectClasses, "from", "to", ""].map((t) => el("th", {}, t))),
      ...revisions.map((r) =>
        el(
          "tr",
          { testid: `history-row-${r.revision}` },
          el("td", { class: "num" }, r.revision),
          el("td", {}, r.kind),
          el("td", {}, r.author),
          el("td", {}, r.reason),
          el("td", {}, new Date(r.created_at).toLocaleString()),
          ...defectClasses.map((c) => el("td", { class: "num" }, fixed(r.thresholds[c], 2))),
          el("td", {}, radio("from", r.revision)),
          el("td", {}, radio("to", r.revision)),
          el(
            "td",
            {},
            r.revision === revisions[0].revision
              ? ""
              : el("button", { type: "button", testid: `rollback-${r.revision}`, onclick: () => rollback(r.revision) }, "Roll back to this"),
          ),
        ),
      ),
    );
    showDiff();
  };
  const radio = (side, revision) =>
    el("input", {
      type: "radio",
      name: `diff-${side}`,
      testid: `diff-${side}-${revision}`,
      ...(diffPick[side] === revision ? { checked: "" } : {}),
      onchange: () => {
        diffPick[side] = revision;
        showDiff();
      },
    });

  const audit = () => {
    if (!author.value.trim() || !reason.value.trim()) {
      throw new ApiError(0, "audit", "Say who you are and why: both are recorded with the revision.");
    }
    return { author: author.value.trim(), reason: reason.value.trim() };
  };
  const refused = (node, error) => {
    if (error.status === 409) {
      message(node, "error", `Not saved: ${error.message}. The values now in force are shown above.`);
    } else if (error.status === 401 || error.status === 403) {
      message(node, "error", `Not saved: ${error.message}. Writing needs the admin token (top right).`);
    } else {
      message(node, "error", `Not saved: ${error.message}`);
    }
  };
  const rollback = async (revision) => {
    try {
      const done = await api(`${path}/thresholds/rollback`, {
        method: "POST",
        json: { to_revision: revision, ...audit(), expected_revision: activeRevision.revision },
        write: true,
      });
      message(historyMessage, "ok", `Revision ${done.revision}: the values of revision ${revision} again.`);
    } catch (error) {
      refused(historyMessage, error);
    }
    await Promise.all([showActive(), showHistory()]);
  };

  // The sweep's figures per class, and the values to save.
  let proposal = {};
  let reviewProposal = {}; // class -> review threshold, or null for no band
  let archive = null; // the zip chosen here, read in the page
  let serverSet = null; // or the set on the server the sweep named
  let swept = null; // the sweep's report
  const frameUrls = new Map(); // sample name -> its image's address
  const frameUrl = async (name) => {
    if (serverSet) return `/v1/sample-sets/${encodeURIComponent(serverSet)}/files/${name.split("/").map(encodeURIComponent).join("/")}`;
    if (!frameUrls.has(name)) frameUrls.set(name, URL.createObjectURL(new Blob([await archive.read(name)])));
    return frameUrls.get(name);
  };

  // A classifier's confusion at the proposed thresholds: each image's decided label is the best-scored
  // class reaching its threshold, else the background class (or "none"), as the sweep decides it.
  const confusion = el("div", { testid: "confusion-wrap" });
  const showConfusion = () => {
    if (!swept?.confusion || !swept.samples) return;
    const background = model.background_class;
    const labels = background === null ? [...model.classes, "none"] : model.classes;
    const matrix = labels.map(() => labels.map(() => 0));
    for (const sample of swept.samples) {
      let decided = background ?? "none";
      let best = -Infinity;
      for (const name of model.classes) {
        const score = sample.answer.scores[name];
        if (name in proposal && score >= proposal[name] && score > best) {
          best = score;
          decided = name;
        }
      }
      matrix[labels.indexOf(sample.truth.label)][labels.indexOf(decided)] += 1;
    }
    confusion.replaceChildren(
      el(
        "table",
        { testid: "confusion" },
        el("tr", {}, el("th", {}, "labelled \\ decided"), labels.map((l) => el("th", {}, l))),
        ...matrix.map((row, i) => el("tr", {}, el("th", {}, labels[i]), row.map((n) => el("td", { class: "num" }, n)))),
      ),
    );
  };

  // Review: the sample set's wrong answers at the proposed thresholds, each frame beside itself at the active ones.
  const review = el("div", { testid: "review" });
  const detail = el("div", { class: "cards", testid: "frame-detail" });
  const showFrame = async (sample) => {
    const url = await frameUrl(sample.name);
    const current = Object.fromEntries(defectClasses.map((c) => [c, activeRevision.thresholds[c]]));
    detail.replaceChildren(
      frameView("frame-proposed", `${sample.name} at the proposed thresholds`, url, model.task, model.classes, sample.truth, sample.answer, proposal),
      frameView("frame-active", `at the active thresholds (revision ${activeRevision.revision})`, url, model.task, model.classes, sample.truth, sample.answer, current),
    );
    detail.dataset.name = sample.name;
  };
  const showReview = () => {
    if (!swept?.samples) return;
    showConfusion();
    // What the queues were computed at, for whoever waits for them (the tests).
    review.dataset.thresholds = Object.entries(proposal).map(([name, value]) => `${name}:${value}`).join(",");
    const queues = { fn: [], fp: [], near: [] };
    for (const sample of swept.samples) {
      const seen = outcome(model.task, sample.truth, sample.answer, proposal);
      if (seen.missed.length) queues.fn.push([sample, `${seen.missed.join(", ")} missed`]);
      if (seen.spurious.length) queues.fp.push([sample, `${seen.spurious.join(", ")} spurious`]);
      if (seen.near.length) queues.near.push([sample, `${seen.near.join(", ")} within ${NEAR} of the threshold`]);
    }
    const titles = { fn: "False negatives", fp: "False positives", near: "Near misses" };
    review.replaceChildren(
      el(
        "div",
        { class: "cards" },
        Object.entries(queues).map(([key, items]) =>
          el(
            "div",
            { class: "card queue", testid: `queue-${key}` },
            el("h3", {}, titles[key], el("span", { class: "muted", testid: `queue-${key}-count` }, ` ${items.length}`)),
            items.length
              ? el(
                  "ul",
                  {},
                  items.map(([sample, why]) =>
                    el(
                      "li",
                      {},
                      el("button", { type: "button", class: "link", testid: "review-open", "data-name": sample.name, onclick: () => showFrame(sample) }, sample.name),
                      ` ${why}`,
                    ),
                  ),
                )
              : el("p", { class: "muted" }, "none"),
          ),
        ),
      ),
    );
  };

  run.addEventListener("click", async () => {
    const onServer = setChoice.value;
    if (!onServer && !file.files.length) {
      message(sweepStatus, "error", "Choose a zip of labelled samples, or a set on the server, first.");
      return;
    }
    const wanted = defectClasses.filter((c) => targets[c].value !== "").map((c) => `${c}:${targets[c].value}`);
    const query = new URLSearchParams({ step: "0.01", samples: "true" });
    if (wanted.length) query.set("targets", wanted.join(","));
    if (missTarget.value !== "") query.set("max_miss_rate", missTarget.value);
    if (reviewTarget.value !== "") query.set("max_review_rate", reviewTarget.value);
    if (onServer) query.set("set", onServer);
    message(sweepStatus, "ok", `Sweeping ${onServer || file.files[0].name}...`);
    run.disabled = true;
    try {
      const report = await api(`${path}/thresholds/sweep?${query}`, {
        method: "POST",
        ...(onServer ? {} : { body: file.files[0], contentType: "application/zip" }),
      });
      archive = onServer ? null : await readZip(file.files[0]);
      serverSet = onServer || null;
      frameUrls.clear();
      showSweep(report);
      message(sweepStatus, "ok", `${report.images} images swept at revision ${report.thresholds_revision}; positives are ${report.positive}.`);
      sweepStatus.dataset.images = String(report.images);
    } catch (error) {
      message(sweepStatus, "error", `Sweep failed: ${error.message}`);
    } finally {
      run.disabled = false;
    }
  });

  const showSweep = (report) => {
    swept = report;
    proposal = { ...report.proposal.thresholds };
    // The review band per class: the sweep's, else the active one; empty: none.
    reviewProposal = Object.fromEntries(
      defectClasses.map((c) => [c, report.proposal.review_thresholds?.[c] ?? activeRevision.review_thresholds[c] ?? null]),
    );
    const cards = el("div", { class: "cards" });
    for (const c of defectClasses) {
      const sweep = report.classes[c];
      const { curve } = sweep;
      const drawn = chart(c, sweep, activeRevision.thresholds[c]);
      const readout = Object.fromEntries(
        ["threshold", "precision", "recall", "f1", "tp", "fp", "fn"].map((k) => [k, el("td", { class: "num", testid: `value-${c}-${k}` })]),
      );
      const slider = el("input", { type: "range", min: 0, max: 1, step: 0.01, value: proposal[c], testid: `slider-${c}` });
      const update = () => {
        const i = gridIndex(curve, Number(slider.value));
        const t = curve.thresholds[i];
        proposal[c] = t;
        readout.threshold.textContent = fixed(t, 2);
        scheduleReview();
        for (const k of ["precision", "recall", "f1"]) readout[k].textContent = fixed(curve[k][i]);
        for (const k of ["tp", "fp", "fn"]) readout[k].textContent = String(curve[k][i]);
        drawn.moveProposed(t);
      };
      slider.addEventListener("input", update);
      // The review band below the proposed threshold: what it sends to review and what still escapes.
      const bandInput = el("input", { type: "number", min: 0, max: 1, step: 0.01, placeholder: "none", size: 5, testid: `review-${c}` });
      if (reviewProposal[c] !== null) bandInput.value = reviewProposal[c];
      const bandOut = el("span", { class: "muted", testid: `band-${c}` });
      const showBand = () => {
        if (bandInput.value === "") {
          reviewProposal[c] = null;
          bandOut.textContent = "no review band";
          return;
        }
        const low = curve.thresholds[gridIndex(curve, Number(bandInput.value))];
        const high = gridIndex(curve, proposal[c]);
        const at = gridIndex(curve, low);
        reviewProposal[c] = low;
        const reviewed = Math.max(0, curve.tp[at] + curve.fp[at] - curve.tp[high] - curve.fp[high]);
        const missed = curve.fn[at];
        bandOut.textContent = `review from ${fixed(low, 2)}: ${reviewed} to review (${((100 * reviewed) / swept.images).toFixed(1)}% of parts), ${missed} of ${sweep.positives} defects escape`;
        bandOut.dataset.reviewed = String(reviewed);
        bandOut.dataset.missed = String(missed);
      };
      bandInput.addEventListener("input", showBand);
      slider.addEventListener("input", showBand);
      const best = f1Optimum(curve);
      const useBest = el("button", { type: "button", testid: `use-f1-${c}`, onclick: () => { slider.value = curve.thresholds[best]; update(); } }, "F1 optimum");
      const useProposal = el("button", { type: "button", testid: `use-proposal-${c}`, onclick: () => { slider.value = sweep.proposed.threshold; update(); } }, "sweep's proposal");
      const useActive = el("button", { type: "button", testid: `use-active-${c}`, onclick: () => { slider.value = activeRevision.thresholds[c]; update(); } }, "active value");
      const basis =
        sweep.proposed.basis === "target_recall"
          ? `the highest threshold with recall >= ${sweep.proposed.target_recall}${sweep.proposed.target_met ? "" : " (not met: best F1 instead)"}`
          : sweep.proposed.basis === "max_f1"
            ? "the best F1"
            : "no labelled positives: the active value";
      cards.append(
        el(
          "div",
          { class: "card", testid: `class-${c}` },
          el("h3", {}, c, el("span", { class: "muted" }, ` ${sweep.positives} positives`)),
          el("div", { class: "legend" }, el("span", { class: "precision" }, "precision"), el("span", { class: "recall" }, "recall"), el("span", { class: "f1" }, "F1"), el("span", { class: "muted" }, "dashed: active, red: proposed")),
          drawn.node,
          el("div", { class: "row" }, slider),
          el("div", { class: "row" }, "Set to:", useProposal, useBest, useActive),
          el("div", { class: "row" }, el("label", {}, "review from ", bandInput), bandOut),
          el("p", { class: "muted", testid: `suggest-${c}` }, `Sweep's proposal ${fixed(sweep.proposed.threshold, 2)}: ${basis}. F1 optimum ${best === null ? "-" : fixed(curve.thresholds[best], 2)}.`),
          el(
            "table",
            {},
            el("tr", {}, ["threshold", "precision", "recall", "F1", "TP", "FP", "FN"].map((t) => el("th", {}, t))),
            el("tr", {}, Object.values(readout)),
          ),
        ),
      );
      update();
      showBand();
    }
    const parts = [cards];
    if (report.confusion) parts.push(el("h2", {}, "Confusion at the proposed thresholds"), confusion);
    parts.push(
      el("h2", {}, "Review at the proposed thresholds"),
      el("p", { class: "muted" }, "The sample set's frames the proposed thresholds get wrong, and those close to a threshold. Open one to see it at the proposed and at the active thresholds (dashed boxes: labelled; masks: where the class is the most probable)."),
      review,
      detail,
    );
    sweepOut.replaceChildren(...parts);
    showReview();
    save.disabled = false;
  };
  let reviewTimer = null;
  const scheduleReview = () => {
    clearTimeout(reviewTimer);
    reviewTimer = setTimeout(showReview, 50);
  };

  save.addEventListener("click", async () => {
    try {
      const done = await api(`${path}/thresholds`, {
        method: "PUT",
        json: { thresholds: proposal, review_thresholds: reviewProposal, ...audit(), expected_revision: activeRevision.revision },
        write: true,
      });
      message(saveMessage, "ok", `Saved as revision ${done.revision}.`);
      saveMessage.dataset.revision = String(done.revision);
    } catch (error) {
      refused(saveMessage, error);
    }
    await Promise.all([showActive(), showHistory()]);
  });

  await showActive();
  await showHistory();
  await showLive();
}

showToken();
route();

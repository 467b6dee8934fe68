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
      el("tr", {}, el("th", {}, "class"), el("th", {}, "threshold")),
      ...defectClasses.map((c) => el("tr", {}, el("td", {}, c), el("td", { class: "num", testid: `active-${c}` }, fixed(activeRevision.thresholds[c], 2)))),
    );
  };

  // The sweep.
  const file = el("input", { type: "file", accept: ".zip,application/zip", testid: "sweep-file" });
  const targets = Object.fromEntries(
    defectClasses.map((c) => [c, el("input", { type: "number", min: 0, max: 1, step: 0.01, placeholder: "-", testid: `target-${c}`, size: 4 })]),
  );
  const sweepStatus = el("div", { testid: "sweep-status" });
  const sweepOut = el("div", { testid: "sweep" });
  const run = el("button", { type: "button", testid: "sweep-run" }, "Sweep");
  main.append(
    el("h2", {}, "Sweep labelled samples"),
    el("p", { class: "muted" }, "A zip in the layout `python -m export.samples` writes. The model runs once per image; moving a threshold below reads the sweep, without running it again."),
    el("div", { class: "row" }, file, ...defectClasses.map((c) => el("label", {}, `target recall ${c} `, targets[c])), run),
    sweepStatus,
    sweepOut,
  );

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
  run.addEventListener("click", async () => {
    if (!file.files.length) {
      message(sweepStatus, "error", "Choose a zip of labelled samples first.");
      return;
    }
    const wanted = defectClasses.filter((c) => targets[c].value !== "").map((c) => `${c}:${targets[c].value}`);
    const query = new URLSearchParams({ step: "0.01" });
    if (wanted.length) query.set("targets", wanted.join(","));
    message(sweepStatus, "ok", `Sweeping ${file.files[0].name}...`);
    run.disabled = true;
    try {
      const report = await api(`${path}/thresholds/sweep?${query}`, {
        method: "POST",
        body: file.files[0],
        contentType: "application/zip",
      });
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
    proposal = { ...report.proposal.thresholds };
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
        for (const k of ["precision", "recall", "f1"]) readout[k].textContent = fixed(curve[k][i]);
        for (const k of ["tp", "fp", "fn"]) readout[k].textContent = String(curve[k][i]);
        drawn.moveProposed(t);
      };
      slider.addEventListener("input", update);
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
    }
    const parts = [cards];
    if (report.confusion) {
      const { labels, matrix } = report.confusion;
      parts.push(
        el("h2", {}, "Confusion at the sweep's proposal"),
        el(
          "table",
          { testid: "confusion" },
          el("tr", {}, el("th", {}, "labelled \\ decided"), labels.map((l) => el("th", {}, l))),
          ...matrix.map((row, i) => el("tr", {}, el("th", {}, labels[i]), row.map((n) => el("td", { class: "num" }, n)))),
        ),
      );
    }
    sweepOut.replaceChildren(...parts);
    save.disabled = false;
  };

  save.addEventListener("click", async () => {
    try {
      const done = await api(`${path}/thresholds`, {
        method: "PUT",
        json: { thresholds: proposal, ...audit(), expected_revision: activeRevision.revision },
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
}

showToken();
route();

// lplgrad label: the page's behaviour. Plain JavaScript, no build step.
"use strict";

const token = document.querySelector('meta[name="csrf-token"]').content;
const SHORTCUTS = "123456789abcdefghijklmnopqrvwxy"; // 1-9, then letters; s = skip, u = undo
let state = null;
let currentId = null;
let poll = null;
let busy = false; // a label or undo request in flight: further keys wait, so one press is one answer
let reviewing = false; // review mode: the latest `lplgrad review` batch, keep or change each answer

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": token },
    body: JSON.stringify(body || {}),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

async function refresh() {
  const response = await fetch("/api/state");
  state = await response.json();
  render();
  const running = state.training.running;
  if (running && !poll) poll = setInterval(refresh, 1000);
  if (!running && poll) { clearInterval(poll); poll = null; }
}

// The server orders the batch: the newest round's picks by rank, then what is left from earlier
// rounds, images skipped in this round last (a skip lasts until the next round, across reloads).
function todo() {
  return state.batch.filter((item) => item.label === null);
}

function batchLine() {
  const rounds = state.dashboard.rounds;
  if (!rounds.length) return "No batch yet";
  const latest = rounds[rounds.length - 1].round;
  const newest = state.batch.filter((i) => i.round === latest);
  const earlier = state.batch.length - newest.length;
  const done = newest.filter((i) => i.label !== null).length;
  const left = earlier ? ` · then ${earlier} left from earlier rounds` : "";
  return `Round ${latest}: ${done} of ${newest.length} new images labeled${left}`;
}

function render() {
  const s = state.status;
  document.getElementById("progress").textContent =
    `${batchLine()} · ${s.labeled} of ${s.images} images labeled in all`;
  if (reviewing && !state.review.length) reviewing = false;
  renderReviewBanner();
  if (reviewing) { renderReview(); renderDashboard(); return; }
  const open = todo();
  const current = open[0] || null;
  currentId = current ? current.id : null;
  const img = document.getElementById("current-image");
  const caption = document.getElementById("suggestion");
  if (current) {
    img.hidden = false;
    img.src = `/image/${current.id}`;
    img.alt = `image ${current.id} (${current.path})`;
    const where = `round ${current.round}, rank ${current.rank}${current.skipped ? " · skipped before" : ""}`;
    caption.textContent = current.suggested
      ? `model suggests ${current.suggested} (${Math.round(100 * current.confidence)}%) · ${where}`
      : `${where} · no model yet`;
  } else {
    img.hidden = true;
    caption.textContent = state.batch.length
      ? "This batch is done: train and pick the next batch."
      : "No batch yet: train and pick the first batch.";
  }
  renderClasses(current);
  document.getElementById("undo").disabled = !state.can_undo;
  document.getElementById("skip").disabled = !current;
  const training = document.getElementById("training");
  const t = state.training;
  training.textContent = t.error || t.message;
  training.className = t.error ? "error" : "";
  document.getElementById("train").disabled = t.running;
  document.getElementById("next").replaceChildren(...open.slice(1, 7).map((item) => {
    const thumb = document.createElement("img");
    thumb.src = `/image/${item.id}`;
    thumb.alt = `next: image ${item.id}`;
    return thumb;
  }));
  renderDashboard();
}

function renderClasses(current) {
  const box = document.getElementById("classes");
  box.replaceChildren(...state.status.classes.map((name, index) => {
    const button = document.createElement("button");
    button.type = "button";
    const given = reviewing && current && current.label === name;
    button.className = "class" + (current && current.suggested === name ? " suggested" : "") + (given ? " given" : "");
    button.disabled = !current;
    button.dataset.label = name;
    const key = document.createElement("kbd");
    key.textContent = SHORTCUTS[index] || "";
    button.append(key, given ? ` keep ${name}` : ` ${name}`);
    button.addEventListener("click", () => answer(name));
    return button;
  }));
}

function renderReviewBanner() {
  const banner = document.getElementById("review-banner");
  const count = state.review.length;
  banner.hidden = !count && !reviewing;
  document.getElementById("review-toggle").textContent = reviewing
    ? "Back to labeling"
    : `Review ${count} doubtful label${count === 1 ? "" : "s"} (lplgrad review)`;
}

// One answer of the review batch: its label now, the model's out-of-sample suggestion, the doubt.
function renderReview() {
  const current = state.review[0];
  currentId = current.id;
  const img = document.getElementById("current-image");
  img.hidden = false;
  img.src = `/image/${current.id}`;
  img.alt = `image ${current.id} (${current.path})`;
  document.getElementById("suggestion").textContent =
    `labeled ${current.label} · the model suggests ${current.suggested} · doubt ${Math.round(100 * current.doubt)}%` +
    ` · review ${current.batch}, ${state.review.length} left`;
  renderClasses(current);
  document.getElementById("undo").disabled = true;
  document.getElementById("skip").disabled = true;
  document.getElementById("next").replaceChildren();
}

function renderStopping() {
  const stopping = state.status.stopping;
  document.getElementById("stop-summary").textContent = stopping.summary;
  document.getElementById("criteria").replaceChildren(...stopping.criteria.map((c) => {
    const item = document.createElement("li");
    item.className = c.met ? "met" : "";
    item.textContent = `${c.met ? "✓" : "·"} ${c.name}${c.met ? ` (since round ${c.since})` : ""}: ${c.detail}`;
    return item;
  }));
  document.getElementById("calibration").textContent = stopping.ece === null ? "" :
    `Calibration: expected calibration error ${(100 * stopping.ece).toFixed(1)}%; ` +
    `the suggestions' confidences are temperature-scaled (T = ${stopping.temperature.toFixed(2)}).`;
  drawReliability(stopping.reliability);
}

// The latest round's reliability diagram: accuracy per confidence bin against the diagonal of a
// perfectly calibrated model (bins of fewer than 5 images are left out).
function drawReliability(bins) {
  const svg = document.getElementById("reliability");
  const points = bins.map(([count, confidence, accuracy]) => ({ count, confidence, accuracy }))
    .filter((b) => b.count >= 5 && b.accuracy !== null);
  svg.hidden = !points.length;
  const ns = "http://www.w3.org/2000/svg";
  const el = (name, attrs) => {
    const node = document.createElementNS(ns, name);
    Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
    return node;
  };
  const [left, top, size] = [30, 8, 120];
  const x = (c) => left + size * c;
  const y = (a) => top + size * (1 - a);
  const parts = [el("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), class: "diagonal" }),
    el("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(0), class: "axis" }),
    el("line", { x1: x(0), y1: y(0), x2: x(0), y2: y(1), class: "axis" })];
  for (const [text, attrs] of [["100%", { x: 2, y: y(1) + 3 }], ["0", { x: 18, y: y(0) + 3 }],
    ["confidence", { x: left + 30, y: top + size + 14 }]]) {
    const label = el("text", attrs);
    label.textContent = text;
    parts.push(label);
  }
  if (points.length) {
    parts.push(el("polyline", { class: "line", points: points.map((b) => `${x(b.confidence)},${y(b.accuracy)}`).join(" ") }));
    points.forEach((b) => {
      const point = el("circle", { cx: x(b.confidence), cy: y(b.accuracy), r: 3, class: "point" });
      const title = el("title", {});
      title.textContent = `confidence ${Math.round(100 * b.confidence)}%: ${Math.round(100 * b.accuracy)}% right (${b.count} images)`;
      point.append(title);
      parts.push(point);
    });
  }
  svg.replaceChildren(...parts);
}

function renderDashboard() {
  renderStopping();
  const perClass = state.dashboard.per_class;
  const most = Math.max(1, ...Object.values(perClass));
  const measured = state.dashboard.rounds.filter((r) => r.accuracy !== null);
  const latest = measured.length ? measured[measured.length - 1].per_class_accuracy : {};
  const head = document.createElement("tr");
  head.innerHTML = "<th>class</th><th>labeled</th><th></th><th>accuracy</th>";
  document.getElementById("per-class").replaceChildren(head, ...state.dashboard.classes.map((name) => {
    const count = perClass[name] || 0;
    const row = document.createElement("tr");
    row.innerHTML = `<td></td><td></td><td class="bar"><span></span></td><td></td>`;
    row.children[0].textContent = name;
    row.children[1].textContent = count;
    row.querySelector("span").style.width = `${(100 * count) / most}px`;
    const accuracy = latest[name];
    row.children[3].textContent = accuracy === null || accuracy === undefined ? "-" : `${Math.round(100 * accuracy)}%`;
    return row;
  }));
  drawAccuracy(state.dashboard.rounds.filter((r) => r.accuracy !== null));
  document.getElementById("found").replaceChildren(...state.dashboard.rounds.map((r) => {
    const row = document.createElement("tr");
    row.innerHTML = "<td></td><td></td>";
    row.children[0].textContent = `round ${r.round}`;
    row.children[1].textContent = Object.entries(r.found).map(([k, v]) => `${k} ${v}`).join(", ") || "-";
    return row;
  }));
}

function drawAccuracy(rounds) {
  const svg = document.getElementById("accuracy");
  const ns = "http://www.w3.org/2000/svg";
  const el = (name, attrs) => {
    const node = document.createElementNS(ns, name);
    Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
    return node;
  };
  const [left, top, width, height] = [30, 10, 280, 125];
  const x = (i) => left + (rounds.length < 2 ? width / 2 : (i * width) / (rounds.length - 1));
  const y = (a) => top + height * (1 - a);
  const parts = [el("line", { x1: left, y1: top + height, x2: left + width, y2: top + height, class: "axis" }),
    el("line", { x1: left, y1: top, x2: left, y2: top + height, class: "axis" })];
  for (const a of [0, 0.5, 1]) {
    const label = el("text", { x: 2, y: y(a) + 3 });
    label.textContent = `${100 * a}%`;
    parts.push(label);
  }
  if (rounds.length) {
    parts.push(el("polyline", { class: "line", points: rounds.map((r, i) => `${x(i)},${y(r.accuracy)}`).join(" ") }));
    rounds.forEach((r, i) => {
      if (r.accuracy_low !== null && r.accuracy_low !== undefined) {  // the 95% Wilson interval
        parts.push(el("line", { x1: x(i), y1: y(r.accuracy_low), x2: x(i), y2: y(r.accuracy_high), class: "interval" }));
      }
      const point = el("circle", { cx: x(i), cy: y(r.accuracy), r: 3.5, class: "point" });
      const title = el("title", {});
      const interval = r.accuracy_low === null || r.accuracy_low === undefined ? "" :
        ` [${(100 * r.accuracy_low).toFixed(1)}, ${(100 * r.accuracy_high).toFixed(1)}]`;
      title.textContent = `round ${r.round}: ${(100 * r.accuracy).toFixed(1)}%${interval} (${r.accuracy_on})`;
      point.append(title);
      const label = el("text", { x: x(i) - 6, y: top + height + 12 });
      label.textContent = `r${r.round}`;
      parts.push(point, label);
    });
  }
  svg.replaceChildren(...parts);
}

async function answer(name) {
  if (currentId === null || busy) return;
  if (reviewing) { await reviewAnswer(name); return; }
  busy = true;
  try {
    await post("/api/label", { image: currentId, label: name });
  } catch (error) {
    showError(error);
  }
  await refresh();
  busy = false;
  // The batch is done: learn from it and pick the next one without being asked.
  if (state.batch.length && todo().length === 0 && !state.training.running) await train();
}

async function reviewAnswer(name) {
  busy = true;
  try {
    await post("/api/review", { image: currentId, label: name, expected: state.review[0].label });
  } catch (error) {
    showError(error);
  }
  await refresh();
  busy = false;
}

async function undo() {
  if (busy) return;
  busy = true;
  try {
    await post("/api/undo");
  } catch (error) {
    showError(error);
  }
  await refresh();
  busy = false;
}

async function train() {
  try {
    await post("/api/train");
  } catch (error) {
    showError(error);
  }
  await refresh();
}

async function skip() {
  if (currentId === null || busy) return;
  busy = true;
  try {
    await post("/api/skip", { image: currentId });
  } catch (error) {
    showError(error);
  }
  await refresh();
  busy = false;
}

function showError(error) {
  const training = document.getElementById("training");
  training.textContent = error.message;
  training.className = "error";
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || !state) return;
  const key = event.key.toLowerCase();
  if (key === "s" && !reviewing) { skip(); return; }
  if (key === "u" && !reviewing) { undo(); return; }
  const index = SHORTCUTS.indexOf(key);
  if (index >= 0 && index < state.status.classes.length) answer(state.status.classes[index]);
});

document.getElementById("skip").addEventListener("click", skip);
document.getElementById("current-image").addEventListener("error", () => {
  if (currentId !== null) showError(new Error(`image ${currentId} cannot be shown (changed or moved since it was registered)`));
});
document.getElementById("undo").addEventListener("click", undo);
document.getElementById("train").addEventListener("click", train);
document.getElementById("review-toggle").addEventListener("click", () => { reviewing = !reviewing; render(); });
refresh();

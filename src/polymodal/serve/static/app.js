// The polymodal web page: drop an image, see what the served model makes of it. Plain JS, no CDN:
// it asks GET /info which tasks the model has and shows a card for each.
"use strict";
const $ = (id) => document.getElementById(id);
const BUILT_IN = new Set(["caption", "answer", "classify", "translate", "retrieve", "embed_images", "embed_texts"]);
let info = null, file = null;

function showError(message) {
  const el = $("error");
  el.hidden = !message;
  el.textContent = message || "";
}

async function call(path, fields, withImage = true) {
  const form = new FormData();
  if (withImage) {
    if (!file) throw new Error("drop an image first");
    form.append("image", file, file.name || "image.png");
  }
  for (const [k, v] of Object.entries(fields || {})) form.append(k, v);
  const res = await fetch(path, { method: "POST", body: form });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error((body.error && body.error.message) || `${res.status} ${res.statusText}`);
  return body;
}

function has(task) { return info && info.tasks.includes(task); }

async function refresh() {
  try {
    const [health, i] = await Promise.all([fetch("/health"), fetch("/info").then((r) => r.json())]);
    info = i;
    $("status").textContent = health.ok ? "ready" : (i.error ? "failed" : "loading");
    $("status").className = "pill " + (health.ok ? "ok" : i.error ? "bad" : "");
    $("model").textContent = `${i.model} — ${i.kind || "…"}${i.tasks.length ? " · " + i.tasks.join(", ") : ""}`;
    if (!health.ok) { if (i.error) showError(i.error); setTimeout(refresh, 1000); return; }
    for (const card of document.querySelectorAll(".card[data-task]")) {
      const t = card.dataset.task;
      card.hidden = !(has(t) && (t !== "retrieve" || i.index));
    }
    buildOthers();
  } catch (e) { $("status").textContent = "offline"; setTimeout(refresh, 2000); }
}

function buildOthers() {
  // Tasks without a card of their own (ground, explain, ...): a card each, run through POST /{method}.
  const box = $("others");
  box.innerHTML = "";
  for (const task of info.tasks.filter((t) => !BUILT_IN.has(t))) {
    const card = document.createElement("div");
    card.className = "card";
    card.innerHTML = `<h2></h2><form><input placeholder="text (optional), e.g. the red circle"><button>Run</button></form>
                      <div class="result"></div>`;
    card.querySelector("h2").textContent = task;
    card.querySelector("form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const text = card.querySelector("input").value.trim();
      await guarded(async () => {
        const out = await call("/" + task, text ? { text } : {});
        const result = out.results[0];
        draw(result);
        const shown = card.querySelector(".result");
        shown.innerHTML = "";
        for (const url of pictures(result)) {
          const img = document.createElement("img"); img.src = url; img.style.maxWidth = "100%"; shown.appendChild(img);
        }
        const pre = document.createElement("pre");
        pre.textContent = JSON.stringify(result, (k, v) => (typeof v === "string" && v.startsWith("data:image/")) ? "<image>" : v, 1).slice(0, 2000);
        shown.appendChild(pre);
      });
    });
    box.appendChild(card);
  }
}

function pictures(x, out = []) {
  if (typeof x === "string" && x.startsWith("data:image/")) out.push(x);
  else if (Array.isArray(x)) x.forEach((v) => pictures(v, out));
  else if (x && typeof x === "object") Object.values(x).forEach((v) => pictures(v, out));
  return out;
}

function isBox(v) { return Array.isArray(v) && v.length === 4 && v.every((n) => typeof n === "number"); }
function isGrid(v) { return Array.isArray(v) && v.length > 1 && Array.isArray(v[0]) && v[0].length > 1 && typeof v[0][0] === "number"; }

function findBoxes(x, out = []) {
  // Boxes are [x0, y0, x1, y1] under a key that names them ("box", "boxes", "bbox"), or objects with a "box".
  if (!x || typeof x !== "object") return out;
  for (const [k, v] of Object.entries(x)) {
    if (/box/i.test(k) && isBox(v)) out.push({ box: v, label: x.label || x.text || "" });
    else if (/box/i.test(k) && Array.isArray(v)) v.forEach((b) => isBox(b) ? out.push({ box: b, label: "" }) : findBoxes(b, out));
    else if (typeof v === "object") findBoxes(v, out);
  }
  return out;
}

function findGrid(x) {
  if (isGrid(x)) return x;
  if (x && typeof x === "object") for (const v of Object.values(x)) { const g = findGrid(v); if (g) return g; }
  return null;
}

function draw(result) {
  const img = $("preview"), c = $("overlay");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const grid = findGrid(result);
  if (grid) {  // a heat map: min-max scaled, red = high, drawn over the image
    const h = grid.length, w = grid[0].length, flat = grid.flat();
    const lo = Math.min(...flat), hi = Math.max(...flat), span = hi - lo || 1;
    g.globalAlpha = 0.5;
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      const t = (grid[y][x] - lo) / span;
      g.fillStyle = `hsl(${(1 - t) * 240}, 100%, 50%)`;
      g.fillRect(x * c.width / w, y * c.height / h, c.width / w + 1, c.height / h + 1);
    }
    g.globalAlpha = 1;
  }
  g.lineWidth = Math.max(1, c.width / 128);
  g.font = `${Math.max(8, c.width / 16)}px sans-serif`;
  for (const { box, label } of findBoxes(result)) {
    const scale = box.every((n) => n <= 1) ? [c.width, c.height] : [1, 1];  // normalised or pixel boxes
    const [x0, y0, x1, y1] = [box[0] * scale[0], box[1] * scale[1], box[2] * scale[0], box[3] * scale[1]];
    g.strokeStyle = "#ff1493"; g.strokeRect(x0, y0, x1 - x0, y1 - y0);
    if (label) { g.fillStyle = "#ff1493"; g.fillText(label, x0 + 2, Math.max(10, y0 - 2)); }
  }
}

async function guarded(fn) {
  showError("");
  try { await fn(); } catch (e) { showError(e.message); }
}

async function onImage(f) {
  if (!f) return;
  file = f;
  $("preview").src = URL.createObjectURL(f);
  $("stage").hidden = false; $("drop-hint").hidden = true;
  $("preview").onload = () => draw({});
  if (has("caption")) {
    $("caption").textContent = "…";
    await guarded(async () => { $("caption").textContent = (await call("/caption", {})).results[0].caption; });
  }
}

function wire() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); onImage(e.dataTransfer.files[0]); });
  $("file").addEventListener("change", (e) => onImage(e.target.files[0]));
  $("ask-form").addEventListener("submit", (e) => { e.preventDefault(); guarded(async () => {
    $("answer").textContent = (await call("/answer", { question: $("question").value })).results[0].answer; }); });
  $("translate-form").addEventListener("submit", (e) => { e.preventDefault(); guarded(async () => {
    $("translation").textContent = (await call("/translate", { text: $("source").value })).results[0].translation; }); });
  $("classify-form").addEventListener("submit", (e) => { e.preventDefault(); guarded(async () => {
    const r = (await call("/classify", { labels: $("labels").value })).results[0];
    const box = $("classes"); box.innerHTML = "";
    for (const [label, p] of Object.entries(r.scores).sort((a, b) => b[1] - a[1])) {
      const row = document.createElement("div"); row.className = "bar";
      const name = document.createElement("span"); name.textContent = label;
      const bar = document.createElement("div"); bar.style.width = `${Math.round(p * 100)}%`;
      const num = document.createElement("span"); num.textContent = p.toFixed(3);
      row.append(name, bar, num); box.appendChild(row);
    }
  }); });
  $("retrieve-form").addEventListener("submit", (e) => { e.preventDefault(); guarded(async () => {
    const hits = (await call("/retrieve", { query: $("query").value }, false)).results;
    const list = $("hits"); list.innerHTML = "";
    for (const h of hits) { const li = document.createElement("li"); li.textContent = `${h.image}  (${h.score.toFixed(3)})`; list.appendChild(li); }
  }); });
}

wire();
refresh();

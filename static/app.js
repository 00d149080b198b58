// q4apr page: file selection, options, the worker's lifecycle, and the report.
// Everything that comes from a file is inserted with textContent, never as markup.

import { MSG, BOOT_STAGES } from "./protocol.js";

const CANCEL_GRACE_MS = 1000;
const OPTIONS_KEY = "q4apr.options.v1";
const SAMPLE_URL = "static/sample/model.safetensors";
const SAMPLE_NAME = "model.safetensors";

const $ = (id) => document.getElementById(id);
const body = document.body;

const el = {
  live: $("live"),
  bootText: $("boot-text"),
  bootStages: $("boot-stages"),
  bootBar: $("boot-bar"),
  bootRetry: $("boot-retry"),
  dropzone: $("dropzone"),
  dzMain: $("dz-main"),
  fileInput: $("file-input"),
  folderInput: $("folder-input"),
  selection: $("selection"),
  fileList: $("file-list"),
  modelCard: $("model-card"),
  modelName: $("model-name"),
  modelStatus: $("model-status"),
  modelFacts: $("model-facts"),
  ignored: $("ignored"),
  ignoredTitle: $("ignored-title"),
  ignoredList: $("ignored-list"),
  selectionNote: $("selection-note"),
  clearFiles: $("clear-files"),
  sampleBtn: $("sample-btn"),
  form: $("options-form"),
  skip: $("opt-skip"),
  chunk: $("opt-chunk"),
  chunkHint: $("opt-chunk-hint"),
  actionHint: $("action-hint"),
  inspectBtn: $("inspect-btn"),
  quantizeBtn: $("quantize-btn"),
  workPanel: $("work-panel"),
  workTitle: $("work-title"),
  workFile: $("work-file"),
  workBar: $("work-bar"),
  workPct: $("work-pct"),
  workBytes: $("work-bytes"),
  workTime: $("work-time"),
  workTensor: $("work-tensor"),
  cancelBtn: $("cancel-btn"),
  errorPanel: $("error-panel"),
  errorTitle: $("error-title"),
  errorMessage: $("error-message"),
  errorHint: $("error-hint"),
  resultPanel: $("result-panel"),
  resultTitle: $("result-title"),
  resultSub: $("result-sub"),
  downloadLink: $("download-link"),
  downloadName: $("download-name"),
  runtimes: $("runtimes"),
  totals: $("totals"),
  chartRows: $("chart-rows"),
  chartLegend: $("chart-legend"),
  reportFilter: $("report-filter"),
  reportTable: $("report-table"),
  reportBody: $("report-body"),
  reportCount: $("report-count"),
  inspectPanel: $("inspect-panel"),
  inspectFile: $("inspect-file"),
  inspectSub: $("inspect-sub"),
  metaBody: $("meta-body"),
  inspectFilter: $("inspect-filter"),
  inspectBody: $("inspect-body"),
  inspectCount: $("inspect-count"),
  versions: $("versions"),
};

// ---------------------------------------------------------------- formatting

const nf = new Intl.NumberFormat("en");
const compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });

function formatBytes(n) {
  n = Number(n);
  if (!Number.isFinite(n)) return "–";
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${units[i]}`;
}

function formatSeconds(s) {
  s = Number(s);
  if (!Number.isFinite(s)) return "–";
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}

function formatMse(v) {
  if (v === null || v === undefined || Number.isNaN(Number(v))) return "–";
  v = Number(v);
  if (v === 0) return "0";
  if (!Number.isFinite(v)) return String(v);
  return Math.abs(v) < 1e-3 || Math.abs(v) >= 1e4 ? v.toExponential(2) : v.toPrecision(3);
}

/** A signal-to-noise ratio in dB: "inf" (an exact round trip) as "exact", null as "–". */
function formatDb(v) {
  if (v === "inf" || v === Infinity) return "exact";
  if (v === null || v === undefined || !Number.isFinite(Number(v))) return "–";
  return `${Number(v).toFixed(1)} dB`;
}

function formatShape(shape) {
  if (!Array.isArray(shape)) return String(shape ?? "");
  if (shape.length === 0) return "scalar";
  return shape.map((d) => nf.format(d)).join(" × ");
}

function numel(shape) {
  return Array.isArray(shape) ? shape.reduce((a, b) => a * Number(b), 1) : 0;
}

function ext(name) {
  const m = /\.([A-Za-z0-9]+)$/.exec(name || "");
  return m ? m[1].toLowerCase() : "";
}

function kindOf(file) {
  const n = file.name.toLowerCase();
  if (n.endsWith(".index.json")) return "shard index";
  const e = ext(n);
  return { safetensors: "safetensors", gguf: "GGUF", apr: "APR", npy: "NumPy", npz: "NumPy archive", json: "JSON" }[e] || "unknown";
}

function displayName(files, folder = null) {
  if (folder) return folder;
  if (!files.length) return "";
  const main = files.filter((f) => !f.name.toLowerCase().endsWith(".json"));
  const sorted = (main.length ? main : files).map((f) => f.name).sort();
  return files.length === 1 ? files[0].name : `${sorted[0]} + ${files.length - 1} more`;
}

function make(tag, opts = {}, children = []) {
  const node = document.createElement(tag);
  if (opts.className) node.className = opts.className;
  if (opts.text !== undefined) node.textContent = String(opts.text);
  if (opts.title) node.title = String(opts.title);
  for (const c of children) node.append(c);
  return node;
}

function announce(text) {
  el.live.textContent = "";
  // A fresh text node so that repeated messages are announced too.
  requestAnimationFrame(() => { el.live.textContent = text; });
}

// ---------------------------------------------------------------- state

let worker = null;
let ready = false;
let bootFailed = false;
let nextId = 1;
let job = null;          // the running job, or null
let selection = [];      // File[] (of a model folder: the files at its top level)
let folder = null;       // the model folder's name (selection is a model folder), or null
let folderNamed = false; // the name is the folder's own (else the files came one by one)
let subIgnored = [];     // files in the folder's subfolders: never sent, listed as ignored
let description = null;  // the folder's description: {id, state, summary, message}
let pickSeq = 0;         // the latest drop or pick (a folder is walked asynchronously)
let objectUrl = null;    // the current download's blob URL
let tick = null;         // elapsed-time timer

function setBoot(state) {
  body.dataset.boot = state;
}

function setState(state) {
  body.dataset.state = state;
}

function updateControls() {
  const busy = job !== null;
  const can = ready && !busy;
  // A folder is quantized once described; a refused one still may be (the run then reports
  // the same error the usual way, and writes nothing).
  const usable = selection.length > 0 && (!folder || (description && description.state !== "pending"));
  el.quantizeBtn.disabled = !(can && usable);
  el.inspectBtn.disabled = !(can && usable);
  el.sampleBtn.disabled = !can;
  el.fileInput.disabled = busy;
  el.folderInput.disabled = busy;
  el.clearFiles.disabled = busy;
  el.dropzone.classList.toggle("disabled", busy);
  body.classList.toggle("busy", busy);

  let hint;
  if (busy) hint = job.kind === "quantize" ? "Working… you can cancel at any time." : "Reading the file…";
  else if (bootFailed) hint = "The Python runtime did not start. Use “Try again” at the top.";
  else if (!selection.length) hint = ready ? "Choose a model folder or file to begin, or try the sample." : "Choose a model folder or file to begin. The runtime is still starting.";
  else if (!ready) hint = "Starting the Python runtime… this takes a few seconds the first time.";
  else if (folder && description && description.state === "pending") hint = `Reading ${folder}…`;
  else if (folder && description && description.state === "failed") hint = `${folder} was refused: see why above. Fix it and choose it again.`;
  else {
    const total = selection.reduce((a, f) => a + f.size, 0);
    const out = folder ? ` · ${outputNameOf(folder, currentFormat())}` : "";
    hint = `${displayName(selection, folder)} · ${formatBytes(total)} → ${currentFormat().toUpperCase()}${out}`;
  }
  el.actionHint.textContent = hint;
}

// ---------------------------------------------------------------- worker lifecycle

const STAGE_TEXT = {
  runtime: "Starting the Python runtime…",
  numpy: "Loading numpy…",
  core: "Loading the q4apr core…",
};

function showBootStage(stage, progress) {
  const idx = BOOT_STAGES.indexOf(stage);
  for (const li of el.bootStages.children) {
    const i = BOOT_STAGES.indexOf(li.dataset.stage);
    li.classList.toggle("done", i < idx || (i === idx && progress >= 1));
    li.classList.toggle("active", i === idx && progress < 1);
  }
  el.bootBar.value = Math.max(0, Math.min(1, progress));
  if (STAGE_TEXT[stage] && progress < 1) el.bootText.textContent = STAGE_TEXT[stage];
}

function startWorker(restart = false) {
  ready = false;
  bootFailed = false;
  setBoot("booting");
  el.bootRetry.hidden = true;
  el.bootText.textContent = restart ? "Restarting the Python runtime…" : "Starting…";
  showBootStage("runtime", 0);
  updateControls();

  // the first start adopts the worker boot.js started while the page loaded
  const early = restart ? null : self.q4aprEarlyWorker;
  self.q4aprEarlyWorker = null;
  const w = early ? early.worker : new Worker(new URL("./worker.js", import.meta.url), { type: "module", name: "q4apr" });
  worker = w;
  self.q4aprWorker = w;   // for the tests and benchmarks (Playwright), e.g. MSG.KILL_CONVERTER
  w.onmessage = (ev) => { if (worker === w) onWorkerMessage(ev.data); };
  w.onerror = (ev) => {
    if (worker !== w) return;
    ev.preventDefault?.();
    bootFailure(ev.message || "the worker script could not be loaded");
  };
  w.onmessageerror = () => { if (worker === w) failJob("a message from the worker could not be read"); };
  for (const ev of early ? early.early : []) {   // what it said before we listened
    const on = { message: w.onmessage, error: w.onerror, messageerror: w.onmessageerror }[ev.type];
    if (on) on(ev);
  }
}

function bootFailure(message) {
  ready = false;
  bootFailed = true;
  setBoot("failed");
  el.bootText.textContent = "Could not start";
  el.bootRetry.hidden = false;
  if (job) failJob(message);
  showNotice("error", "The runtime could not start", message,
    "Check that the page was loaded completely, then use “Try again”.");
  updateControls();
}

el.bootRetry.addEventListener("click", () => {
  if (worker) worker.terminate();
  worker = null;
  hidePanels();
  setState("idle");
  startWorker(true);
});

function onWorkerMessage(msg) {
  if (description && msg.id === description.id && (msg.type === MSG.DESCRIBED || msg.type === MSG.ERROR)) {
    finishDescribe(msg);
    return;
  }
  switch (msg.type) {
    case MSG.BOOT:
      showBootStage(msg.stage, msg.progress);
      return;
    case MSG.READY: {
      ready = true;
      setBoot("ready");
      el.bootText.textContent = "Ready";
      showBootStage("core", 1);
      const v = msg.versions || {};
      const parts = [];
      if (v.python) parts.push(`Python ${v.python}`);
      if (v.numpy) parts.push(`numpy ${v.numpy}`);
      if (v.pyodide) parts.push(`Pyodide ${v.pyodide}`);
      if (v.q4apr) parts.push(`q4apr ${v.q4apr}`);
      el.versions.textContent = parts.join(" · ");
      updateControls();
      configureWorkers();
      registerServiceWorker();
      if (description && description.state === "pending") describeSelection();   // (again: a new worker)
      return;
    }
    case MSG.ERROR:
      if (msg.id === null || msg.id === undefined) {
        bootFailure(msg.message);
        return;
      }
      if (!job || msg.id !== job.id) return;
      if (job.cancelRequested) finishCancelled();
      else failJob(msg.message);
      return;
    default:
      break;
  }
  if (!job || msg.id !== job.id) return;   // a stale message from an earlier job
  switch (msg.type) {
    case MSG.PROGRESS:
      showProgress(msg.done, msg.total, msg.tensor);
      break;
    case MSG.CHUNK:
      if (!job.cancelRequested) {
        job.chunks.push(msg.data);
        job.bytesOut += msg.data.byteLength;
      }
      break;
    case MSG.TRUNCATE:
      truncateChunks(job, msg.size);
      break;
    case MSG.DONE:
      if (job.cancelRequested) finishCancelled();
      else finishDone(msg.report, msg.head, msg.workers);
      break;
    case MSG.INSPECTED:
      if (job.cancelRequested) finishCancelled();
      else finishInspected(msg.info);
      break;
    case MSG.CANCELLED:
      finishCancelled();
      break;
    default:
      break;
  }
}

// ---------------------------------------------------------------- selection

// A model folder is its top-level files; files in its subfolders (onnx/, .cache/...) play
// no part and are only listed. Files chosen one by one that hold a config.json are a
// model folder too, without a name of its own.
const UNNAMED_FOLDER = "model";
// The files the core reads from a model folder (mirrors q4apr.folder.classify, for the list
// shown before the folder's description arrives; the description's `ignored` then decides).
const FOLDER_ROLES = {
  "config.json": "config",
  "tokenizer.json": "tokenizer", "tokenizer_config.json": "tokenizer", "special_tokens_map.json": "tokenizer",
  "tokenizer.model": "tokenizer", "added_tokens.json": "tokenizer",
  "generation_config.json": "generation", "chat_template.jinja": "chat template", "chat_template.json": "chat template",
  "modules.json": "pooling",
};

function folderRole(name) {
  const low = name.toLowerCase();
  if (low.endsWith(".safetensors.index.json")) return "shard index";
  if (low.endsWith(".safetensors")) return "weights";
  return FOLDER_ROLES[name] || null;
}

/** The output's name for a folder, as the core will give it (the report's name is used). */
function outputNameOf(name, fmt) {
  const stem = name.replace(/\.(Q4_K_M|q4_k_m|Q4_0|q4_0|Q4|q4)$/, "");
  return fmt === "gguf" ? `${stem}.${currentType()}.gguf` : `${stem}.apr`;
}

function setSelection(files, opts = {}) {
  pickSeq++;
  selection = files.filter((f) => f && typeof f.name === "string");
  selection.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const hasConfig = selection.some((f) => f.name === "config.json");
  folderNamed = Boolean(opts.folder);
  folder = opts.folder || (hasConfig ? UNNAMED_FOLDER : null);
  subIgnored = folder && Array.isArray(opts.ignored) ? opts.ignored.slice() : [];
  description = null;
  if (folder && selection.length) describeSelection();
  renderSelection();
}

function ignoredNames() {
  if (!folder) return new Set();
  const top = description && description.summary && Array.isArray(description.summary.ignored)
    ? description.summary.ignored
    : selection.filter((f) => !folderRole(f.name)).map((f) => f.name);
  return new Set(top);
}

function renderSelection() {
  const ignored = ignoredNames();
  el.fileList.replaceChildren();
  for (const f of selection) {
    if (ignored.has(f.name)) continue;
    const kind = (folder && folderRole(f.name)) || kindOf(f);
    const li = make("li", {}, [
      make("span", { className: "fname", text: f.name, title: f.name }),
      make("span", { className: "badge", text: kind }),
      make("span", { className: "fsize", text: formatBytes(f.size) }),
    ]);
    el.fileList.append(li);
  }
  el.fileList.hidden = !el.fileList.children.length;

  const all = [...selection.filter((f) => ignored.has(f.name)).map((f) => f.name), ...subIgnored];
  const MAX_CHIPS = 40;
  el.ignoredList.replaceChildren(...all.slice(0, MAX_CHIPS).map((n) => make("li", { text: n, title: n })));
  if (all.length > MAX_CHIPS) el.ignoredList.append(make("li", { className: "more", text: `… ${nf.format(all.length - MAX_CHIPS)} more` }));
  el.ignoredTitle.textContent = `Ignored: ${nf.format(all.length)} ${all.length === 1 ? "file" : "files"}`;
  el.ignored.hidden = all.length === 0;

  renderModelCard();

  let note = "";
  if (selection.length && !folder) {
    note = "Weights alone: the result is a container of tensors, without architecture or tokenizer. "
      + "For a file that llama.cpp or Aprender runs, choose the model’s folder.";
  } else if (folder && !folderNamed) {
    note = `Chosen file by file, so the model is named “${folder}”. `
      + "Drop the folder itself (or use “Choose a folder…”) to name it and the download after the model.";
  }
  el.selectionNote.textContent = note;
  el.selectionNote.hidden = !note;
  el.selection.hidden = selection.length === 0;
  el.dropzone.classList.toggle("compact", selection.length > 0);
  el.dzMain.textContent = selection.length ? "Drop another model folder or file" : "Drop a model folder or file here";
  body.dataset.describe = !folder ? (selection.length ? "none" : "") : description ? description.state : "";
  updateControls();
}

function fact(key, label, value, detail) {
  const dd = make("dd", {}, [make("span", { className: "big", text: value })]);
  if (detail) dd.append(make("span", { className: "detail", text: detail }));
  const div = make("div", {}, [make("dt", { text: label }), dd]);
  div.dataset.fact = key;
  return div;
}

function num(v) {
  return v === null || v === undefined || v === "" ? "–" : Number.isFinite(Number(v)) ? nf.format(Number(v)) : String(v);
}

function renderModelCard() {
  el.modelCard.hidden = !folder || !selection.length;
  if (el.modelCard.hidden) return;
  const d = description || { state: "pending" };
  el.modelCard.dataset.state = d.state;
  el.modelName.textContent = folder;
  el.modelStatus.removeAttribute("role");
  el.modelFacts.replaceChildren();
  if (d.state === "pending") {
    el.modelStatus.textContent = "Reading config.json and the tokenizer…";
    return;
  }
  if (d.state === "failed") {
    el.modelStatus.textContent = d.message;
    el.modelStatus.setAttribute("role", "alert");
    return;
  }
  const m = d.summary || {};
  const tok = m.tokenizer || {};
  el.modelStatus.textContent = [
    `${m.architecture || "?"} model`,
    m.context != null ? `${num(m.context)}-token context` : null,
    m.tied ? "tied embeddings" : null,
    "ready to quantize",
  ].filter(Boolean).join(" · ");
  const tokDetail = [tok.pre, tok.size != null && tok.size !== m.vocab_size ? `${num(tok.size)} tokens` : null]
    .filter(Boolean).join(" · ");
  el.modelFacts.append(
    fact("architecture", "Architecture", m.architecture ?? "–",
      m.gguf_architecture && m.gguf_architecture !== m.architecture ? `llama.cpp: ${m.gguf_architecture}` : null),
    fact("layers", "Layers", num(m.layers)),
    fact("hidden_size", "Hidden size", num(m.hidden_size)),
    fact("heads", "Heads", num(m.heads), m.kv_heads != null && m.kv_heads !== m.heads ? `${num(m.kv_heads)} KV` : null),
    fact("vocab_size", "Vocabulary", num(m.vocab_size)),
    fact("tokenizer", "Tokenizer", tok.kind ?? "–", tokDetail || null),
  );
}

function describeSelection() {
  description = { id: nextId++, state: "pending", summary: null, message: "" };
  if (!ready || !worker) return;                 // sent once the runtime is ready
  worker.postMessage({ type: MSG.DESCRIBE, id: description.id, files: selection, folder });
}

function finishDescribe(msg) {
  if (msg.type === MSG.DESCRIBED) {
    description.state = "ready";
    description.summary = msg.summary || null;
    const m = description.summary;
    announce(m ? `${folder}: ${m.architecture}, ${m.layers} layers, vocabulary ${m.vocab_size}. Ready to quantize.` : `${folder} read.`);
  } else {
    description.state = "failed";
    description.message = msg.message || "unknown error";
    announce(`${folder} cannot be quantized. ${description.message}`);
  }
  renderSelection();
}

/** Select the files of a drop or a pick: a model folder ({name, files, ignored}) or files. */
function takeFolder(found) {
  if (!found.files.length) {
    hidePanels();
    showNotice("error", `Nothing to quantize in ${found.name}`,
      found.ignored.length ? `${found.name} holds only subfolders (${found.ignored.slice(0, 3).join(", ")}${found.ignored.length > 3 ? ", …" : ""}).`
        : `${found.name} is empty.`,
      "Choose the model’s own folder: the one that holds config.json and the .safetensors files.");
    return;
  }
  hidePanels();
  setSelection(found.files, { folder: found.name, ignored: found.ignored });
  announce(`Folder ${found.name} selected: ${found.files.length} files.`);
}

function takeFiles(files) {
  if (!files.length) return;
  hidePanels();
  setSelection(files);
  announce(`${files.length === 1 ? files[0].name : files.length + " files"} selected`);
}

// A folder chosen with the picker: its files' webkitRelativePath is "Folder/sub/name".
function folderFromPicker(files) {
  const name = (files[0].webkitRelativePath || "").split("/")[0] || UNNAMED_FOLDER;
  const top = [], ignored = [];
  for (const f of files) {
    const parts = (f.webkitRelativePath || f.name).split("/");
    if (parts.length <= 2) top.push(f);
    else ignored.push(parts.slice(1).join("/"));
  }
  return { name, files: top, ignored: ignored.sort() };
}

// A dropped folder: directory entries are walked (readEntries answers in batches, so it
// is called until it answers none); files below the top level are only listed.
function readAllEntries(dir) {
  const reader = dir.createReader();
  const out = [];
  return new Promise((resolve, reject) => {
    const next = () => reader.readEntries((batch) => {
      if (!batch.length) return resolve(out);
      out.push(...batch);
      next();
    }, reject);
    next();
  });
}

function entryFile(entry) {
  return new Promise((resolve, reject) => entry.file(resolve, reject));
}

async function walkFolder(dir) {
  const files = [], ignored = [];
  const visit = async (d, prefix) => {
    const entries = await readAllEntries(d);
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      if (e.isDirectory) await visit(e, `${prefix}${e.name}/`);
      else if (prefix) ignored.push(prefix + e.name);
      else if (e.isFile) files.push(await entryFile(e));
    }
  };
  await visit(dir, "");
  return { name: dir.name, files, ignored };
}

async function takeDrop(entries, files) {
  const seq = ++pickSeq;
  const dirs = entries.filter((e) => e && e.isDirectory);
  if (!dirs.length) return takeFiles(files);
  if (entries.length > 1) {
    hidePanels();
    showNotice("error", "Drop one model folder at a time",
      `The drop held ${entries.length} items, ${dirs.length} of them ${dirs.length === 1 ? "a folder" : "folders"}.`,
      "Drop the model’s folder alone, or drop its files.");
    return;
  }
  let found;
  try {
    found = await walkFolder(dirs[0]);
  } catch (err) {
    if (seq !== pickSeq) return;
    hidePanels();
    showNotice("error", `Could not read the folder ${dirs[0].name}`, (err && err.message) || String(err),
      "Try “Choose a folder…” instead.");
    return;
  }
  if (seq === pickSeq && !job) takeFolder(found);   // not overtaken by a later pick
}

el.fileInput.addEventListener("change", () => {
  const files = Array.from(el.fileInput.files || []);
  el.fileInput.value = "";
  takeFiles(files);
});

el.folderInput.addEventListener("change", () => {
  const files = Array.from(el.folderInput.files || []);
  el.folderInput.value = "";
  if (files.length) takeFolder(folderFromPicker(files));
  else {
    hidePanels();
    showNotice("error", "That folder is empty", "The browser gave no file from it.",
      "Choose the model’s own folder: the one that holds config.json and the .safetensors files.");
  }
});

el.clearFiles.addEventListener("click", () => {
  setSelection([]);
  el.fileInput.focus();
});

// The dropzone is also clickable as a whole; the label inside is the keyboard path.
el.dropzone.addEventListener("click", (ev) => {
  if (job || ev.target.closest("label, input, button, a")) return;
  el.fileInput.click();
});

let dragDepth = 0;
function hasFiles(ev) {
  return ev.dataTransfer && Array.from(ev.dataTransfer.types || []).includes("Files");
}
window.addEventListener("dragenter", (ev) => {
  if (!hasFiles(ev)) return;
  ev.preventDefault();
  dragDepth++;
  body.classList.add("dragging");
});
window.addEventListener("dragleave", (ev) => {
  if (!hasFiles(ev)) return;
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) body.classList.remove("dragging");
});
window.addEventListener("dragover", (ev) => {
  if (!hasFiles(ev)) return;
  ev.preventDefault();
  ev.dataTransfer.dropEffect = job ? "none" : "copy";
});
window.addEventListener("drop", (ev) => {
  if (!hasFiles(ev)) return;
  ev.preventDefault();       // never let the browser navigate to the dropped file
  dragDepth = 0;
  body.classList.remove("dragging");
  if (job) return;
  // The items are readable only while the event is dispatched: take them now.
  const dt = ev.dataTransfer;
  const files = Array.from(dt.files || []);
  const entries = [];
  for (const item of Array.from(dt.items || [])) {
    if (item.kind !== "file") continue;
    const entry = typeof item.webkitGetAsEntry === "function" ? item.webkitGetAsEntry() : null;
    if (entry) entries.push(entry);
  }
  takeDrop(entries, files);
});

// ---------------------------------------------------------------- options

function currentFormat() {
  const f = el.form.querySelector('input[name="format"]:checked');
  return f ? f.value : "apr";
}

function currentType() {
  const t = el.form.querySelector('input[name="type"]:checked');
  return t ? t.value : "Q4_0";
}

function readOptions() {
  const options = {
    format: currentFormat(),
    type: currentType(),
    keep_embeddings_f16: $("opt-emb").checked,
    keep_output_f16: $("opt-out").checked,
    pure: $("opt-pure").checked,
    skip: el.skip.value.split(",").map((s) => s.trim()).filter(Boolean),
    allow_non_finite: $("opt-nonfinite").checked,
  };
  const chunk = el.chunk.value.trim();
  el.chunk.removeAttribute("aria-invalid");
  el.chunkHint.classList.remove("invalid");
  if (chunk) {
    const n = Number(chunk);
    if (!Number.isSafeInteger(n) || n < 128 || n > 256 * 1024 * 1024) {
      el.chunk.setAttribute("aria-invalid", "true");
      el.chunkHint.classList.add("invalid");
      throw new Error("The chunk size must be a whole number of bytes, from 128 to 268435456 (256 MiB).");
    }
    options.chunk_bytes = n;
  }
  return options;
}

// ---------------------------------------------------------------- workers
// Python workers converting at once: "auto" is one per core (navigator.hardwareConcurrency),
// fewer where navigator.deviceMemory (GiB, where the browser tells) would not hold half of
// it as 256 MiB heaps; at most MAX_AUTO_WORKERS.  The list offers up to the cores or 4.
const MAX_AUTO_WORKERS = 8;
const WORKER_HEAP_MIB = 256;

function coreCount() {
  return Math.max(1, Math.floor(navigator.hardwareConcurrency || 1));
}

function autoWorkers() {
  let n = Math.min(coreCount(), MAX_AUTO_WORKERS);
  const gib = navigator.deviceMemory;
  if (typeof gib === "number" && gib > 0) n = Math.min(n, Math.max(1, Math.floor((gib * 1024 / 2) / WORKER_HEAP_MIB)));
  return n;
}

function fillWorkerChoices() {
  const sel = $("opt-workers");
  const most = Math.max(4, Math.min(16, coreCount()));
  sel.options[0].textContent = `Auto (${autoWorkers()})`;
  for (let i = 1; i <= most; i++) sel.add(new Option(String(i), String(i)));
}

function workerCount() {
  const v = $("opt-workers").value;
  return v === "auto" ? autoWorkers() : Math.max(1, parseInt(v, 10) || 1);
}

function configureWorkers() {
  if (worker && ready) worker.postMessage({ type: MSG.CONFIGURE, workers: workerCount(), cores: coreCount() });
}

function saveOptions() {
  try {
    const o = {
      format: currentFormat(),
      type: currentType(),
      keep_embeddings_f16: $("opt-emb").checked,
      keep_output_f16: $("opt-out").checked,
      pure: $("opt-pure").checked,
      skip: el.skip.value,
      allow_non_finite: $("opt-nonfinite").checked,
      workers: $("opt-workers").value,
    };
    localStorage.setItem(OPTIONS_KEY, JSON.stringify(o));
  } catch (_) { /* storage unavailable */ }
}

function restoreOptions() {
  let o;
  try { o = JSON.parse(localStorage.getItem(OPTIONS_KEY) || "null"); } catch (_) { o = null; }
  if (!o || typeof o !== "object") return;
  const fmt = el.form.querySelector(`input[name="format"][value="${o.format === "gguf" ? "gguf" : "apr"}"]`);
  if (fmt) fmt.checked = true;
  const type = el.form.querySelector(`input[name="type"][value="${o.type === "Q4_K_M" ? "Q4_K_M" : "Q4_0"}"]`);
  if (type) type.checked = true;
  $("opt-emb").checked = !!o.keep_embeddings_f16;
  $("opt-out").checked = !!o.keep_output_f16;
  $("opt-pure").checked = !!o.pure;
  $("opt-nonfinite").checked = !!o.allow_non_finite;
  if (typeof o.skip === "string") el.skip.value = o.skip;
  const w = $("opt-workers");
  if (typeof o.workers === "string" && [...w.options].some((opt) => opt.value === o.workers)) w.value = o.workers;
}

el.form.addEventListener("change", (ev) => {
  saveOptions();
  updateControls();
  if (ev.target && ev.target.id === "opt-workers") configureWorkers();
});
el.form.addEventListener("input", saveOptions);
el.form.addEventListener("submit", (ev) => ev.preventDefault());

// ---------------------------------------------------------------- jobs

function hidePanels() {
  el.workPanel.hidden = true;
  el.errorPanel.hidden = true;
  el.resultPanel.hidden = true;
  el.inspectPanel.hidden = true;
}

function clearDownload() {
  if (objectUrl) URL.revokeObjectURL(objectUrl);
  objectUrl = null;
  el.downloadLink.removeAttribute("href");
  el.downloadLink.setAttribute("aria-disabled", "true");
}

function startJob(kind, files) {
  if (!ready || job || !files.length) return;
  let options = null;
  if (kind === "quantize") {
    try {
      options = readOptions();
    } catch (err) {
      showNotice("error", "Check the options", err.message, "Fix the highlighted field and try again.");
      el.chunk.focus();
      return;
    }
  }
  hidePanels();
  clearDownload();
  const id = nextId++;
  const jobFolder = files === selection ? folder : null;
  const name = displayName(files, jobFolder);
  job = {
    id, kind, name, files, folder: jobFolder,
    chunks: [], bytesOut: 0,
    total: files.reduce((a, f) => a + f.size, 0),
    started: performance.now(),
    cancelRequested: false, cancelTimer: null,
  };
  setState("working");
  el.workTitle.firstChild.textContent = kind === "quantize" ? "Quantizing " : "Reading ";
  el.workFile.textContent = name;
  el.cancelBtn.disabled = false;
  el.cancelBtn.textContent = "Cancel";
  el.workPanel.classList.toggle("indeterminate", kind !== "quantize");
  showProgress(0, job.total, "");
  if (kind !== "quantize") el.workBar.removeAttribute("value");
  el.workTime.textContent = "0.0 s";
  el.workPanel.hidden = false;
  el.workPanel.scrollIntoView({ behavior: "smooth", block: "nearest" });
  tick = setInterval(() => {
    if (job) el.workTime.textContent = `${((performance.now() - job.started) / 1000).toFixed(1)} s`;
  }, 100);
  updateControls();
  announce(kind === "quantize" ? `Quantizing ${name}` : `Reading ${name}`);

  const msg = { type: kind === "quantize" ? MSG.QUANTIZE : MSG.INSPECT, id, files };
  if (options) msg.options = options;
  if (jobFolder) msg.folder = jobFolder;
  if (kind === "quantize") Object.assign(msg, { workers: workerCount(), cores: coreCount() });
  worker.postMessage(msg);
}

function endJob() {
  if (job && job.cancelTimer) clearTimeout(job.cancelTimer);
  if (tick) clearInterval(tick);
  tick = null;
  job = null;
  el.workPanel.hidden = true;
  updateControls();
}

function showProgress(done, total, tensor) {
  if (!job) return;
  const frac = total > 0 ? Math.min(1, done / total) : 0;
  el.workBar.value = frac;
  el.workPct.textContent = `${Math.floor(frac * 100)} %`;
  el.workBytes.textContent = `${formatBytes(done)} of ${formatBytes(total)}`;
  el.workTensor.textContent = tensor || "–";
  el.workTensor.title = tensor || "";
}

function requestCancel() {
  if (!job || job.cancelRequested) return;
  job.cancelRequested = true;
  job.chunks = [];
  el.cancelBtn.disabled = true;
  el.cancelBtn.textContent = "Cancelling…";
  worker.postMessage({ type: MSG.CANCEL, id: job.id });
  const id = job.id;
  job.cancelTimer = setTimeout(() => {
    if (!job || job.id !== id) return;
    // The worker is stuck inside a long step: replace it.
    worker.terminate();
    worker = null;
    finishCancelled();
    startWorker(true);
  }, CANCEL_GRACE_MS);
}

el.cancelBtn.addEventListener("click", requestCancel);
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && job && !ev.defaultPrevented) requestCancel();
});

function showNotice(kind, title, message, hint) {
  el.errorPanel.classList.toggle("cancelled", kind === "cancelled");
  el.errorTitle.textContent = title;
  el.errorMessage.textContent = message;
  el.errorHint.textContent = hint || "";
  el.errorHint.hidden = !hint;
  el.errorPanel.hidden = false;
}

function failJob(message) {
  const j = job;
  endJob();
  if (!j) return;
  setState("error");
  const verb = j.kind === "quantize" ? "quantize" : "read";
  showNotice("error", `Could not ${verb} ${j.name}`, message,
    "Nothing was saved. Pick another file or change the options, then try again.");
  announce(`Error: could not ${verb} ${j.name}. ${message}`);
}

function finishCancelled() {
  const j = job;
  endJob();
  if (!j) return;
  setState("cancelled");
  showNotice("cancelled", "Cancelled",
    `${j.kind === "quantize" ? "Quantizing" : "Reading"} ${j.name} was stopped.`,
    "Nothing was saved. You can start again whenever you like.");
  announce("Cancelled. Nothing was saved.");
  el.quantizeBtn.focus();
}

/** Drop output bytes past `size` (the core is writing a tensor again). */
function truncateChunks(j, size) {
  while (j.chunks.length && j.bytesOut > size) {
    const last = j.chunks.pop();
    j.bytesOut -= last.byteLength;
    if (j.bytesOut < size) {
      const keep = last.slice(0, size - j.bytesOut);
      j.chunks.push(keep);
      j.bytesOut += keep.byteLength;
    }
  }
}

function finishDone(report, head, workers) {
  const j = job;
  j.workers = workers || { total: 1, pooled: 0 };
  el.resultPanel.dataset.workers = String(j.workers.total);
  el.resultPanel.dataset.pooledChunks = String(j.workers.pooled);
  const blob = new Blob([head, ...j.chunks], { type: "application/octet-stream" });
  endJob();
  objectUrl = URL.createObjectURL(blob);
  const outName = (report && report.output && report.output.name) || "model.apr";
  el.downloadLink.href = objectUrl;
  el.downloadLink.download = outName;
  el.downloadLink.removeAttribute("aria-disabled");
  el.downloadName.textContent = outName;
  renderReport(report, j, blob.size);
  setState("done");
  el.resultPanel.hidden = false;
  announce(`Done. ${outName} is ready to download, ${formatBytes(blob.size)}.`);
  el.resultTitle.focus({ preventScroll: true });
  el.resultPanel.scrollIntoView({ behavior: "smooth", block: "start" });
}

function finishInspected(info) {
  const j = job;
  endJob();
  renderInspect(info || {}, j);
  setState("inspected");
  el.inspectPanel.hidden = false;
  announce(`Read ${j.name}: ${(info && info.tensors ? info.tensors.length : 0)} tensors.`);
  $("inspect-title").focus({ preventScroll: true });
  el.inspectPanel.scrollIntoView({ behavior: "smooth", block: "start" });
}

el.quantizeBtn.addEventListener("click", () => startJob("quantize", selection));
el.inspectBtn.addEventListener("click", () => startJob("inspect", selection));

el.sampleBtn.addEventListener("click", async () => {
  if (!ready || job) return;
  el.sampleBtn.disabled = true;
  const label = el.sampleBtn.textContent;
  el.sampleBtn.textContent = "Loading sample…";
  hidePanels();
  clearDownload();
  setState("loading");
  try {
    const res = await fetch(SAMPLE_URL);
    if (!res.ok) throw new Error(`the server answered HTTP ${res.status}`);
    const blob = await res.blob();
    const file = new File([blob], SAMPLE_NAME, { type: "application/octet-stream" });
    setSelection([file]);
    startJob("quantize", [file]);
  } catch (err) {
    hidePanels();
    setState("error");
    showNotice("error", "Could not load the sample model", err.message || String(err),
      "The sample comes with the site; reload the page and try again.");
  } finally {
    el.sampleBtn.textContent = label;
    updateControls();
  }
});

// ---------------------------------------------------------------- report

const DTYPE_ORDER = ["F32", "F64", "BF16", "F16", "Q8_0", "APR_Q4", "Q4_0"];

function colorIndex(dtype, all) {
  const known = DTYPE_ORDER.indexOf(dtype);
  if (known >= 0) return known;
  return DTYPE_ORDER.length + (all.indexOf(dtype) % 3);
}

function groupBytes(tensors, dtypeKey, bytesKey) {
  const m = new Map();
  for (const t of tensors) {
    const k = String(t[dtypeKey] ?? "?");
    m.set(k, (m.get(k) || 0) + Number(t[bytesKey] || 0));
  }
  return m;
}

function renderChart(tensors, totals) {
  el.chartRows.replaceChildren();
  el.chartLegend.replaceChildren();
  const before = groupBytes(tensors, "dtype_in", "bytes_in");
  const after = groupBytes(tensors, "dtype_out", "bytes_out");
  const totalIn = Number(totals.bytes_in) || [...before.values()].reduce((a, b) => a + b, 0);
  const totalOut = Number(totals.bytes_out) || [...after.values()].reduce((a, b) => a + b, 0);
  const scale = Math.max(totalIn, totalOut, 1);
  const all = [...new Set([...before.keys(), ...after.keys()])];
  all.sort((a, b) => colorIndex(a, all) - colorIndex(b, all));

  const row = (label, groups, total) => {
    const bar = make("div", { className: "stack" });
    bar.setAttribute("role", "img");
    const desc = [...groups.entries()].map(([k, v]) => `${k} ${formatBytes(v)}`).join(", ");
    bar.setAttribute("aria-label", `${label}: ${formatBytes(total)} (${desc})`);
    const fill = make("div", { className: "stack-fill" });
    fill.style.width = `${(100 * total) / scale}%`;
    for (const k of all) {
      const v = groups.get(k);
      if (!v) continue;
      const seg = make("span", { className: `seg c${colorIndex(k, all)}`, title: `${k}: ${formatBytes(v)}` });
      seg.style.flexGrow = String(v);
      fill.append(seg);
    }
    bar.append(fill);
    return make("div", { className: "chart-row" }, [
      make("span", { className: "chart-label", text: label }),
      bar,
      make("span", { className: "chart-value", text: formatBytes(total) }),
    ]);
  };
  el.chartRows.append(row("Before", before, totalIn), row("After", after, totalOut));

  for (const k of all) {
    const li = make("li", {}, [
      make("span", { className: `swatch c${colorIndex(k, all)}` }),
      make("span", { className: "mono", text: k }),
    ]);
    const b = before.get(k), a = after.get(k);
    li.append(make("span", { className: "muted", text: `${b ? formatBytes(b) : "–"} → ${a ? formatBytes(a) : "–"}` }));
    el.chartLegend.append(li);
  }
}

function totalItem(label, value, detail, title) {
  const dd = make("dd", {}, [make("span", { className: "big", text: value })]);
  if (detail) dd.append(make("span", { className: "detail", text: detail }));
  if (title) dd.title = title;
  return make("div", {}, [make("dt", { text: label }), dd]);
}

const ACTION_TEXT = { quantize: "quantized", keep: "kept", convert: "converted", passthrough: "copied" };

/** Which runtime can load the file, and why (not). */
function renderRuntimes(runtimes) {
  el.runtimes.replaceChildren();
  for (const r of runtimes) {
    const li = make("li", { className: r.loads ? "ok" : "no" }, [
      make("span", { className: "rt-mark", text: r.loads ? "✓" : "✕" }),
      make("span", { className: "rt-text" }, [
        make("strong", { className: "rt-name", text: r.runtime }),
        make("span", { className: "rt-verdict", text: ` ${r.verdict || (r.loads ? "can load it" : "cannot run it")}` }),
        make("span", { className: "rt-why", text: String(r.why || "") }),
      ]),
    ]);
    li.dataset.runtime = String(r.runtime);
    el.runtimes.append(li);
  }
  el.runtimes.hidden = runtimes.length === 0;
}

let reportRows = [];
let reportSort = { key: null, dir: 1 };

function renderReport(report, j, fileSize) {
  report = report || {};
  const totals = report.totals || {};
  const tensors = Array.isArray(report.tensors) ? report.tensors : [];
  const input = report.input || {};
  const output = report.output || {};
  const bytesIn = Number(totals.bytes_in ?? input.bytes ?? 0);
  const bytesOut = Number(totals.bytes_out ?? output.bytes ?? fileSize);
  const ratio = Number(totals.ratio) || (bytesOut ? bytesIn / bytesOut : 0);

  const model = report.model && typeof report.model === "object" ? report.model : null;
  el.resultTitle.textContent = `Quantized ${j.name}`;
  el.resultSub.textContent = [
    model ? `${model.architecture}, ${num(model.layers)} layers, vocabulary ${num(model.vocab_size)}` : null,
    `${String(input.format || "").toUpperCase() || "Input"} → ${String(output.format || "").toUpperCase()}`,
    `${formatBytes(fileSize)} file`,
  ].filter(Boolean).join(" · ");
  renderRuntimes(Array.isArray(report.runtimes) ? report.runtimes : []);

  el.totals.replaceChildren(
    totalItem("Parameters", compact.format(Number(totals.params || 0)), null, `${nf.format(Number(totals.params || 0))} parameters`),
    totalItem("Size", formatBytes(bytesOut), `from ${formatBytes(bytesIn)}`, `${nf.format(bytesIn)} → ${nf.format(bytesOut)} bytes`),
    totalItem("Compression", `${ratio.toFixed(2)}×`, `${bytesIn ? Math.round(100 * (1 - bytesOut / bytesIn)) : 0} % smaller`),
    totalItem("Bits / weight", totals.bits_per_weight ? Number(totals.bits_per_weight).toFixed(2) : "–",
      "of the tensor data", "Output tensor bytes × 8 over the number of weights written"),
    totalItem("Tensors", `${nf.format(Number(totals.quantized ?? 0))} / ${nf.format(Number(totals.tensors ?? tensors.length))}`, "quantized"),
    totalItem("Model SNR", formatDb(totals.snr_db), "higher is better",
      "Signal-to-noise ratio over every quantized tensor: the weights' energy over the error's, in dB"),
    totalItem("Time", formatSeconds(totals.seconds),
      j.workers ? `${j.workers.total} worker${j.workers.total === 1 ? "" : "s"}` : null,
      "Python workers converting at once (Advanced › Workers)"),
  );
  const nonFinite = tensors.filter((t) => Number(t.non_finite) > 0).length;
  if (nonFinite) {
    el.totals.append(totalItem("Non-finite", nf.format(Number(totals.non_finite)),
      `in ${nonFinite} tensor${nonFinite === 1 ? "" : "s"}`, "NaN/Inf values written as they are (allowed)"));
  }
  renderChart(tensors, totals);

  reportRows = tensors;
  reportSort = { key: null, dir: 1 };
  el.reportFilter.value = "";
  for (const th of el.reportTable.tHead.rows[0].cells) th.setAttribute("aria-sort", "none");
  drawReportRows();
}

function sortValue(t, key) {
  switch (key) {
    case "name": return String(t.name);
    case "shape": return numel(t.shape);
    case "dtype": return `${t.dtype_in}→${t.dtype_out}`;
    case "bytes_in": return Number(t.bytes_out || 0);
    case "mse": return t.mse === null || t.mse === undefined ? -Infinity : Number(t.mse);
    case "snr_db": return t.snr_db === "inf" ? Infinity : t.snr_db === null || t.snr_db === undefined ? -Infinity : Number(t.snr_db);
    default: return 0;
  }
}

function drawReportRows() {
  const q = el.reportFilter.value.trim().toLowerCase();
  let rows = reportRows.filter((t) => !q || String(t.name).toLowerCase().includes(q));
  if (reportSort.key) {
    const { key, dir } = reportSort;
    rows = rows.slice().sort((a, b) => {
      const va = sortValue(a, key), vb = sortValue(b, key);
      return (va < vb ? -1 : va > vb ? 1 : 0) * dir;
    });
  }
  const frag = document.createDocumentFragment();
  for (const t of rows) {
    const tr = document.createElement("tr");
    const action = String(t.action || "");
    if (action) tr.className = `act-${action.replace(/[^a-z_-]/gi, "")}`;

    const nameCell = make("td", { className: "name mono", title: t.source ? `${t.name} (input: ${t.source})` : t.name },
      [make("span", { className: "tname", text: t.name })]);
    if (t.source) nameCell.append(make("span", { className: "source", text: `from ${t.source}`, title: `input tensor ${t.source}` }));
    tr.append(nameCell);
    tr.append(make("td", { className: "shape", text: formatShape(t.shape) }));

    const dt = make("td", { className: "dtype" });
    const same = t.dtype_in === t.dtype_out;
    dt.append(make("span", { className: "mono", text: same ? t.dtype_in : `${t.dtype_in} → ${t.dtype_out}` }));
    if (action) {
      const tag = make("span", { className: `tag tag-${action.replace(/[^a-z_-]/gi, "")}`, text: ACTION_TEXT[action] || action });
      dt.append(tag);
    }
    if (t.reason) dt.append(make("span", { className: "reason", text: String(t.reason) }));
    if (t.warning) dt.append(make("span", { className: "warning", text: `⚠ ${t.warning}` }));
    if (t.non_finite) dt.append(make("span", { className: "warning non-finite", text: `⚠ ${nf.format(Number(t.non_finite))} non-finite value${Number(t.non_finite) === 1 ? "" : "s"} (NaN/Inf) written as they are` }));
    tr.append(dt);

    tr.append(make("td", {
      className: "num",
      text: t.bytes_in === t.bytes_out ? formatBytes(t.bytes_in) : `${formatBytes(t.bytes_in)} → ${formatBytes(t.bytes_out)}`,
      title: `${nf.format(Number(t.bytes_in))} → ${nf.format(Number(t.bytes_out))} bytes`,
    }));
    tr.append(make("td", {
      className: "num mono",
      text: formatMse(t.mse),
      title: t.max_abs_err !== null && t.max_abs_err !== undefined ? `max abs error ${formatMse(t.max_abs_err)}` : "",
    }));
    tr.append(make("td", { className: "num snr", text: formatDb(t.snr_db) }));
    frag.append(tr);
  }
  el.reportBody.replaceChildren(frag);
  el.reportCount.textContent = matchCount(q, rows.length, reportRows.length);
}

/** The line under a filtered tensor table. */
function matchCount(query, shown, all) {
  return query ? `${shown} of ${all} tensors match.` : `${all} tensors.`;
}

el.reportFilter.addEventListener("input", drawReportRows);
el.reportTable.tHead.addEventListener("click", (ev) => {
  const btn = ev.target.closest("button");
  if (!btn) return;
  const th = btn.closest("th");
  const key = th.dataset.key;
  if (reportSort.key === key) reportSort.dir = -reportSort.dir;
  else reportSort = { key, dir: key === "name" || key === "dtype" ? 1 : -1 };
  for (const cell of el.reportTable.tHead.rows[0].cells) cell.setAttribute("aria-sort", "none");
  th.setAttribute("aria-sort", reportSort.dir > 0 ? "ascending" : "descending");
  drawReportRows();
});

// ---------------------------------------------------------------- inspect

const MAX_TEXT = 300;
const MAX_ITEMS = 12;

function valueText(v) {
  let s;
  if (Array.isArray(v)) {
    const head = v.slice(0, MAX_ITEMS).map((x) => (typeof x === "string" ? JSON.stringify(x) : valueText(x)));
    s = `[${head.join(", ")}${v.length > MAX_ITEMS ? `, … ${nf.format(v.length - MAX_ITEMS)} more` : ""}]`;
  } else if (v && typeof v === "object") {
    try { s = JSON.stringify(v); } catch (_) { s = String(v); }
  } else if (v === undefined || v === null) {
    s = "null";
  } else {
    s = String(v);
  }
  if (s.length > MAX_TEXT) s = `${s.slice(0, MAX_TEXT)}… (${nf.format(s.length)} characters)`;
  return s;
}

const INSPECT_SUMMARY_KEYS = new Set(["format", "metadata", "tensors", "files", "bytes", "name", "params"]);
let inspectRows = [];

function renderInspect(info, j) {
  const tensors = Array.isArray(info.tensors) ? info.tensors : [];
  const meta = info.metadata && typeof info.metadata === "object" ? info.metadata : {};
  const bytes = tensors.reduce((a, t) => a + Number(t.nbytes || 0), 0);
  const params = tensors.reduce((a, t) => a + numel(t.shape), 0);
  el.inspectFile.textContent = j.name;
  const nfiles = Array.isArray(info.files) ? info.files.length : j.files.length;
  const fileBytes = Number(info.bytes ?? j.files.reduce((a, f) => a + f.size, 0));
  el.inspectSub.textContent = [
    String(info.format || "?").toUpperCase(),
    `${nfiles} ${nfiles === 1 ? "file" : "files"}, ${formatBytes(fileBytes)}`,
    `${nf.format(tensors.length)} tensors (${formatBytes(bytes)})`,
    `${compact.format(Number(info.params ?? params))} parameters`,
  ].join(" · ");

  const frag = document.createDocumentFragment();
  const addRow = (k, v, cls) => {
    const tr = document.createElement("tr");
    if (cls) tr.className = cls;
    tr.append(make("th", { className: "mono", text: k }), make("td", { className: "mono", text: valueText(v) }));
    tr.firstChild.scope = "row";
    frag.append(tr);
  };
  for (const [k, v] of Object.entries(info)) {
    if (INSPECT_SUMMARY_KEYS.has(k)) continue;
    addRow(k, v, "extra");
  }
  const keys = Object.keys(meta);
  for (const k of keys) addRow(k, meta[k]);
  if (!frag.childNodes.length) {
    const tr = document.createElement("tr");
    const td = make("td", { className: "muted", text: "No metadata in this file." });
    td.colSpan = 2;
    tr.append(td);
    frag.append(tr);
  }
  el.metaBody.replaceChildren(frag);

  inspectRows = tensors;
  el.inspectFilter.value = "";
  drawInspectRows();
}

function drawInspectRows() {
  const q = el.inspectFilter.value.trim().toLowerCase();
  const rows = inspectRows.filter((t) => !q || String(t.name).toLowerCase().includes(q));
  const frag = document.createDocumentFragment();
  for (const t of rows) {
    const tr = document.createElement("tr");
    tr.append(
      make("td", { className: "name mono", text: t.name, title: t.name }),
      make("td", { className: "shape", text: formatShape(t.shape) }),
      make("td", { className: "dtype mono", text: t.dtype }),
      make("td", { className: "num", text: formatBytes(t.nbytes), title: `${nf.format(Number(t.nbytes))} bytes` }),
    );
    frag.append(tr);
  }
  el.inspectBody.replaceChildren(frag);
  el.inspectCount.textContent = matchCount(q, rows.length, inspectRows.length);
}
el.inspectFilter.addEventListener("input", drawInspectRows);

// ---------------------------------------------------------------- offline

let swRegistered = false;
function registerServiceWorker() {
  if (swRegistered || !("serviceWorker" in navigator)) return;
  if (!/^https?:$/.test(location.protocol)) return;
  swRegistered = true;
  navigator.serviceWorker.register("sw.js").then(
    () => navigator.serviceWorker.ready.then(() => { body.dataset.offline = "ready"; }),
    (err) => console.warn("offline support is not available:", err),
  );
}

// ---------------------------------------------------------------- start

fillWorkerChoices();
restoreOptions();
setSelection([]);
setState("idle");
clearDownload();
startWorker(false);
// Register the service worker after the first boot has had its downloads
// (it precaches the same files), but do not wait forever for it.
setTimeout(registerServiceWorker, 20000);

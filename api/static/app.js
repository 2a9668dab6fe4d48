"use strict";
// artgen's page: submits painting jobs, follows them live over Server-Sent Events (polling when the
// stream fails), and lists the visitor's recent jobs. Plain JS, no build step: the service may be offline.

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const KEY_STORAGE = "artgen.apiKey";
const POLL_MS = 500; // frame and state polling when the event stream is unavailable
const QUEUE_POLL_MS = 1000; // queue position: the event stream says nothing until a job starts
const CHECK_MS = 5000; // while streaming, re-read the job now and then so a lost stream never stalls the page
const GALLERY_LIMIT = 12;
const GALLERY_REFRESH_MS = 3000;
const QUEUE_STALL_MS = 8000; // queued this long: ask /readyz whether any worker is alive, and say so

const ui = {};
const page = {
  config: null,
  job: null, // the job view shown on the canvas
  watch: null, // the Watch following it
  pictureUrl: null, // object URL shown in #picture
  resultUrl: null, // object URL behind the PNG download
  timelapseBlob: null,
  showingTimelapse: false,
  stall: "", // why a queued job is not starting (no live worker), in words
  initFile: null,
  initPreviewUrl: null,
  galleryTimer: null,
  thumbs: new Map(), // job id -> {key, url}
};

// ---------------------------------------------------------------------------------------------
// Talking to the API

class ApiError extends Error {
  /** An answer the page can show in words: a headline and, for 422s, one line per field. */
  constructor(status, headline, items = []) {
    super([headline, ...items.map((item) => item.text)].join(" "));
    this.status = status;
    this.headline = headline;
    this.items = items;
  }
}

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders(extra = {}) {
  const headers = new Headers(extra);
  const key = apiKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  return headers;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `Could not reach the service (${error.message}). Check that it is running and try again.`);
  }
  if (response.ok || response.status === 304) return response;
  throw await apiError(response);
}

/** FastAPI answers `{"detail": string}` or, for validation, `{"detail": [{loc, msg, type}]}`. */
function detailItems(detail) {
  if (detail === null || detail === undefined || detail === "") return [];
  if (typeof detail === "string") return [{ field: "", text: detail }];
  if (!Array.isArray(detail)) return [{ field: "", text: JSON.stringify(detail) }];
  return detail.map((entry) => {
    if (typeof entry !== "object" || entry === null) return { field: "", text: String(entry) };
    const loc = Array.isArray(entry.loc) ? entry.loc.filter((part) => part !== "body" && part !== "query") : [];
    const field = loc.length ? String(loc[0]) : "";
    const where = loc.join(".");
    const message = String(entry.msg ?? JSON.stringify(entry)).replace(/^Value error, /, "");
    const text = where && !message.toLowerCase().startsWith(where.toLowerCase()) ? `${where}: ${message}` : message;
    return { field, text };
  });
}

const HEADLINES = {
  400: "The service could not read that request.",
  401: "This service needs an API key: enter yours under “More settings”.",
  403: "That API key may not do this.",
  404: "Not found: it may have expired.",
  409: "That cannot be done now.",
  413: "That is too large to upload.",
  415: "The service did not accept that kind of upload.",
  422: "Please check these settings:",
  429: "The service is busy.",
};

async function apiError(response) {
  const text = await response.text().catch((error) => `(the answer could not be read: ${error.message})`);
  let detail;
  try {
    detail = JSON.parse(text).detail;
  } catch {
    detail = text.trim().slice(0, 300); // not JSON (a proxy's page, say): show its start as it is
  }
  const items = detailItems(detail);
  let headline = HEADLINES[response.status] || `The service answered HTTP ${response.status}.`;
  if (response.status >= 500) headline = `The service had a problem (HTTP ${response.status}).`;
  const retry = response.headers.get("Retry-After");
  if (retry) items.push({ field: "", text: `Try again in ${retry} s.` });
  // A single plain sentence reads better as the headline itself.
  if (items.length === 1 && !items[0].field && response.status !== 401 && response.status !== 422) {
    return new ApiError(response.status, items[0].text, []);
  }
  return new ApiError(response.status, headline, items);
}

function showError(box, error, context = "") {
  box.replaceChildren();
  const headline = document.createElement("p");
  if (error instanceof ApiError) {
    headline.textContent = context ? `${context} ${error.headline}` : error.headline;
    box.append(headline);
    if (error.items.length) {
      const list = document.createElement("ul");
      for (const item of error.items) {
        const li = document.createElement("li");
        li.textContent = item.text;
        list.append(li);
      }
      box.append(list);
    }
  } else {
    console.error(error);
    headline.textContent = `${context} Something went wrong in the page: ${error && error.message ? error.message : error}`.trim();
    box.append(headline);
  }
  box.hidden = false;
}

function hideError(box) {
  box.hidden = true;
  box.replaceChildren();
}

// ---------------------------------------------------------------------------------------------
// Formatting

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  if (seconds < 1) return "under a second";
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  const rest = Math.round(seconds - minutes * 60);
  return rest ? `${minutes} min ${rest} s` : `${minutes} min`;
}

function formatAgo(epochSeconds) {
  const seconds = Math.max(0, Date.now() / 1000 - epochSeconds);
  if (seconds < 45) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(epochSeconds * 1000).toLocaleDateString();
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} kB`;
  return `${Number((bytes / 1024 / 1024).toFixed(1))} MB`;
}

function ordinal(n) {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : { 1: "st", 2: "nd", 3: "rd" }[n % 10] || "th";
  return `${n}${suffix}`;
}

function shortPrompt(prompt, length = 60) {
  return prompt.length > length ? `${prompt.slice(0, length - 1)}…` : prompt;
}

// ---------------------------------------------------------------------------------------------
// The service's limits

async function loadConfig() {
  try {
    const response = await api("/v1/config");
    page.config = await response.json();
    hideError(ui.serviceError);
    applyConfig(page.config);
  } catch (error) {
    showError(ui.serviceError, error, "Could not load the service's settings; the limits shown may be wrong.");
  }
}

function setLimit(input, max, value) {
  input.max = String(max);
  if (value !== undefined && value !== null) input.value = String(Math.min(value, max));
}

function applyConfig(config) {
  ui.model.replaceChildren();
  for (const name of config.models) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    ui.model.append(option);
  }
  if (config.default_model) ui.model.value = config.default_model;
  ui.model.disabled = config.models.length === 0;
  applyModelDefaults();
  ui.prompt.maxLength = config.max_prompt_chars;
  const limits = {
    max_size: String(config.max_size),
    max_iterations: String(config.max_iterations),
    max_upload_mb: formatBytes(config.max_upload_bytes),
  };
  for (const span of document.querySelectorAll("[data-limit]")) {
    if (limits[span.dataset.limit]) span.textContent = limits[span.dataset.limit];
  }
  if (config.api_keys && !apiKey()) {
    ui.more.open = true;
    ui.apiKeyHint.textContent = "This service needs an API key. It is kept in this browser only.";
  }
  updateModelNote();
}

function applyModelDefaults() {
  const config = page.config;
  const defaults = (config.model_defaults || {})[ui.model.value] || {};
  setLimit(ui.width, config.max_size, defaults.size);
  setLimit(ui.height, config.max_size, defaults.size);
  setLimit(ui.iterations, config.max_iterations, defaults.iterations);
  setLimit(ui.cutn, config.max_cutn, defaults.cutn);
}

function updateModelNote() {
  const note = page.config && page.config.notes ? page.config.notes[ui.model.value] : null;
  ui.modelNote.textContent = note || "";
  ui.modelNote.hidden = !note;
}

// ---------------------------------------------------------------------------------------------
// The form

function numberField(input, parse = Number) {
  const raw = input.value.trim();
  return raw === "" ? undefined : parse(raw);
}

function formFields() {
  const fields = {
    prompt: ui.prompt.value.trim(),
    model: ui.model.value || undefined,
    width: numberField(ui.width),
    height: numberField(ui.height),
    iterations: numberField(ui.iterations),
    seed: numberField(ui.seed),
    cutn: numberField(ui.cutn),
    cut_pow: numberField(ui.cutPow),
    step_size: numberField(ui.stepSize),
    init_weight: numberField(ui.initWeight),
  };
  for (const name of Object.keys(fields)) if (fields[name] === undefined) delete fields[name];
  return fields;
}

const FIELD_INPUTS = () => ({
  prompt: ui.prompt, model: ui.model, width: ui.width, height: ui.height, iterations: ui.iterations,
  seed: ui.seed, cutn: ui.cutn, cut_pow: ui.cutPow, step_size: ui.stepSize, init_weight: ui.initWeight,
  init_image: ui.initInput,
});

function clearFormErrors() {
  hideError(ui.formError);
  for (const input of Object.values(FIELD_INPUTS())) input.removeAttribute("aria-invalid");
}

function showFormError(error) {
  showError(ui.formError, error, "Could not start the painting.");
  if (!(error instanceof ApiError)) return;
  const inputs = FIELD_INPUTS();
  for (const item of error.items) {
    const input = inputs[item.field];
    if (!input) continue;
    input.setAttribute("aria-invalid", "true");
    if (["cutn", "cut_pow", "step_size", "init_weight"].includes(item.field)) ui.more.open = true;
  }
}

async function submitJob(event) {
  event.preventDefault();
  clearFormErrors();
  const fields = formFields();
  let body;
  const headers = {};
  if (page.initFile) {
    // A start picture goes as a file in a multipart form, with the same fields beside it.
    body = new FormData();
    for (const [name, value] of Object.entries(fields)) body.append(name, String(value));
    body.append("init_image", page.initFile, page.initFile.name);
  } else {
    body = JSON.stringify(fields);
    headers["Content-Type"] = "application/json";
  }
  ui.submit.disabled = true;
  ui.submit.textContent = "Sending…";
  try {
    const response = await api("/v1/jobs", { method: "POST", body, headers });
    const job = await response.json();
    openJob(job);
    refreshGallery();
    if (window.matchMedia("(max-width: 860px)").matches) ui.stage.scrollIntoView({ behavior: "smooth" });
  } catch (error) {
    showFormError(error);
  } finally {
    ui.submit.disabled = false;
    ui.submit.textContent = "Paint";
  }
}

// ---------------------------------------------------------------------------------------------
// The start picture

function setInitFile(file) {
  hideError(ui.formError);
  ui.initInput.removeAttribute("aria-invalid");
  if (!file) return;
  if (!["image/png", "image/jpeg", "image/webp"].includes(file.type)) {
    ui.initInput.value = "";
    ui.initInput.setAttribute("aria-invalid", "true");
    showError(ui.formError, new ApiError(0, `“${file.name}” is not a PNG, JPEG or WebP picture.`));
    return;
  }
  const limit = page.config ? page.config.max_upload_bytes : Infinity;
  if (file.size > limit) {
    ui.initInput.value = "";
    ui.initInput.setAttribute("aria-invalid", "true");
    showError(ui.formError, new ApiError(0, `“${file.name}” is ${formatBytes(file.size)}; the limit is ${formatBytes(limit)}.`));
    return;
  }
  page.initFile = file;
  if (page.initPreviewUrl) URL.revokeObjectURL(page.initPreviewUrl);
  page.initPreviewUrl = URL.createObjectURL(file);
  ui.initPreview.src = page.initPreviewUrl;
  ui.initPreview.alt = `Start picture: ${file.name}`;
  ui.initName.textContent = `${file.name} · ${formatBytes(file.size)}`;
  ui.dropEmpty.hidden = true;
  ui.dropPreview.hidden = false;
}

function clearInitFile() {
  page.initFile = null;
  ui.initInput.value = "";
  if (page.initPreviewUrl) URL.revokeObjectURL(page.initPreviewUrl);
  page.initPreviewUrl = null;
  ui.initPreview.removeAttribute("src");
  ui.dropPreview.hidden = true;
  ui.dropEmpty.hidden = false;
  ui.initInput.focus();
}

function wireDropzone() {
  const zone = ui.dropzone;
  const over = (event) => {
    if (!event.dataTransfer || !Array.from(event.dataTransfer.types).includes("Files")) return;
    event.preventDefault();
    zone.classList.add("dragging");
  };
  zone.addEventListener("dragenter", over);
  zone.addEventListener("dragover", over);
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) setInitFile(file);
  });
  // A picture dropped beside the zone would otherwise replace the page with the picture.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

// ---------------------------------------------------------------------------------------------
// Following one job

class Watch {
  /** Follows a job: the event stream when it works, polling when it does not; stops at the end. */
  constructor(job) {
    this.id = job.id;
    this.closed = false;
    this.finished = false;
    this.stream = null;
    this.polling = false;
    this.timer = null;
    this.frameEtag = null;
    this.frameBusy = false;
    this.framePending = false;
    this.lastEventAt = Date.now();
    this.queuedSince = null;
    this.readyCheckedAt = 0;
  }

  start() {
    this.openStream();
    this.schedule();
  }

  close() {
    this.closed = true;
    if (this.stream) this.stream.close();
    clearTimeout(this.timer);
  }

  /** The slow loop: queue position while queued, a safety re-read while streaming, everything while polling. */
  schedule() {
    clearTimeout(this.timer);
    if (this.closed || this.finished) return;
    const job = page.job;
    const delay = this.polling ? POLL_MS : job && job.status === "queued" ? QUEUE_POLL_MS : CHECK_MS;
    this.timer = setTimeout(() => this.tick(), delay);
  }

  async tick() {
    if (this.closed || this.finished) return;
    try {
      const response = await api(`/v1/jobs/${this.id}`);
      const view = await response.json();
      if (this.closed) return;
      this.clearTrouble();
      applyView(view);
      if (TERMINAL.has(view.status)) return this.onFinished();
      if (view.status === "queued") await this.checkStall();
      if (this.polling && view.status !== "queued") await this.loadFrame();
    } catch (error) {
      if (this.closed) return;
      if (error instanceof ApiError && (error.status === 404 || error.status === 401)) {
        this.close();
        showError(ui.jobError, error, "Stopped following this painting.");
        return;
      }
      this.trouble(error, "Lost contact with the service; still trying.");
    }
    this.schedule();
  }

  /** A job queued for long may have no worker to run it: /readyz says whether any is alive. */
  async checkStall() {
    const now = Date.now();
    this.queuedSince = this.queuedSince || now;
    if (now - this.queuedSince < QUEUE_STALL_MS || now - this.readyCheckedAt < QUEUE_STALL_MS) return;
    this.readyCheckedAt = now;
    let stall = "";
    try {
      await api("/readyz");
    } catch (error) {
      stall = error instanceof ApiError ? error.headline : String(error);
    }
    if (this.closed) return;
    page.stall = stall;
    render();
  }

  trouble(error, context) {
    this.troubled = true;
    showError(ui.jobError, error, context);
  }

  clearTrouble() {
    if (this.troubled) hideError(ui.jobError);
    this.troubled = false;
  }

  startPolling(reason) {
    if (this.polling || this.closed || this.finished) return;
    console.info(`artgen: polling job ${this.id} because ${reason}`);
    if (this.stream) this.stream.close();
    this.stream = null;
    this.polling = true;
    ui.canvas.dataset.transport = "polling";
    clearTimeout(this.timer);
    this.tick();
  }

  openStream() {
    const url = `/v1/jobs/${this.id}/events`;
    ui.canvas.dataset.transport = "events";
    // EventSource cannot send an Authorization header: with a key, read the stream through fetch.
    if (apiKey()) return this.openFetchStream(url);
    if (!("EventSource" in window)) return this.startPolling("this browser has no EventSource");
    const source = new EventSource(url);
    this.stream = { close: () => source.close() };
    let failures = 0;
    let opened = false;
    source.addEventListener("open", () => {
      opened = true;
    });
    for (const name of ["snapshot", "progress", "frame", "finished"]) {
      source.addEventListener(name, (event) => {
        failures = 0;
        this.dispatch(name, event.data);
      });
    }
    source.addEventListener("error", (event) => {
      if (this.closed || this.finished) return;
      // The server's own `error` event carries data (Redis went away); a connection error does not.
      if (event.data) this.trouble(new ApiError(503, detailItems(JSON.parse(event.data).detail)[0].text), "The live view paused:");
      failures += 1;
      // Never opened (blocked, refused): poll now. A stream that worked gets a few reconnects first.
      if (!opened || source.readyState === EventSource.CLOSED || failures >= 3) this.startPolling("the event stream failed");
    });
  }

  async openFetchStream(url) {
    const controller = new AbortController();
    this.stream = { close: () => controller.abort() };
    try {
      const response = await api(url, { signal: controller.signal, headers: { Accept: "text/event-stream" } });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let name = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) name = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length) this.dispatch(name, data.join("\n"));
        }
      }
      if (!this.finished) this.startPolling("the event stream ended early");
    } catch (error) {
      if (this.closed || this.finished) return;
      if (error instanceof ApiError && (error.status === 401 || error.status === 404)) {
        showError(ui.jobError, error, "Cannot follow this painting.");
        this.close();
        return;
      }
      this.startPolling(`the event stream failed (${error.message})`);
    }
  }

  dispatch(name, raw) {
    if (this.closed || this.finished) return;
    this.lastEventAt = Date.now();
    let data;
    try {
      data = JSON.parse(raw);
    } catch (error) {
      this.trouble(new ApiError(0, `The service sent an unreadable ${name} event (${error.message}).`), "");
      return;
    }
    if (name === "snapshot") {
      applyView(data);
      if (data.status !== "queued") this.loadFrame();
    } else if (name === "progress") {
      applyProgress(data);
    } else if (name === "frame") {
      this.loadFrame();
    } else if (name === "finished") {
      this.onFinished();
    } else if (name === "error") {
      this.trouble(new ApiError(503, detailItems(data.detail)[0].text), "The live view paused:");
    }
  }

  /** The latest frame, one request at a time; a frame event during a request asks for one more. */
  async loadFrame() {
    if (this.frameBusy) {
      this.framePending = true;
      return;
    }
    this.frameBusy = true;
    try {
      do {
        this.framePending = false;
        const headers = this.frameEtag ? { "If-None-Match": this.frameEtag } : {};
        const response = await fetch(`/v1/jobs/${this.id}/frame`, { headers: authHeaders(headers), cache: "no-store" });
        if (this.closed || page.showingResult) return;
        if (response.status === 200) {
          this.frameEtag = response.headers.get("ETag");
          const blob = await response.blob();
          if (this.closed || page.showingResult) return;
          showPicture(blob, "frame");
        } else if (response.status !== 304 && response.status !== 404) {
          throw await apiError(response);
        }
      } while (this.framePending && !this.closed);
    } catch (error) {
      if (!this.closed) this.trouble(error, "Could not load the latest picture:");
    } finally {
      this.frameBusy = false;
    }
  }

  async onFinished() {
    if (this.finished || this.closed) return;
    this.finished = true;
    if (this.stream) this.stream.close();
    clearTimeout(this.timer);
    try {
      const response = await api(`/v1/jobs/${this.id}`);
      const view = await response.json();
      if (this.closed) return;
      this.clearTrouble();
      applyView(view);
      if (view.status === "succeeded") await loadResult(view);
      else await this.loadLastFrame();
      showFinished(page.job);
    } catch (error) {
      if (!this.closed) showError(ui.jobError, error, "The painting ended, but its result could not be loaded.");
    }
    refreshGallery();
  }

  async loadLastFrame() {
    // A canceled or failed job keeps its last frame: show it rather than an empty canvas.
    this.frameEtag = null;
    await this.loadFrame();
  }
}

async function loadResult(view) {
  const response = await api(`/v1/jobs/${view.id}/result`);
  const blob = await response.blob();
  if (!page.job || page.job.id !== view.id) return;
  showPicture(blob, "result");
  page.showingResult = true;
  if (page.resultUrl) URL.revokeObjectURL(page.resultUrl);
  page.resultUrl = URL.createObjectURL(blob);
  ui.downloadPng.href = page.resultUrl;
  ui.downloadPng.download = `artgen-${view.id.slice(0, 8)}-seed${view.seed}.png`;
}

// ---------------------------------------------------------------------------------------------
// The canvas

function openJob(job) {
  if (page.watch) page.watch.close();
  page.watch = null;
  page.job = { ...job };
  page.showingResult = false;
  page.showingTimelapse = false;
  page.stall = "";
  page.timelapseBlob = null;
  resetCanvas(job);
  history.replaceState(null, "", `#job=${job.id}`);
  applyView(job);
  markCurrentInGallery();
  const watch = new Watch(job);
  page.watch = watch;
  if (TERMINAL.has(job.status)) watch.onFinished();
  else watch.start();
}

function resetCanvas(job) {
  hideError(ui.jobError);
  if (page.pictureUrl) URL.revokeObjectURL(page.pictureUrl);
  page.pictureUrl = null;
  ui.picture.hidden = true;
  ui.picture.removeAttribute("src");
  ui.frameEmpty.hidden = false;
  ui.canvas.style.setProperty("--aspect", `${job.width} / ${job.height}`);
  ui.caption.hidden = true;
  for (const button of [ui.downloadPng, ui.downloadTimelapse, ui.playTimelapse, ui.repaint]) button.hidden = true;
  ui.playTimelapse.setAttribute("aria-pressed", "false");
  ui.playTimelapse.textContent = "Play time-lapse";
  ui.params.hidden = true;
  ui.progress.classList.remove("done", "stopped");
  ui.progressBlock.hidden = false;
}

function showPicture(blob, kind) {
  const url = URL.createObjectURL(blob);
  const previous = page.pictureUrl;
  page.pictureUrl = url;
  // The old picture stays until the new one is decoded, so the canvas never blinks.
  ui.picture.onload = () => {
    if (previous && previous !== page.pictureUrl) URL.revokeObjectURL(previous);
  };
  ui.picture.src = url;
  ui.picture.dataset.kind = kind;
  ui.picture.hidden = false;
  ui.frameEmpty.hidden = true;
  describePicture();
}

function describePicture() {
  const job = page.job;
  if (!job) return;
  const what = `“${shortPrompt(job.prompt, 120)}”`;
  let alt;
  if (page.showingTimelapse) alt = `Time-lapse of the painting of ${what}`;
  else if (ui.picture.dataset.kind === "result") alt = `Finished painting of ${what}, seed ${job.seed}`;
  else alt = `Painting of ${what} in progress, iteration ${job.iteration} of ${job.iterations}`;
  ui.picture.alt = alt;
  ui.caption.textContent = shortPrompt(job.prompt, 140);
  ui.caption.hidden = false;
}

/** A job view from the API (snapshot, poll, or submit): state, queue, progress, note, error. */
function applyView(view) {
  const job = page.job;
  if (!job || job.id !== view.id) return;
  // A slow re-read must not move the bar backwards past what the stream already showed.
  const iteration = view.status === "running" && job.status === "running" ? Math.max(view.iteration, job.iteration) : view.iteration;
  Object.assign(job, view, { iteration });
  if (view.status !== "queued") page.stall = "";
  render();
}

function applyProgress(event) {
  const job = page.job;
  if (!job || TERMINAL.has(job.status)) return;
  if (event.iteration < job.iteration) return;
  job.status = "running";
  job.queue_position = null;
  page.stall = "";
  job.iteration = event.iteration;
  job.iterations = event.iterations;
  job.loss = event.loss;
  if (event.its) job.its = event.its;
  job.eta_seconds = job.its ? Math.max(0, (job.iterations - job.iteration) / job.its) : null;
  render();
}

const STATUS_TEXT = {
  queued: (job) => {
    const position = job.queue_position;
    let text = "Waiting for a painter to pick it up…";
    if (position === 1) text = "Waiting in the queue: next in line.";
    else if (position) text = `Waiting in the queue: ${ordinal(position)} in line.`;
    if (page.stall) text += ` No painter is running right now (${page.stall.replace(/\.$/, "")}); it starts when one does.`;
    return text;
  },
  running: (job) => (job.iteration ? "Painting: the picture sharpens as it goes." : "Starting to paint…"),
  succeeded: (job) => (job.run_s ? `Finished in ${formatDuration(job.run_s)}.` : "Finished."),
  failed: () => "The painting failed.",
  canceled: (job) => `Canceled at iteration ${job.iteration} of ${job.iterations}.`,
};

function render() {
  const job = page.job;
  const status = job.status;
  ui.badge.hidden = false;
  ui.badge.textContent = status;
  ui.badge.className = `badge badge-${status}`;
  const text = (STATUS_TEXT[status] || (() => status))(job);
  if (ui.status.textContent !== text) ui.status.textContent = text;
  ui.canvas.classList.toggle("busy", !TERMINAL.has(status));
  ui.canvas.dataset.status = status;

  // Progress
  const total = job.iterations || 0;
  const done = Math.min(job.iteration || 0, total);
  ui.progress.setAttribute("aria-valuemax", String(total));
  ui.progress.setAttribute("aria-valuenow", String(done));
  ui.progress.setAttribute("aria-valuetext", `iteration ${done} of ${total}`);
  ui.progressFill.style.width = total ? `${(100 * done) / total}%` : "0";
  ui.progress.classList.toggle("done", status === "succeeded");
  ui.progress.classList.toggle("stopped", status === "failed" || status === "canceled");
  ui.progressIter.textContent = `${done} / ${total} iterations`;
  ui.progressRate.textContent = status === "running" && job.its ? `${job.its.toFixed(job.its < 10 ? 1 : 0)} it/s` : "";
  let eta = "";
  if (status === "running" && job.eta_seconds !== null && job.eta_seconds !== undefined) {
    eta = job.eta_seconds < 1 ? "almost done" : `about ${formatDuration(job.eta_seconds)} left`;
  } else if (status === "queued") {
    eta = job.queue_position ? `${ordinal(job.queue_position)} in the queue` : "queued";
  }
  ui.progressEta.textContent = eta;

  // The model's note, plainly, and the job's error in words
  ui.jobNote.textContent = job.note ? `Note: ${job.note}` : "";
  ui.jobNote.hidden = !job.note;
  if (status === "failed") {
    showError(ui.jobError, new ApiError(0, job.error ? `The painting failed: ${job.error}` : "The painting failed; the service gave no reason."));
  }

  const active = !TERMINAL.has(status);
  ui.cancel.hidden = !active;
  if (!active) {
    ui.cancel.disabled = false;
    ui.cancel.textContent = "Cancel";
  }
  if (!ui.picture.hidden) describePicture();
}

function showFinished(job) {
  ui.repaint.hidden = false;
  ui.downloadPng.hidden = job.status !== "succeeded";
  const hasFrames = !ui.picture.hidden;
  ui.downloadTimelapse.hidden = !hasFrames;
  ui.playTimelapse.hidden = !hasFrames;
  renderParams(job);
}

function renderParams(job) {
  const rows = [
    ["Prompt", job.prompt],
    ["Model", job.model],
    ["Size", `${job.width} × ${job.height} px`],
    ["Iterations", job.status === "succeeded" ? String(job.iterations) : `${job.iteration} of ${job.iterations}`],
    ["Cutouts", String(job.cutn)],
    ["Seed", String(job.seed)],
  ];
  if (job.queue_wait_s !== null && job.queue_wait_s !== undefined) rows.push(["Waited", formatDuration(job.queue_wait_s)]);
  if (job.run_s !== null && job.run_s !== undefined) rows.push(["Painted in", formatDuration(job.run_s)]);
  if (job.loss !== null && job.loss !== undefined) rows.push(["Final loss", job.loss.toFixed(4)]);
  ui.paramsList.replaceChildren();
  for (const [name, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    ui.paramsList.append(dt, dd);
  }
  ui.params.hidden = false;
}

async function cancelJob() {
  const job = page.job;
  if (!job) return;
  ui.cancel.disabled = true;
  ui.cancel.textContent = "Canceling…";
  try {
    const response = await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
    applyView(await response.json());
    // The stream's `finished` ends it; a queued job may never send one, so re-read it too.
    if (page.watch && page.watch.id === job.id) page.watch.tick();
  } catch (error) {
    ui.cancel.disabled = false;
    ui.cancel.textContent = "Cancel";
    if (error instanceof ApiError && error.status === 409 && page.watch) page.watch.tick();
    else showError(ui.jobError, error, "Could not cancel.");
  }
}

async function fetchTimelapse() {
  const job = page.job;
  if (page.timelapseBlob) return page.timelapseBlob;
  const response = await api(`/v1/jobs/${job.id}/timelapse`);
  const blob = await response.blob();
  if (page.job && page.job.id === job.id) page.timelapseBlob = blob;
  return blob;
}

function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  ui.saveLink.href = url;
  ui.saveLink.download = filename;
  ui.saveLink.click();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

async function downloadTimelapse() {
  const job = page.job;
  ui.downloadTimelapse.disabled = true;
  const label = ui.downloadTimelapse.textContent;
  ui.downloadTimelapse.textContent = "Preparing…";
  try {
    saveBlob(await fetchTimelapse(), `artgen-${job.id.slice(0, 8)}-timelapse.webp`);
  } catch (error) {
    showError(ui.jobError, error, "Could not make the time-lapse.");
  } finally {
    ui.downloadTimelapse.disabled = false;
    ui.downloadTimelapse.textContent = label;
  }
}

async function toggleTimelapse() {
  const job = page.job;
  if (page.showingTimelapse) {
    page.showingTimelapse = false;
    ui.playTimelapse.setAttribute("aria-pressed", "false");
    ui.playTimelapse.textContent = "Play time-lapse";
    if (job.status === "succeeded") await loadResult(job);
    else if (page.watch) await page.watch.loadLastFrame();
    return;
  }
  try {
    const blob = await fetchTimelapse();
    page.showingTimelapse = true;
    showPicture(blob, "timelapse");
    ui.playTimelapse.setAttribute("aria-pressed", "true");
    ui.playTimelapse.textContent = "Show the final picture";
  } catch (error) {
    showError(ui.jobError, error, "Could not make the time-lapse.");
  }
}

function repaint() {
  const job = page.job;
  if (!job) return;
  ui.prompt.value = job.prompt;
  if ([...ui.model.options].some((option) => option.value === job.model)) ui.model.value = job.model;
  ui.width.value = String(job.width);
  ui.height.value = String(job.height);
  ui.iterations.value = String(job.iterations);
  ui.cutn.value = String(job.cutn);
  ui.seed.value = String(job.seed);
  updateModelNote();
  ui.form.requestSubmit();
}

// ---------------------------------------------------------------------------------------------
// The gallery of recent jobs

async function refreshGallery() {
  clearTimeout(page.galleryTimer);
  let jobs;
  try {
    const response = await api(`/v1/jobs?limit=${GALLERY_LIMIT}`);
    const body = await response.json();
    jobs = Array.isArray(body) ? body : body.jobs;
    hideError(ui.galleryError);
  } catch (error) {
    showError(ui.galleryError, error, "Could not load your recent paintings.");
    page.galleryTimer = setTimeout(refreshGallery, 10_000);
    return;
  }
  renderGallery(jobs);
  if (jobs.some((job) => !TERMINAL.has(job.status))) page.galleryTimer = setTimeout(refreshGallery, GALLERY_REFRESH_MS);
}

function renderGallery(jobs) {
  ui.galleryEmpty.hidden = jobs.length > 0;
  const existing = new Map([...ui.gallery.children].map((li) => [li.dataset.id, li]));
  const wanted = new Set(jobs.map((job) => job.id));
  for (const [id, li] of existing) {
    if (!wanted.has(id)) {
      li.remove();
      const thumb = page.thumbs.get(id);
      if (thumb && thumb.url) URL.revokeObjectURL(thumb.url);
      page.thumbs.delete(id);
    }
  }
  jobs.forEach((job, index) => {
    const li = existing.get(job.id) || galleryItem(job);
    updateGalleryItem(li, job);
    // Only move nodes that are out of place, so a focused entry keeps its focus.
    if (ui.gallery.children[index] !== li) ui.gallery.insertBefore(li, ui.gallery.children[index] || null);
  });
  markCurrentInGallery();
}

function galleryItem(job) {
  const li = document.createElement("li");
  li.dataset.id = job.id;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "thumb";
  const image = document.createElement("span");
  image.className = "thumb-image";
  const prompt = document.createElement("span");
  prompt.className = "thumb-prompt";
  const meta = document.createElement("span");
  meta.className = "thumb-meta";
  const badge = document.createElement("span");
  const when = document.createElement("span");
  meta.append(badge, when);
  button.append(image, prompt, meta);
  li.append(button);
  button.addEventListener("click", () => openFromGallery(li.dataset.id));
  return li;
}

function updateGalleryItem(li, job) {
  li.job = job;
  const button = li.firstElementChild;
  const [image, prompt, meta] = button.children;
  const [badge, when] = meta.children;
  prompt.textContent = job.prompt;
  badge.className = `badge badge-${job.status}`;
  badge.textContent = job.status;
  when.textContent = formatAgo(job.created_at);
  button.setAttribute("aria-label", `Open “${shortPrompt(job.prompt)}”, ${job.status}, ${job.width} × ${job.height}`);
  const key = job.status === "succeeded" ? "result" : job.status === "queued" ? "none" : `frame-${job.status}-${job.iteration}`;
  const thumb = page.thumbs.get(job.id);
  if (thumb && thumb.key === key) return;
  page.thumbs.set(job.id, { key, url: thumb ? thumb.url : null });
  if (key === "none") {
    if (!image.firstChild) image.textContent = "queued";
    return;
  }
  loadThumb(job, key, image);
}

async function loadThumb(job, key, box) {
  const path = key === "result" ? `/v1/jobs/${job.id}/result` : `/v1/jobs/${job.id}/frame`;
  let response;
  try {
    response = await fetch(path, { headers: authHeaders() });
  } catch (error) {
    box.textContent = "picture unavailable";
    box.title = error.message;
    return;
  }
  const thumb = page.thumbs.get(job.id);
  if (!thumb || thumb.key !== key) return; // a newer state asked for another picture meanwhile
  if (!response.ok) {
    if (!box.querySelector("img")) box.textContent = response.status === 404 ? "no picture" : `HTTP ${response.status}`;
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  if (thumb.url) URL.revokeObjectURL(thumb.url);
  thumb.url = url;
  let img = box.querySelector("img");
  if (!img) {
    box.replaceChildren();
    img = document.createElement("img");
    box.append(img);
  }
  img.src = url;
  img.alt = `${job.status === "succeeded" ? "Painting" : "Last frame"} of “${shortPrompt(job.prompt)}”`;
}

async function openFromGallery(id) {
  const li = [...ui.gallery.children].find((item) => item.dataset.id === id);
  if (page.job && page.job.id === id) {
    ui.stage.scrollIntoView({ behavior: "smooth", block: "start" });
    return;
  }
  try {
    const response = await api(`/v1/jobs/${id}`);
    openJob(await response.json());
  } catch (error) {
    if (li && li.job) openJob(li.job);
    showError(ui.jobError, error, "Could not open that painting.");
  }
  ui.stage.scrollIntoView({ behavior: "smooth", block: "start" });
}

function markCurrentInGallery() {
  for (const li of ui.gallery.children) {
    const button = li.firstElementChild;
    if (page.job && li.dataset.id === page.job.id) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

// ---------------------------------------------------------------------------------------------
// Start

async function openFromHash() {
  const match = /^#job=([0-9a-zA-Z-]{1,64})$/.exec(location.hash);
  if (!match) return;
  try {
    const response = await api(`/v1/jobs/${match[1]}`);
    openJob(await response.json());
  } catch (error) {
    history.replaceState(null, "", location.pathname);
    showError(ui.jobError, error, "Could not reopen the painting in the address.");
  }
}

function init() {
  const ids = {
    form: "job-form", prompt: "prompt", model: "model", modelNote: "model-note", width: "width", height: "height",
    iterations: "iterations", seed: "seed", seedClear: "seed-clear", cutn: "cutn", cutPow: "cut_pow",
    stepSize: "step_size", initWeight: "init_weight", apiKey: "api-key", apiKeyHint: "api-key-hint",
    initInput: "init-image", dropzone: "dropzone", dropEmpty: "drop-empty", dropPreview: "drop-preview",
    initPreview: "init-preview", initName: "init-name", initRemove: "init-remove", submit: "submit",
    formError: "form-error", serviceError: "service-error", badge: "job-badge", status: "job-status",
    canvas: "frame", picture: "picture", frameEmpty: "frame-empty", caption: "picture-caption",
    progressBlock: "progress-block", progress: "progress", progressFill: "progress-fill",
    progressIter: "progress-iter", progressRate: "progress-rate", progressEta: "progress-eta",
    jobNote: "job-note", jobError: "job-error", cancel: "cancel", downloadPng: "download-png",
    downloadTimelapse: "download-timelapse", playTimelapse: "play-timelapse", repaint: "repaint",
    params: "params", paramsList: "params-list", gallery: "gallery", galleryEmpty: "gallery-empty",
    galleryError: "gallery-error", galleryRefresh: "gallery-refresh", saveLink: "save-link",
  };
  for (const [name, id] of Object.entries(ids)) {
    ui[name] = document.getElementById(id);
    if (!ui[name]) throw new Error(`the page has no #${id}`);
  }
  ui.more = document.querySelector("details.more");
  ui.stage = document.querySelector(".stage");
  ui.progressBlock.hidden = true;

  ui.form.addEventListener("submit", submitJob);
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) ui.form.requestSubmit();
  });
  for (const chip of document.querySelectorAll(".chip")) {
    chip.addEventListener("click", () => {
      ui.prompt.value = chip.textContent;
      ui.prompt.removeAttribute("aria-invalid");
      ui.prompt.focus();
    });
  }
  ui.model.addEventListener("change", applyModelDefaults);
  ui.model.addEventListener("change", updateModelNote);
  ui.seedClear.addEventListener("click", () => {
    ui.seed.value = "";
    ui.seed.focus();
  });
  for (const input of Object.values(FIELD_INPUTS())) {
    input.addEventListener("input", () => input.removeAttribute("aria-invalid"));
  }
  ui.initInput.addEventListener("change", () => setInitFile(ui.initInput.files[0]));
  ui.initRemove.addEventListener("click", clearInitFile);
  wireDropzone();

  ui.apiKey.value = apiKey();
  ui.apiKey.addEventListener("change", () => {
    const key = ui.apiKey.value.trim();
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
    refreshGallery();
  });

  ui.cancel.addEventListener("click", cancelJob);
  ui.downloadTimelapse.addEventListener("click", downloadTimelapse);
  ui.playTimelapse.addEventListener("click", toggleTimelapse);
  ui.repaint.addEventListener("click", repaint);
  ui.galleryRefresh.addEventListener("click", refreshGallery);

  loadConfig();
  refreshGallery();
  openFromHash();
}

document.addEventListener("DOMContentLoaded", init);

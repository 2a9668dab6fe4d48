// The canvas: the job on show, its picture as it forms, progress, and what to do with it once it ends.
// It owns the job it shows and the Watch that follows it; the rest of the page reaches it through the
// functions exported here and hears from it through the hooks passed to setupCanvas.

import { TERMINAL, ApiError, api } from "./api.js";
import { elements, hideError, showError } from "./dom.js";
import { formatDuration, ordinal, shortPrompt } from "./format.js";
import { Watch } from "./watch.js";
import { hideChain, showChain } from "./chain.js";

let ui = null;
let hooks = null; // {opened(job), ended(), repaint(job)}
const state = {
  job: null, // the job view shown on the canvas
  watch: null, // the Watch following it
  pictureUrl: null, // object URL shown in #picture
  resultUrl: null, // object URL behind the PNG download
  timelapseBlob: null,
  showingTimelapse: false,
  showingResult: false,
  stall: "", // why a queued job is not starting (no live worker), in words
};

/** Finds the canvas's elements and wires its buttons; `given` says what to do when the canvas moves on. */
export function setupCanvas(given) {
  hooks = given;
  ui = elements({
    badge: "job-badge", status: "job-status", canvas: "frame", picture: "picture", frameEmpty: "frame-empty",
    caption: "picture-caption", progressBlock: "progress-block", progress: "progress", progressFill: "progress-fill",
    progressIter: "progress-iter", progressRate: "progress-rate", progressEta: "progress-eta",
    progressStage: "progress-stage", promptLosses: "prompt-losses",
    jobNote: "job-note", jobError: "job-error", cancel: "cancel", downloadPng: "download-png",
    downloadTimelapse: "download-timelapse", playTimelapse: "play-timelapse", repaint: "repaint",
    params: "params", paramsList: "params-list", saveLink: "save-link",
  });
  ui.stage = document.querySelector(".stage");
  ui.progressBlock.hidden = true;

  ui.cancel.addEventListener("click", cancelJob);
  ui.downloadTimelapse.addEventListener("click", downloadTimelapse);
  ui.playTimelapse.addEventListener("click", toggleTimelapse);
  ui.repaint.addEventListener("click", () => {
    if (state.job) hooks.repaint(state.job);
  });
}

/** The id of the job on show, or null. */
export function currentJobId() {
  return state.job ? state.job.id : null;
}

/** An error about the job on show (or one that could not be opened), under the canvas. */
export function showJobError(error, context) {
  showError(ui.jobError, error, context);
}

/** The job with this id was deleted: if it is on show, stop following it and empty the canvas. */
export function forgetJob(id) {
  if (!state.job || state.job.id !== id) return;
  if (state.watch) state.watch.close();
  state.watch = null;
  resetCanvas(state.job);
  state.job = null;
  ui.progressBlock.hidden = true;
  ui.cancel.hidden = true;
  ui.badge.hidden = true;
  ui.status.textContent = "That painting was deleted.";
  history.replaceState(null, "", location.pathname);
}

export function revealCanvas(options) {
  ui.stage.scrollIntoView(options);
}

/** Shows a job on the canvas and follows it until it ends. */
export function openJob(job) {
  if (state.watch) state.watch.close();
  state.watch = null;
  state.job = { ...job };
  state.showingResult = false;
  state.showingTimelapse = false;
  state.stall = "";
  state.timelapseBlob = null;
  resetCanvas(job);
  history.replaceState(null, "", `#job=${job.id}`);
  applyView(job);
  showChain(state.job);
  hooks.opened(job);
  const watch = new Watch(job, {
    view: applyView,
    progress: applyProgress,
    wantsFrames: () => !state.showingResult,
    frame: (blob) => showPicture(blob, "frame"),
    stall: (text) => {
      state.stall = text;
      render();
    },
    result: loadResult,
    finished: () => showFinished(state.job),
    ended: () => hooks.ended(),
    transport: (name) => {
      ui.canvas.dataset.transport = name;
    },
    showError: (error, context) => showError(ui.jobError, error, context),
    hideError: () => hideError(ui.jobError),
  });
  state.watch = watch;
  if (TERMINAL.has(job.status)) watch.onFinished();
  else watch.start();
}

async function loadResult(view) {
  const response = await api(`/v1/jobs/${view.id}/result`);
  const blob = await response.blob();
  if (!state.job || state.job.id !== view.id) return;
  showPicture(blob, "result");
  state.showingResult = true;
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = URL.createObjectURL(blob);
  ui.downloadPng.href = state.resultUrl;
  ui.downloadPng.download = `artgen-${view.id.slice(0, 8)}-seed${view.seed}.png`;
}

function resetCanvas(job) {
  hideError(ui.jobError);
  if (state.pictureUrl) URL.revokeObjectURL(state.pictureUrl);
  state.pictureUrl = null;
  ui.picture.hidden = true;
  ui.picture.removeAttribute("src");
  ui.frameEmpty.hidden = false;
  ui.canvas.style.setProperty("--aspect", `${job.width} / ${job.height}`);
  ui.caption.hidden = true;
  for (const button of [ui.downloadPng, ui.downloadTimelapse, ui.playTimelapse, ui.repaint]) button.hidden = true;
  ui.playTimelapse.setAttribute("aria-pressed", "false");
  ui.playTimelapse.textContent = "Play time-lapse";
  ui.params.hidden = true;
  hideChain();
  ui.progress.classList.remove("done", "stopped");
  ui.progressBlock.hidden = false;
}

function showPicture(blob, kind) {
  const url = URL.createObjectURL(blob);
  const previous = state.pictureUrl;
  state.pictureUrl = url;
  // The old picture stays until the new one is decoded, so the canvas never blinks.
  ui.picture.onload = () => {
    if (previous && previous !== state.pictureUrl) URL.revokeObjectURL(previous);
  };
  ui.picture.src = url;
  ui.picture.dataset.kind = kind;
  ui.picture.hidden = false;
  ui.frameEmpty.hidden = true;
  describePicture();
}

function describePicture() {
  const job = state.job;
  if (!job) return;
  const what = `“${shortPrompt(job.prompt, 120)}”`;
  let alt;
  if (state.showingTimelapse) alt = `Time-lapse of the painting of ${what}`;
  else if (ui.picture.dataset.kind === "result") alt = `Finished painting of ${what}, seed ${job.seed}`;
  else alt = `Painting of ${what} in progress, iteration ${job.iteration} of ${job.iterations}`;
  ui.picture.alt = alt;
  ui.caption.textContent = shortPrompt(job.prompt, 140);
  ui.caption.hidden = false;
}

/** A job view from the API (snapshot, poll, or submit): state, queue, progress, note, error. */
function applyView(view) {
  const job = state.job;
  if (!job || job.id !== view.id) return;
  // A slow re-read must not move the bar backwards past what the stream already showed.
  const iteration = view.status === "running" && job.status === "running" ? Math.max(view.iteration, job.iteration) : view.iteration;
  Object.assign(job, view, { iteration });
  if (view.status !== "queued") state.stall = "";
  render();
}

function applyProgress(event) {
  const job = state.job;
  if (!job || TERMINAL.has(job.status)) return;
  if (event.iteration < job.iteration) return;
  job.status = "running";
  job.queue_position = null;
  state.stall = "";
  job.iteration = event.iteration;
  job.iterations = event.iterations;
  job.loss = event.loss;
  if (event.stage) job.stage = event.stage;
  if (event.losses) job.losses = event.losses;
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
    if (state.stall) text += ` No painter is running right now (${state.stall.replace(/\.$/, "")}); it starts when one does.`;
    return text;
  },
  running: (job) => (job.iteration ? "Painting: the picture sharpens as it goes." : "Starting to paint…"),
  succeeded: (job) => {
    const took = job.run_s ? `Finished in ${formatDuration(job.run_s)}` : "Finished";
    if (job.stopped_at) return `${took}, early: the loss stopped improving at iteration ${job.stopped_at} of ${job.iterations}.`;
    return `${took}.`;
  },
  failed: () => "The painting failed.",
  canceled: (job) =>
    job.cancel_reason === "deadline"
      ? `Stopped at its deadline, at iteration ${job.iteration} of ${job.iterations}.`
      : `Canceled at iteration ${job.iteration} of ${job.iterations}.`,
};

function render() {
  const job = state.job;
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
  renderStage(job);
  renderLosses(job);

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

/** The schedule's stage being painted, when the prompt has more than one. */
function renderStage(job) {
  const stage = job.stage;
  const shown = Boolean(stage && stage.count > 1);
  ui.progressStage.hidden = !shown;
  if (!shown) return;
  const text = `Stage ${stage.index + 1} of ${stage.count}: ${shortPrompt(stage.text, 80)}`;
  if (ui.progressStage.textContent !== text) ui.progressStage.textContent = text;
  ui.progressStage.dataset.index = String(stage.index);
}

/** One small bar per prompt piece of the current stage: its CLIP distance (shorter is closer). */
function renderLosses(job) {
  const rows = job.losses || [];
  ui.promptLosses.hidden = rows.length === 0;
  if (!rows.length) return;
  const longest = Math.max(...rows.map((row) => row.distance), 1e-9);
  const items = rows.map((row) => {
    const item = document.createElement("li");
    item.className = row.weight < 0 ? "prompt-loss away" : "prompt-loss";
    const label = document.createElement("span");
    label.className = "prompt-loss-text";
    label.textContent = row.weight === 1 ? row.text : `${row.text} ×${row.weight}`;
    const bar = document.createElement("span");
    bar.className = "prompt-loss-bar";
    const fill = document.createElement("span");
    fill.className = "prompt-loss-fill";
    fill.style.width = `${Math.max(2, (100 * row.distance) / longest)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "prompt-loss-value";
    value.textContent = row.distance.toFixed(3);
    item.title = `${row.text}: distance ${row.distance.toFixed(4)}${row.weight < 0 ? " (painted away from)" : ""}`;
    item.append(label, bar, value);
    return item;
  });
  ui.promptLosses.replaceChildren(...items);
}

function showFinished(job) {
  ui.repaint.hidden = false;
  ui.downloadPng.hidden = job.status !== "succeeded";
  const hasFrames = !ui.picture.hidden;
  ui.downloadTimelapse.hidden = !hasFrames;
  ui.playTimelapse.hidden = !hasFrames;
  renderParams(job);
  showChain(job);
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
  if (job.optimizer) rows.push(["Optimizer", job.optimizer]);
  if (job.init) rows.push(["Start", job.init]);
  if (job.stage && job.stage.count > 1) rows.push(["Stages", `${job.stage.count}, changing every ${job.change_every} iterations`]);
  if (job.plateau_window) rows.push(["Stop on plateau", `${job.plateau_window} iterations, least improvement ${job.plateau_delta}`]);
  if (job.stopped_at) rows.push(["Stopped at", `iteration ${job.stopped_at} (the loss stopped improving)`]);
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
  const job = state.job;
  if (!job) return;
  ui.cancel.disabled = true;
  ui.cancel.textContent = "Canceling…";
  try {
    const response = await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
    applyView(await response.json());
    // The stream's `finished` ends it; a queued job may never send one, so re-read it too.
    if (state.watch && state.watch.id === job.id) state.watch.tick();
  } catch (error) {
    ui.cancel.disabled = false;
    ui.cancel.textContent = "Cancel";
    if (error instanceof ApiError && error.status === 409 && state.watch) state.watch.tick();
    else showError(ui.jobError, error, "Could not cancel.");
  }
}

async function fetchTimelapse() {
  const job = state.job;
  if (state.timelapseBlob) return state.timelapseBlob;
  const response = await api(`/v1/jobs/${job.id}/timelapse`);
  const blob = await response.blob();
  if (state.job && state.job.id === job.id) state.timelapseBlob = blob;
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
  const job = state.job;
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
  const job = state.job;
  if (state.showingTimelapse) {
    state.showingTimelapse = false;
    ui.playTimelapse.setAttribute("aria-pressed", "false");
    ui.playTimelapse.textContent = "Play time-lapse";
    if (job.status === "succeeded") await loadResult(job);
    else if (state.watch) await state.watch.loadLastFrame();
    return;
  }
  try {
    const blob = await fetchTimelapse();
    state.showingTimelapse = true;
    showPicture(blob, "timelapse");
    ui.playTimelapse.setAttribute("aria-pressed", "true");
    ui.playTimelapse.textContent = "Show the final picture";
  } catch (error) {
    showError(ui.jobError, error, "Could not make the time-lapse.");
  }
}

// The form: everything a job needs, bounded by the service's limits; the start picture; the API key.
// It owns the service's config and the chosen start picture; it hears nothing from the rest of the page
// but `applyConfig` and `paintAgain`, and tells it through the hooks passed to setupForm.

import { ApiError, api, apiKey, setApiKey } from "./api.js";
import { elements, hideError, showError } from "./dom.js";
import { formatBytes } from "./format.js";

const PICTURE_TYPES = ["image/png", "image/jpeg", "image/webp"];
// fields inside "More settings"
const MORE_SETTINGS = ["cutn", "cut_pow", "step_size", "init_weight", "optimizer", "init", "change_every", "plateau_window", "plateau_delta"];

let ui = null;
let hooks = null; // {submitted(job), keyChanged()}
const state = {
  config: null, // /v1/config, once it has answered
  initFile: null,
  initPreviewUrl: null,
};

/** Finds the form's elements and wires them; `given` says what to do with a new job and a new key. */
export function setupForm(given) {
  hooks = given;
  ui = elements({
    form: "job-form", prompt: "prompt", model: "model", modelNote: "model-note", width: "width", height: "height",
    iterations: "iterations", seed: "seed", seedClear: "seed-clear", cutn: "cutn", cutPow: "cut_pow",
    stepSize: "step_size", initWeight: "init_weight", optimizer: "optimizer", init: "init",
    changeEvery: "change_every", plateauWindow: "plateau_window", plateauDelta: "plateau_delta", apiKey: "api-key", apiKeyHint: "api-key-hint",
    initInput: "init-image", dropzone: "dropzone", dropEmpty: "drop-empty", dropPreview: "drop-preview",
    initPreview: "init-preview", initName: "init-name", initRemove: "init-remove", submit: "submit",
    formError: "form-error",
  });
  ui.more = document.querySelector("details.more");

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
  for (const input of Object.values(fieldInputs())) {
    input.addEventListener("input", () => input.removeAttribute("aria-invalid"));
  }
  ui.initInput.addEventListener("change", () => setInitFile(ui.initInput.files[0]));
  ui.initRemove.addEventListener("click", clearInitFile);
  wireDropzone();

  ui.apiKey.value = apiKey();
  ui.apiKey.addEventListener("change", () => {
    setApiKey(ui.apiKey.value.trim());
    hooks.keyChanged();
  });
}

// ---------------------------------------------------------------------------------------------
// The service's limits

function setLimit(input, max, value) {
  input.max = String(max);
  if (value !== undefined && value !== null) input.value = String(Math.min(value, max));
}

/** The service's limits, models and defaults (/v1/config) onto the form's fields and hints. */
export function applyConfig(config) {
  state.config = config;
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

/** The chosen model's own size, iterations and cutouts (/v1/config `model_defaults`). */
function applyModelDefaults() {
  const config = state.config;
  const defaults = (config.model_defaults || {})[ui.model.value] || {};
  setLimit(ui.width, config.max_size, defaults.size);
  setLimit(ui.height, config.max_size, defaults.size);
  setLimit(ui.iterations, config.max_iterations, defaults.iterations);
  setLimit(ui.cutn, config.max_cutn, defaults.cutn);
  if (defaults.step_size !== undefined) ui.stepSize.value = String(defaults.step_size);
}

function updateModelNote() {
  const note = state.config && state.config.notes ? state.config.notes[ui.model.value] : null;
  ui.modelNote.textContent = note || "";
  ui.modelNote.hidden = !note;
}

// ---------------------------------------------------------------------------------------------
// The fields and their mistakes

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
    optimizer: ui.optimizer.value || undefined,
    init: ui.init.value || undefined,
    change_every: numberField(ui.changeEvery),
    plateau_window: numberField(ui.plateauWindow),
  };
  // The least improvement only means something with a window (the API refuses it alone).
  if (fields.plateau_window !== undefined) fields.plateau_delta = numberField(ui.plateauDelta);
  for (const name of Object.keys(fields)) if (fields[name] === undefined) delete fields[name];
  return fields;
}

/** The input for each field name the API may blame. */
function fieldInputs() {
  return {
    prompt: ui.prompt, model: ui.model, width: ui.width, height: ui.height, iterations: ui.iterations,
    seed: ui.seed, cutn: ui.cutn, cut_pow: ui.cutPow, step_size: ui.stepSize, init_weight: ui.initWeight,
    init_image: ui.initInput, optimizer: ui.optimizer, init: ui.init, change_every: ui.changeEvery,
    plateau_window: ui.plateauWindow, plateau_delta: ui.plateauDelta,
  };
}

function clearFormErrors() {
  hideError(ui.formError);
  for (const input of Object.values(fieldInputs())) input.removeAttribute("aria-invalid");
}

function showFormError(error) {
  showError(ui.formError, error, "Could not start the painting.");
  if (!(error instanceof ApiError)) return;
  const inputs = fieldInputs();
  for (const item of error.items) {
    const input = inputs[item.field];
    if (!input) continue;
    input.setAttribute("aria-invalid", "true");
    if (MORE_SETTINGS.includes(item.field)) ui.more.open = true;
  }
}

async function submitJob(event) {
  event.preventDefault();
  clearFormErrors();
  const fields = formFields();
  let body;
  const headers = {};
  if (state.initFile) {
    // A start picture goes as a file in a multipart form, with the same fields beside it.
    body = new FormData();
    for (const [name, value] of Object.entries(fields)) body.append(name, String(value));
    body.append("init_image", state.initFile, state.initFile.name);
  } else {
    body = JSON.stringify(fields);
    headers["Content-Type"] = "application/json";
  }
  ui.submit.disabled = true;
  ui.submit.textContent = "Sending…";
  try {
    const response = await api("/v1/jobs", { method: "POST", body, headers });
    const job = await response.json();
    hooks.submitted(job);
  } catch (error) {
    showFormError(error);
  } finally {
    ui.submit.disabled = false;
    ui.submit.textContent = "Paint";
  }
}

/** A finished job's prompt, model, size and seed back into the form, and submitted again. */
export function paintAgain(job) {
  ui.prompt.value = job.prompt;
  if ([...ui.model.options].some((option) => option.value === job.model)) ui.model.value = job.model;
  ui.width.value = String(job.width);
  ui.height.value = String(job.height);
  ui.iterations.value = String(job.iterations);
  ui.cutn.value = String(job.cutn);
  ui.seed.value = String(job.seed);
  if (job.optimizer) ui.optimizer.value = job.optimizer;
  ui.init.value = job.init || "";
  ui.changeEvery.value = job.stage && job.stage.count > 1 && job.change_every ? String(job.change_every) : "";
  ui.plateauWindow.value = job.plateau_window ? String(job.plateau_window) : "";
  ui.plateauDelta.value = String(job.plateau_delta || 0);
  updateModelNote();
  ui.form.requestSubmit();
}

// ---------------------------------------------------------------------------------------------
// The start picture

function setInitFile(file) {
  hideError(ui.formError);
  ui.initInput.removeAttribute("aria-invalid");
  if (!file) return;
  if (!PICTURE_TYPES.includes(file.type)) {
    ui.initInput.value = "";
    ui.initInput.setAttribute("aria-invalid", "true");
    showError(ui.formError, new ApiError(0, `“${file.name}” is not a PNG, JPEG or WebP picture.`));
    return;
  }
  const limit = state.config ? state.config.max_upload_bytes : Infinity;
  if (file.size > limit) {
    ui.initInput.value = "";
    ui.initInput.setAttribute("aria-invalid", "true");
    showError(ui.formError, new ApiError(0, `“${file.name}” is ${formatBytes(file.size)}; the limit is ${formatBytes(limit)}.`));
    return;
  }
  state.initFile = file;
  if (state.initPreviewUrl) URL.revokeObjectURL(state.initPreviewUrl);
  state.initPreviewUrl = URL.createObjectURL(file);
  ui.initPreview.src = state.initPreviewUrl;
  ui.initPreview.alt = `Start picture: ${file.name}`;
  ui.initName.textContent = `${file.name} · ${formatBytes(file.size)}`;
  ui.dropEmpty.hidden = true;
  ui.dropPreview.hidden = false;
}

function clearInitFile() {
  state.initFile = null;
  ui.initInput.value = "";
  if (state.initPreviewUrl) URL.revokeObjectURL(state.initPreviewUrl);
  state.initPreviewUrl = null;
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

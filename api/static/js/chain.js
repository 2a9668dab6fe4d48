// A finished painting's chain: carry it on (POST /v1/jobs/{id}/extend), the jobs it continues and that
// continue it, and its manifest (what repaints it). The canvas calls showChain/hideChain; opening another
// job goes through the hooks main.js passes to setupChain.

import { api } from "./api.js";
import { elements, hideError, showError } from "./dom.js";
import { shortPrompt } from "./format.js";

let ui = null;
let hooks = null; // {extended(job), open(job), failed(error, context)}
let shown = null; // the job whose chain is shown
let manifestUrl = null;

export function setupChain(given) {
  hooks = given;
  ui = elements({
    box: "chain", links: "chain-links", form: "extend-form", iterations: "extend-iterations",
    prompt: "extend-prompt", button: "extend-button", error: "extend-error", manifest: "manifest-link",
  });
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    extend();
  });
  ui.links.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-job]");
    if (!link) return;
    event.preventDefault();
    openLinked(link.dataset.job);
  });
}

/** The chain of a job on the canvas: the extend form and manifest once it has succeeded. */
export function showChain(job) {
  shown = job;
  renderLinks(job);
  const done = job.status === "succeeded";
  ui.box.hidden = !done && !job.parent;
  ui.form.hidden = !done;
  ui.manifest.hidden = true;
  hideError(ui.error);
  if (!done) return;
  ui.prompt.placeholder = shortPrompt(lastStage(job.prompt), 80);
  loadManifest(job);
}

export function hideChain() {
  shown = null;
  ui.box.hidden = true;
  ui.prompt.value = "";
  hideError(ui.error);
}

function lastStage(prompt) {
  const stages = prompt.split("^");
  return stages[stages.length - 1].trim();
}

function jobLink(id) {
  const link = document.createElement("a");
  link.href = `#job=${id}`;
  link.dataset.job = id;
  link.textContent = id.slice(0, 8);
  return link;
}

function renderLinks(job) {
  const parts = [];
  if (job.parent) parts.push(["Continues ", [job.parent], ` from iteration ${job.start_iteration}.`]);
  if (job.children && job.children.length) parts.push(["Carried on in ", job.children, "."]);
  ui.links.replaceChildren();
  for (const [before, ids, after] of parts) {
    const line = document.createElement("span");
    line.className = "chain-line";
    line.append(before);
    ids.forEach((id, index) => {
      if (index) line.append(", ");
      line.append(jobLink(id));
    });
    line.append(after);
    ui.links.append(line);
  }
  ui.links.hidden = parts.length === 0;
}

async function loadManifest(job) {
  try {
    const response = await api(`/v1/jobs/${job.id}/manifest`);
    const blob = await response.blob();
    if (shown !== job) return;
    if (manifestUrl) URL.revokeObjectURL(manifestUrl);
    manifestUrl = URL.createObjectURL(blob);
    ui.manifest.href = manifestUrl;
    ui.manifest.download = `artgen-${job.id.slice(0, 8)}-manifest.json`;
    ui.manifest.hidden = false;
  } catch (error) {
    // The picture stands without it; say so only if someone looks for it.
    ui.manifest.hidden = true;
  }
}

async function extend() {
  if (!shown) return;
  hideError(ui.error);
  const body = { iterations: Number(ui.iterations.value) };
  const prompt = ui.prompt.value.trim();
  if (prompt) body.prompt = prompt;
  ui.button.disabled = true;
  try {
    const response = await api(`/v1/jobs/${shown.id}/extend`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const child = await response.json();
    ui.prompt.value = "";
    hooks.extended(child);
  } catch (error) {
    showError(ui.error, error, "Could not carry it on.");
  } finally {
    ui.button.disabled = false;
  }
}

async function openLinked(id) {
  try {
    const response = await api(`/v1/jobs/${id}`);
    hooks.open(await response.json());
  } catch (error) {
    hooks.failed(error, "Could not open that painting of the chain.");
  }
}

// The gallery of the visitor's recent jobs, newest first, refreshed while any of them is unfinished.
// It owns its list, thumbnails and refresh timer; opening a job goes through the hooks passed to setupGallery.

import { TERMINAL, api, authHeaders } from "./api.js";
import { elements, hideError, showError } from "./dom.js";
import { formatAgo, shortPrompt } from "./format.js";

const GALLERY_LIMIT = 12;
const GALLERY_REFRESH_MS = 3000;
const GALLERY_RETRY_MS = 10_000; // after a failed refresh

let ui = null;
let hooks = null; // {currentId(), open(job), failed(error, context), deleted(id), reveal()}
const state = {
  timer: null,
  thumbs: new Map(), // job id -> {key, url}
};

/** Finds the gallery's elements; `given` says which job is on show and how to show another. */
export function setupGallery(given) {
  hooks = given;
  ui = elements({ gallery: "gallery", galleryEmpty: "gallery-empty", galleryError: "gallery-error", galleryRefresh: "gallery-refresh" });
  ui.galleryRefresh.addEventListener("click", refreshGallery);
}

export async function refreshGallery() {
  clearTimeout(state.timer);
  let jobs;
  try {
    const response = await api(`/v1/jobs?limit=${GALLERY_LIMIT}`);
    const body = await response.json();
    jobs = Array.isArray(body) ? body : body.jobs;
    hideError(ui.galleryError);
  } catch (error) {
    showError(ui.galleryError, error, "Could not load your recent paintings.");
    state.timer = setTimeout(refreshGallery, GALLERY_RETRY_MS);
    return;
  }
  renderGallery(jobs);
  if (jobs.some((job) => !TERMINAL.has(job.status))) state.timer = setTimeout(refreshGallery, GALLERY_REFRESH_MS);
}

/** Marks the entry of the job on show (aria-current), and no other. */
export function markCurrentInGallery() {
  const current = hooks.currentId();
  for (const li of ui.gallery.children) {
    const button = li.firstElementChild;
    if (current && li.dataset.id === current) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

function renderGallery(jobs) {
  ui.galleryEmpty.hidden = jobs.length > 0;
  const existing = new Map([...ui.gallery.children].map((li) => [li.dataset.id, li]));
  const wanted = new Set(jobs.map((job) => job.id));
  for (const [id, li] of existing) {
    if (!wanted.has(id)) {
      li.remove();
      const thumb = state.thumbs.get(id);
      if (thumb && thumb.url) URL.revokeObjectURL(thumb.url);
      state.thumbs.delete(id);
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
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "thumb-delete";
  remove.textContent = "Delete";
  li.append(button, remove);
  button.addEventListener("click", () => openFromGallery(li.dataset.id));
  remove.addEventListener("click", () => deleteFromGallery(li));
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
  li.lastElementChild.setAttribute("aria-label", `Delete “${shortPrompt(job.prompt)}”`);
  const key = job.status === "succeeded" ? "result" : job.status === "queued" ? "none" : `frame-${job.status}-${job.iteration}`;
  const thumb = state.thumbs.get(job.id);
  if (thumb && thumb.key === key) return;
  state.thumbs.set(job.id, { key, url: thumb ? thumb.url : null });
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
  const thumb = state.thumbs.get(job.id);
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

/** Deletes a painting for good (DELETE /v1/jobs/{id}: record, frames, result, time-lapse, uploads). */
async function deleteFromGallery(li) {
  const id = li.dataset.id;
  const what = li.job ? `“${shortPrompt(li.job.prompt)}”` : "this painting";
  if (!window.confirm(`Delete ${what} and everything kept of it? This cannot be undone.`)) return;
  try {
    await api(`/v1/jobs/${id}`, { method: "DELETE" });
  } catch (error) {
    if (error.status !== 404) {
      showError(ui.galleryError, error, "Could not delete that painting.");
      return;
    }
  }
  hideError(ui.galleryError);
  hooks.deleted(id);
  li.remove();
  const thumb = state.thumbs.get(id);
  if (thumb && thumb.url) URL.revokeObjectURL(thumb.url);
  state.thumbs.delete(id);
  ui.galleryEmpty.hidden = ui.gallery.children.length > 0;
  refreshGallery();
}

async function openFromGallery(id) {
  const li = [...ui.gallery.children].find((item) => item.dataset.id === id);
  if (hooks.currentId() === id) {
    hooks.reveal();
    return;
  }
  try {
    const response = await api(`/v1/jobs/${id}`);
    hooks.open(await response.json());
  } catch (error) {
    if (li && li.job) hooks.open(li.job);
    hooks.failed(error, "Could not open that painting.");
  }
  hooks.reveal();
}

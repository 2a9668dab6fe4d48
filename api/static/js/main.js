// artgen's page: submits painting jobs, follows them live over Server-Sent Events (polling when the
// stream fails), and lists the visitor's recent jobs. Native ES modules, no build step: the service may
// be offline. This module wires the parts together; each part owns its own elements and state.
//   api.js      fetch with the API key, errors in words     dom.js     elements by id, error callouts
//   format.js   numbers and times in words                   form.js    the form, limits, start picture
//   view.js     the canvas: the job on show                  watch.js   following a job (SSE or polling)
//   gallery.js  the recent jobs

import { api } from "./api.js";
import { elements, hideError, showError } from "./dom.js";
import { applyConfig, paintAgain, setupForm } from "./form.js";
import { markCurrentInGallery, refreshGallery, setupGallery } from "./gallery.js";
import { currentJobId, forgetJob, openJob, revealCanvas, setupCanvas, showJobError } from "./view.js";
import { setupChain } from "./chain.js";

const NARROW = "(max-width: 860px)"; // style.css's one-column layout: the canvas is below the form

async function loadConfig(serviceError) {
  try {
    const response = await api("/v1/config");
    const config = await response.json();
    hideError(serviceError);
    applyConfig(config);
  } catch (error) {
    showError(serviceError, error, "Could not load the service's settings; the limits shown may be wrong.");
  }
}

async function openFromHash() {
  const match = /^#job=([0-9a-zA-Z-]{1,64})$/.exec(location.hash);
  if (!match) return;
  try {
    const response = await api(`/v1/jobs/${match[1]}`);
    openJob(await response.json());
  } catch (error) {
    history.replaceState(null, "", location.pathname);
    showJobError(error, "Could not reopen the painting in the address.");
  }
}

function init() {
  const { serviceError } = elements({ serviceError: "service-error" });
  setupForm({
    submitted: (job) => {
      openJob(job);
      refreshGallery();
      if (window.matchMedia(NARROW).matches) revealCanvas({ behavior: "smooth" });
    },
    keyChanged: refreshGallery,
  });
  setupCanvas({ opened: markCurrentInGallery, ended: refreshGallery, repaint: paintAgain });
  setupChain({
    extended: (job) => {
      openJob(job);
      refreshGallery();
    },
    open: openJob,
    failed: showJobError,
  });
  setupGallery({
    currentId: currentJobId,
    open: openJob,
    failed: showJobError,
    deleted: forgetJob,
    reveal: () => revealCanvas({ behavior: "smooth", block: "start" }),
  });

  loadConfig(serviceError);
  refreshGallery();
  openFromHash();
}

document.addEventListener("DOMContentLoaded", init);

// The page's elements by id, and the error callouts every part of the page shows.

import { ApiError } from "./api.js";

/** `{name: id}` to `{name: element}`; a missing element is a broken page, so it throws. */
export function elements(ids) {
  const found = {};
  for (const [name, id] of Object.entries(ids)) {
    found[name] = document.getElementById(id);
    if (!found[name]) throw new Error(`the page has no #${id}`);
  }
  return found;
}

export function showError(box, error, context = "") {
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

export function hideError(box) {
  box.hidden = true;
  box.replaceChildren();
}

// A stream's name and the addresses to share: the view page (OBS browser source, projector), the control page,
// and the WHEP endpoint for players that speak it.

import { absoluteUrl, pageUrl } from "./access.js";

const COPIED_FEEDBACK_MS = 1500;

// Absolute URLs; the pages carry this page's token, WHEP players send it as a Bearer header instead.
export function streamLinks(name, paths = defaultPaths(name)) {
  return { view: pageUrl(paths.view), control: pageUrl(paths.control), whep: absoluteUrl(paths.whep) };
}

function defaultPaths(name) {
  const encoded = encodeURIComponent(name);
  return { view: `/view/${encoded}`, control: `/control/${encoded}`, whep: `/whep/${encoded}` };
}

// Fill the elements marked data-link="view|control|whep" inside `root`: a text box gets the URL as its value,
// a link gets it as its target. Elements marked data-stream-name get the name.
export function showStreamLinks(root, name, paths) {
  const links = streamLinks(name, paths ?? defaultPaths(name));
  for (const element of root.querySelectorAll("[data-stream-name]")) element.textContent = name;
  for (const element of root.querySelectorAll("[data-link]")) {
    const url = links[element.dataset.link];
    if (element instanceof HTMLInputElement) element.value = url;
    else element.href = url;
  }
}

// Buttons marked data-copy="ID" copy the value of the text box with that id.
export function enableCopyButtons(root) {
  for (const button of root.querySelectorAll("button[data-copy]")) {
    const field = document.getElementById(button.dataset.copy);
    const label = button.textContent;
    button.addEventListener("click", () => copyField(field, button, label));
  }
}

async function copyField(field, button, label) {
  let feedback = "Copied";
  try {
    await navigator.clipboard.writeText(field.value);
  } catch {
    // No clipboard (a page that is not https or localhost, or permission refused): select it for Ctrl+C.
    field.focus();
    field.select();
    feedback = "Press Ctrl+C";
  }
  button.textContent = feedback;
  setTimeout(() => {
    button.textContent = label;
  }, COPIED_FEEDBACK_MS);
}

// The show's scenes (the server's /scenes): a row of buttons that recall one on this page's stream, keys 1–9
// for the first nine, and a form that saves the stream's current params as a scene.

import { authHeaders } from "./access.js";

// Keys 1–9 recall scenes; these keep digits for themselves (typing, a select's type-ahead).
const TYPING_INPUT_TYPES = new Set(["text", "number", "search", "email", "url", "tel", "password"]);

class SceneError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// Expects the panel (hidden until a stream is attached), the row for the buttons, and the save form with its
// name box and button. `showError(code, message)` is the page's error banner.
export class SceneBar {
  constructor({ panel, row, form, nameInput, saveButton, showError }) {
    this.panel = panel;
    this.row = row;
    this.form = form;
    this.nameInput = nameInput;
    this.saveButton = saveButton;
    this.saveLabel = saveButton.textContent;
    this.showError = showError;
    this.scenes = []; // [{name, params}] in the server's order
    this.stream = null; // the stream that recalls and saves go to; null while none is attached
    this.params = null; // the stream's effective params, to mark the scenes they match
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.save(nameInput.value.trim());
    });
    nameInput.addEventListener("input", () => this.updateSaveLabel());
    document.addEventListener("keydown", (event) => this.onKey(event));
  }

  get names() {
    return this.scenes.map((scene) => scene.name);
  }

  // Scenes go to `stream` from now on; the list is read again, as another device may have saved one.
  attach(stream) {
    this.stream = stream;
    this.panel.hidden = false;
    this.updateEnabled();
    return this.load();
  }

  detach() {
    this.stream = null;
    this.updateEnabled();
  }

  // The stream's effective params (every params message): the scenes they match are marked as on.
  showParams(params) {
    this.params = params;
    for (const button of this.row.children) {
      const scene = this.scenes[Number(button.dataset.position) - 1];
      button.setAttribute("aria-current", String(Boolean(scene) && matches(scene.params, params)));
    }
  }

  async load() {
    try {
      const { scenes } = await request("GET", "/scenes");
      this.scenes = scenes;
    } catch (err) {
      this.showError(err.code, `Could not load the scenes: ${err.message}`);
      return;
    }
    this.render();
  }

  async recall(position) {
    const scene = this.scenes[position - 1];
    if (!scene || this.stream === null) return;
    try {
      // The server echoes the new params to every socket on the stream, this page's included.
      await request("POST", `/scenes/${encodeURIComponent(scene.name)}/recall?${streamQuery(this.stream)}`, {
        stream: this.stream,
      });
    } catch (err) {
      this.showError(err.code, `Could not recall scene ${scene.name}: ${err.message}`);
    }
  }

  async save(name) {
    if (this.stream === null) return;
    if (!name) {
      this.showError("bad_scene", "Name the scene before saving it.");
      this.nameInput.focus();
      return;
    }
    try {
      await request("PUT", `/scenes/${encodeURIComponent(name)}?${streamQuery(this.stream)}`, { stream: this.stream });
    } catch (err) {
      this.showError(err.code, `Could not save scene ${name}: ${err.message}`);
      return;
    }
    this.nameInput.value = "";
    this.updateSaveLabel();
    await this.load();
  }

  render() {
    this.row.replaceChildren(...this.scenes.map((scene, index) => this.sceneButton(scene, index + 1)));
    this.row.hidden = this.scenes.length === 0;
    this.updateEnabled();
    this.updateSaveLabel();
    if (this.params) this.showParams(this.params);
  }

  sceneButton(scene, position) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.position = String(position);
    button.dataset.scene = scene.name;
    button.textContent = `${position} ${scene.name}`;
    if (position <= 9) button.title = `Key ${position}`;
    button.addEventListener("click", () => this.recall(position));
    return button;
  }

  updateEnabled() {
    const detached = this.stream === null;
    for (const button of this.row.children) button.disabled = detached;
    this.nameInput.disabled = detached;
    this.saveButton.disabled = detached;
  }

  // Saving under a name that exists replaces that scene (and its file entry): the button says so.
  updateSaveLabel() {
    const replaces = this.names.includes(this.nameInput.value.trim());
    this.saveButton.textContent = replaces ? "Replace scene" : this.saveLabel;
  }

  onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat || event.isComposing) return;
    if (!/^[1-9]$/.test(event.key) || isTypingTarget(event.target)) return;
    if (this.stream === null || Number(event.key) > this.scenes.length) return;
    event.preventDefault();
    this.recall(Number(event.key));
  }
}

function isTypingTarget(element) {
  if (!(element instanceof HTMLElement)) return false;
  if (element.isContentEditable || element instanceof HTMLTextAreaElement || element instanceof HTMLSelectElement) {
    return true;
  }
  return element instanceof HTMLInputElement && TYPING_INPUT_TYPES.has(element.type);
}

// Every param the scene holds has the value the stream runs with.
function matches(sceneParams, params) {
  // By value: a scene's modulations are a list, never the same object as the stream's.
  return Object.entries(sceneParams).every(([name, value]) => JSON.stringify(params[name]) === JSON.stringify(value));
}

// The route's JSON answer; a SceneError with the server's code and words when it refuses.
async function request(method, path, body) {
  const init = { method, headers: authHeaders(), cache: "no-store" };
  if (body !== undefined) {
    init.headers = { ...init.headers, "Content-Type": "application/json" };
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new SceneError("connection", `the server did not answer (${err.message})`);
  }
  const answer = await response.json().catch(() => ({}));
  if (response.ok) return answer;
  // Refusals come as {code, message}, refused params as {errors: [{param, message}]}.
  const why = answer.message ?? answer.errors?.map((error) => error.message).join("; ") ?? `HTTP ${response.status}`;
  throw new SceneError(answer.code ?? "scenes", why);
}

// The stream also goes in the query: behind replicas, only the URL reaches the router that finds its replica.
function streamQuery(stream) {
  return new URLSearchParams({ stream }).toString();
}

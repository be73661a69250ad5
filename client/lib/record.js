// The Record button: starts and stops the stream's recording (POST and DELETE /streams/NAME/recording) and shows
// how long it has run, from the stats each second (any page or OSC may have started it) and a local clock between.

import { authHeaders } from "./access.js";

const TICK_MS = 250;

// Expects the button and the element that shows the time; `showError(code, message)` is the page's error banner.
export class RecordButton {
  constructor({ button, time, showError }) {
    this.button = button;
    this.time = time;
    this.showError = showError;
    this.stream = null; // the stream recorded; null while none is attached
    this.recording = null; // {id, dir, started, seconds} as the server last said, or null
    this.since = 0; // performance.now() at the recording's start, as the last word from the server places it
    this.busy = false; // a request is on its way: a second click would race it
    this.timer = null;
    button.addEventListener("click", () => this.toggle());
    this.render();
  }

  get state() {
    return this.recording;
  }

  attach(stream) {
    this.stream = stream;
    this.render();
  }

  detach() {
    this.stream = null;
    this.show(null);
  }

  // Every stats message carries the stream's recording (null when none runs).
  showStats(message) {
    if ("recording" in message) this.show(message.recording);
  }

  async toggle() {
    if (this.stream === null || this.busy) return;
    const starting = this.recording === null;
    this.busy = true;
    this.render();
    try {
      const path = `/streams/${encodeURIComponent(this.stream)}/recording`;
      const answer = await request(starting ? "POST" : "DELETE", path);
      this.show(starting ? { ...answer, seconds: 0 } : null);
    } catch (err) {
      // Already in the state asked for (another page, OSC): the next stats say which; nothing to undo.
      this.showError(err.code, `Could not ${starting ? "start" : "stop"} the recording: ${err.message}`);
    } finally {
      this.busy = false;
      this.render();
    }
  }

  show(recording) {
    this.recording = recording;
    if (recording) this.since = performance.now() - recording.seconds * 1000;
    if (recording && this.timer === null) {
      this.timer = setInterval(() => this.renderTime(), TICK_MS);
    } else if (!recording && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
    this.render();
  }

  render() {
    const on = this.recording !== null;
    this.button.disabled = this.stream === null || this.busy;
    this.button.textContent = on ? "Stop recording" : "Record";
    this.button.setAttribute("aria-pressed", String(on));
    this.button.title = on ? `Recording to ${this.recording.dir}` : "Record this stream (camera, output, changes)";
    this.time.hidden = !on;
    this.renderTime();
  }

  renderTime() {
    if (this.recording === null) return;
    const seconds = Math.max(0, Math.floor((performance.now() - this.since) / 1000));
    const minutes = Math.floor(seconds / 60);
    this.time.textContent = `● ${minutes}:${String(seconds % 60).padStart(2, "0")}`;
  }
}

class RecordError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

async function request(method, path) {
  let response;
  try {
    response = await fetch(path, { method, headers: authHeaders(), cache: "no-store" });
  } catch (err) {
    throw new RecordError("connection", `the server did not answer (${err.message})`);
  }
  const answer = await response.json().catch(() => ({}));
  if (response.ok) return answer;
  throw new RecordError(answer.code ?? "recording", answer.message ?? `HTTP ${response.status}`);
}

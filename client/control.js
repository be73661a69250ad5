// The control page (/control/NAME): the studio's controls, scenes and stats attached to a stream that publishes
// elsewhere, over /ws?stream=NAME&role=control. It waits while the stream does not exist, and attaches again
// after it ends.

import { streamNameFromPath } from "./lib/access.js";
import { Retry } from "./lib/backoff.js";
import { loadParamSchema, ParamControls } from "./lib/controls.js";
import { showStreamLinks } from "./lib/links.js";
import { ErrorBanner, StatusLight } from "./lib/notices.js";
import { RecordButton } from "./lib/record.js";
import { SceneBar } from "./lib/scenes.js";
import { STREAM_END_CODES, StreamSocket } from "./lib/socket.js";
import { StatsTable } from "./lib/stats.js";

const RETRY_FIRST_DELAY_MS = 1000;
const RETRY_MAX_DELAY_MS = 5000;
// Refusals that another try cannot change.
const FATAL_ERROR_CODES = new Set([
  "unauthorized",
  "forbidden_origin",
  "bad_stream_name",
  "bad_role",
  "controllers_full",
]);
// No stream to attach to (yet, or any more): on this page that is a wait, not an error.
const WAITING_CODES = new Set(["no_such_stream", "shutting_down", ...STREAM_END_CODES]);

const name = streamNameFromPath();
const STATUS_TEXT = {
  idle: "idle",
  connecting: "connecting…",
  waiting: `waiting for stream ${name}`,
  live: "attached",
  error: "error",
};

const ui = {
  status: document.getElementById("status"),
  controlsSet: document.getElementById("controls-set"),
  stats: document.getElementById("stats"),
  statsEmpty: document.getElementById("stats-empty"),
};

const app = { socket: null, lastError: null, attempts: 0 };
const banner = new ErrorBanner();
const status = new StatusLight(ui.status, STATUS_TEXT);
const stats = new StatsTable(ui.stats);
const controls = new ParamControls({
  prompt: document.getElementById("prompt"),
  promptRow: document.getElementById("prompt-row"),
  grid: document.getElementById("param-grid"),
  notes: document.getElementById("notes"),
  send: (params) => app.socket?.sendParams(params),
});
const scenes = new SceneBar({
  panel: document.getElementById("scenes"),
  row: document.getElementById("scene-row"),
  form: document.getElementById("scene-save"),
  nameInput: document.getElementById("scene-name"),
  saveButton: document.getElementById("scene-save-button"),
  showError: (code, message) => {
    app.lastError = { code, message };
    banner.show(code, message);
  },
});
const recorder = new RecordButton({
  button: document.getElementById("record"),
  time: document.getElementById("record-time"),
  showError: (code, message) => {
    app.lastError = { code, message };
    banner.show(code, message);
  },
});
const retry = new Retry(connect, { firstMs: RETRY_FIRST_DELAY_MS, maxMs: RETRY_MAX_DELAY_MS });

async function loadControls() {
  try {
    controls.build(await loadParamSchema());
  } catch (err) {
    app.lastError = { code: err.code ?? "schema", message: err.message };
    banner.show(app.lastError.code, err.message);
    return;
  }
  // The socket may have brought the stream's params before the controls existed.
  if (controls.lastParams) controls.apply(controls.lastParams);
}

function connect() {
  app.attempts += 1;
  if (status.state !== "waiting") status.set("connecting");
  const socket = new StreamSocket({
    stream: name,
    role: "control",
    handlers: {
      stream: () => current(socket) && attached(),
      params: (message) => current(socket) && showParams(message),
      stats: (message) => current(socket) && showStats(message),
      error: (message) => current(socket) && serverError(message),
      close: () => current(socket) && closed(socket),
    },
  });
  app.socket = socket;
}

function current(socket) {
  return socket === app.socket;
}

function attached() {
  retry.succeeded();
  ui.controlsSet.disabled = false;
  scenes.attach(name);
  recorder.attach(name);
  status.set("live");
  banner.dismissIf(new Set(["connection"]));
}

function showParams({ params = {}, notes = [] }) {
  controls.apply(params, notes);
  scenes.showParams(params);
}

function showStats(message) {
  stats.show(message);
  recorder.showStats(message);
  ui.statsEmpty.hidden = true;
}

function serverError({ code = "error", message }) {
  app.lastError = { code, message: message || code };
  if (!WAITING_CODES.has(code)) banner.show(code, message || code);
}

function closed(socket) {
  app.socket = null;
  ui.controlsSet.disabled = true;
  scenes.detach();
  recorder.detach();
  stats.clear();
  ui.statsEmpty.hidden = false;
  if (FATAL_ERROR_CODES.has(socket.error?.code)) {
    status.set("error");
    return;
  }
  if (!socket.opened && retry.failures === 0) {
    app.lastError = { code: "connection", message: `Cannot reach the server at ${location.host}; retrying.` };
    banner.show("connection", app.lastError.message);
  }
  status.set("waiting");
  retry.schedule();
}

window.lcmlive = {
  state: () => ({
    connected: Boolean(app.socket?.isOpen && app.socket.attached),
    streamName: name,
    lastParams: controls.lastParams,
    lastStats: stats.last,
    lastError: app.lastError,
    attempts: app.attempts,
    scenes: scenes.names,
    recording: recorder.state,
  }),
  setPrompt: (text) => controls.setPrompt(text),
};

document.title = `${name} · lcmlive control`;
showStreamLinks(document.body, name);
status.set("connecting");
loadControls();
connect();

// The studio page (/): publishes the camera (and with Sound on the microphone) as a named stream (/?stream=NAME,
// else the server names it), shows the stylised video with its stats and the stream's addresses (and with Hear on
// plays its sound), and steers it with controls from the schema and the show's scenes.

import { healthReport, serverIsHealthy, token } from "./lib/access.js";
import { Retry } from "./lib/backoff.js";
import {
  cameraErrorMessage,
  cameraIdOf,
  listDevices,
  microphoneIdOf,
  openCamera,
  openMicrophone,
  stopTracks,
} from "./lib/camera.js";
import { loadParamSchema, ParamControls } from "./lib/controls.js";
import { FrameCounter } from "./lib/frames.js";
import { enableCopyButtons, showStreamLinks } from "./lib/links.js";
import { ErrorBanner, StatusLight } from "./lib/notices.js";
import { RecordButton } from "./lib/record.js";
import { SceneBar } from "./lib/scenes.js";
import { PublishSession } from "./lib/signaling.js";
import { StatsTable } from "./lib/stats.js";

const RECONNECT_FIRST_DELAY_MS = 1000;
const RECONNECT_MAX_DELAY_MS = 10000;
// The server closes the socket right after these, so reconnecting would only repeat the refusal.
const FATAL_ERROR_CODES = new Set([
  "server_full",
  "unauthorized",
  "forbidden_origin",
  "stream_taken",
  "bad_stream_name",
]);
// Banners that a restored connection makes obsolete.
const CONNECTION_ERROR_CODES = new Set(["connection", "ice", "webrtc"]);
const STATUS_TEXT = {
  idle: "idle",
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  error: "error",
};

const ui = {
  start: byId("start"),
  stop: byId("stop"),
  camera: byId("camera"),
  sound: byId("sound"),
  microphone: byId("microphone"),
  hear: byId("hear"),
  status: byId("status"),
  inputVideo: byId("input-video"),
  outputVideo: byId("output-video"),
  outputPane: byId("output-pane"),
  controlPane: byId("control-pane"),
  controlVideo: byId("control-video"),
  showControl: byId("show-control"),
  showControlLabel: byId("show-control-label"),
  stats: byId("stats"),
  fullscreen: byId("fullscreen"),
  streamPanel: byId("stream-panel"),
  whepTokenNote: byId("whep-token-note"),
};

const app = {
  wantRunning: false,
  cameraStream: null,
  microphoneStream: null, // null when the run has no sound
  microphones: 0, // how many the browser lists: the picker shows from two
  session: null,
  // What the session receives: the stylised picture and, when the stream has sound, that sound (delayed with it).
  output: { picture: null, sound: null },
  // The name asked for in the URL, else the one the server gave the first session: later sessions (reconnects,
  // Stop then Start) ask for it again, so the addresses shared with OBS or a projector stay good.
  streamName: new URLSearchParams(location.search).get("stream") || null,
  controlnet: false,
};

const banner = new ErrorBanner();
const status = new StatusLight(ui.status, STATUS_TEXT);
const stats = new StatsTable(ui.stats);
const outputFrames = new FrameCounter(ui.outputVideo);
const controls = new ParamControls({
  prompt: byId("prompt"),
  promptRow: byId("prompt-row"),
  grid: byId("param-grid"),
  notes: byId("notes"),
  // Values changed while no session is open stay in the controls and go out with the next offer.
  send: (params) => app.session?.sendParams(params),
});
const scenes = new SceneBar({
  panel: byId("scenes"),
  row: byId("scene-row"),
  form: byId("scene-save"),
  nameInput: byId("scene-name"),
  saveButton: byId("scene-save-button"),
  showError: (code, message) => banner.show(code, message),
});
const recorder = new RecordButton({
  button: byId("record"),
  time: byId("record-time"),
  showError: (code, message) => banner.show(code, message),
});
const reconnect = new Retry(tryReconnect, { firstMs: RECONNECT_FIRST_DELAY_MS, maxMs: RECONNECT_MAX_DELAY_MS });

function byId(id) {
  return document.getElementById(id);
}

function updateButtons() {
  ui.start.disabled = app.wantRunning;
  ui.stop.disabled = !app.wantRunning;
  // The offer carries the microphone or not: the choice is made before Start and holds until Stop.
  ui.sound.disabled = app.wantRunning;
  updateSoundControls();
}

function updateSoundControls() {
  ui.microphone.hidden = !(ui.sound.checked && app.microphones > 1);
  ui.hear.disabled = !ui.sound.checked;
  if (!ui.sound.checked) ui.hear.checked = false;
  // Unmuting needs no new offer: a session with sound always receives it back, and Hear only plays it.
  ui.outputVideo.muted = !ui.hear.checked;
}

// ---- parameter controls ----

async function loadControls() {
  try {
    controls.build(await loadParamSchema());
  } catch (err) {
    banner.show(err.code ?? "schema", err.message);
    return;
  }
  // ControlNets on the server (a scale per kind): offer to show the control image they condition on (the Canny
  // map, the depth map: the largest scale's, or control_view's), on a second video track.
  app.controlnet = controls.namesStartingWith("controlnet_scale_").length > 0;
  ui.showControlLabel.hidden = !app.controlnet;
  updateControlPane();
}

function updateControlPane() {
  ui.controlPane.hidden = !(app.controlnet && ui.showControl.checked);
}

// ---- the stream's name and addresses ----

function showStream({ name, urls }) {
  app.streamName = name;
  showStreamLinks(ui.streamPanel, name, urls);
  ui.whepTokenNote.hidden = !token;
  ui.streamPanel.hidden = false;
  document.title = `lcmlive · ${name}`;
  // A reload publishes under the same name again.
  const url = new URL(location.href);
  if (url.searchParams.get("stream") !== name) {
    url.searchParams.set("stream", name);
    history.replaceState(null, "", url);
  }
}

function errorText(code, message) {
  if (code === "stream_taken") {
    const hint = "Another page or OBS sends under this name; open this page as /?stream=another-name to use another.";
    return `${message}. ${hint}`;
  }
  return message || code;
}

// ---- camera ----

function showCamera(stream) {
  app.cameraStream = stream;
  ui.inputVideo.srcObject = stream;
  stream.getVideoTracks()[0].addEventListener("ended", () => {
    if (app.cameraStream !== stream) return;
    banner.show("camera", "The camera stopped (unplugged or taken by another application).");
  });
}

function showMicrophone(stream) {
  app.microphoneStream = stream;
  stream?.getAudioTracks()[0].addEventListener("ended", () => {
    if (app.microphoneStream !== stream) return;
    banner.show("microphone", "The microphone stopped (unplugged or taken by another application).");
  });
}

function releaseCamera() {
  stopTracks(app.cameraStream);
  stopTracks(app.microphoneStream);
  app.cameraStream = null;
  app.microphoneStream = null;
  ui.inputVideo.srcObject = null;
}

async function refreshDeviceLists() {
  try {
    await listDevices(ui.camera, "videoinput", cameraIdOf(app.cameraStream) ?? ui.camera.value);
    const microphone = microphoneIdOf(app.microphoneStream) ?? ui.microphone.value;
    app.microphones = await listDevices(ui.microphone, "audioinput", microphone);
    updateSoundControls();
  } catch (err) {
    banner.show("camera", `Could not list cameras and microphones: ${err.message}`);
  }
}

// While idle the choice is simply used by the next Start; while running the new track replaces the old one
// on the live sender, so the session and its peer connection survive the swap.
async function switchCamera() {
  if (!app.cameraStream) return;
  let stream = null;
  try {
    stream = await openCamera(ui.camera.value);
    if (!app.cameraStream) throw new DOMException("stopped while switching", "AbortError");
    await app.session?.replaceTrack(stream.getVideoTracks()[0]);
    stopTracks(app.cameraStream);
    showCamera(stream);
  } catch (err) {
    stopTracks(stream);
    if (app.cameraStream) {
      banner.show("camera", cameraErrorMessage(err));
      ui.camera.value = cameraIdOf(app.cameraStream) ?? "";
    }
  }
}

// Like the camera: the next Start uses the choice, and a running stream with sound swaps the track on its sender.
async function switchMicrophone() {
  if (!app.microphoneStream) return;
  let stream = null;
  try {
    stream = await openMicrophone(ui.microphone.value);
    if (!app.microphoneStream) throw new DOMException("stopped while switching", "AbortError");
    await app.session?.replaceMicrophone(stream.getAudioTracks()[0]);
    stopTracks(app.microphoneStream);
    showMicrophone(stream);
  } catch (err) {
    stopTracks(stream);
    if (app.microphoneStream) {
      banner.show("microphone", cameraErrorMessage(err, "microphone"));
      ui.microphone.value = microphoneIdOf(app.microphoneStream) ?? "";
    }
  }
}

// ---- the publishing session ----

function openSession() {
  status.set("connecting");
  const session = new PublishSession({
    stream: app.streamName,
    cameraTrack: app.cameraStream.getVideoTracks()[0],
    microphoneTrack: app.microphoneStream?.getAudioTracks()[0] ?? null,
    withControlMap: app.controlnet,
    params: () => controls.values(),
    handlers: {
      stream: (message) => current(session) && showStream(message),
      params: (message) => current(session) && showParams(message),
      stats: (message) => current(session) && showStats(message),
      error: ({ code = "error", message }) => current(session) && banner.show(code, errorText(code, message)),
      // A stream of its own per video track: the server sends all tracks in one MediaStream, and a <video>
      // given that stream would play its first video track in both places.
      picture: (track) => current(session) && showOutput({ picture: track }),
      sound: (track) => current(session) && showOutput({ sound: track }),
      controlMap: (track) => {
        if (current(session)) ui.controlVideo.srcObject = new MediaStream([track]);
      },
      peerState: (state) => current(session) && state === "connected" && markLive(),
      close: (event) => current(session) && sessionClosed(session, event),
    },
  });
  app.session = session;
}

function current(session) {
  return session === app.session;
}

function showParams({ params = {}, notes = [] }) {
  controls.apply(params, notes);
  scenes.showParams(params);
}

function showStats(message) {
  stats.show(message);
  recorder.showStats(message);
}

// Publishing: the peer connection is up, so the stream exists and scenes can be recalled on it (and it recorded).
function markLive() {
  reconnect.succeeded();
  status.set("live");
  banner.dismissIf(CONNECTION_ERROR_CODES);
  scenes.attach(app.streamName);
  recorder.attach(app.streamName);
}

// The picture with its sound on one element, so that they play in step (muted unless Hear is on).
function showOutput(tracks) {
  app.output = { ...app.output, ...tracks };
  const { picture, sound } = app.output;
  ui.outputVideo.srcObject = new MediaStream([picture, sound].filter(Boolean));
}

// The session is gone: its pictures, its stats, and the stream that scenes went to.
function clearOutput() {
  app.output = { picture: null, sound: null };
  ui.outputVideo.srcObject = null;
  ui.controlVideo.srcObject = null;
  stats.clear();
  scenes.detach();
  recorder.detach();
}

function sessionClosed(session, event) {
  app.session = null;
  clearOutput();
  if (!app.wantRunning) return;
  const { error, failure } = session.socket;
  if (FATAL_ERROR_CODES.has(error?.code)) {
    endRun("error");
    return;
  }
  // A specific failure is always worth showing; "connection lost" only once per outage, not on every retry.
  if (failure) banner.show(failure.code, failure.message);
  else if (reconnect.failures === 0) banner.show("connection", connectionLostMessage(session.socket, event));
  scheduleReconnect();
}

function connectionLostMessage(socket, event) {
  if (!socket.opened) return `Cannot reach the server at ${location.host}; retrying.`;
  const why = socket.error?.message ?? event.reason;
  return `Lost the connection to the server${why ? ` (${why})` : ""}; reconnecting.`;
}

// ---- reconnect with backoff, waiting for /health before opening a new session ----

function scheduleReconnect() {
  status.set("reconnecting");
  reconnect.schedule();
}

async function tryReconnect() {
  const healthy = await serverIsHealthy();
  if (!app.wantRunning || app.session) return;
  if (healthy) openSession();
  else scheduleReconnect();
}

// ---- start / stop ----

async function start() {
  if (app.wantRunning) return;
  app.wantRunning = true;
  updateButtons();
  status.set("connecting");
  if (!controls.built) await loadControls();
  const sound = ui.sound.checked;
  let stream;
  try {
    stream = await openCamera(ui.camera.value, { sound, microphoneId: ui.microphone.value });
  } catch (err) {
    banner.show("camera", cameraErrorMessage(err, sound ? "camera and microphone" : "camera"));
    endRun("error");
    return;
  }
  if (!app.wantRunning) {
    stopTracks(stream);
    return;
  }
  // Apart, so that either can be swapped (and its old track stopped) without the other.
  showCamera(new MediaStream(stream.getVideoTracks()));
  showMicrophone(sound ? new MediaStream(stream.getAudioTracks()) : null);
  refreshDeviceLists();
  openSession();
}

function stop() {
  endRun("idle");
}

function endRun(state) {
  app.wantRunning = false;
  reconnect.cancel();
  reconnect.succeeded();
  const session = app.session;
  app.session = null;
  session?.close();
  clearOutput();
  releaseCamera();
  status.set(state);
  updateButtons();
}

// ---- full screen ----

function toggleFullscreen() {
  if (document.fullscreenElement) {
    document.exitFullscreen();
    return;
  }
  ui.outputPane
    .requestFullscreen()
    .catch((err) => banner.show("fullscreen", `Full screen was refused: ${err.message}`));
}

function updateFullscreenButton() {
  const isFullscreen = document.fullscreenElement === ui.outputPane;
  ui.fullscreen.textContent = isFullscreen ? "Exit full screen" : "Full screen";
  ui.fullscreen.setAttribute("aria-pressed", String(isFullscreen));
}

// ---- test hook for automated browser tests ----

function exposeTestHook() {
  window.lcmlive = {
    state: () => ({
      connected: Boolean(app.session?.connected),
      running: app.wantRunning,
      streamName: app.streamName,
      lastStats: stats.last,
      lastParams: controls.lastParams,
      lastError: banner.last,
      outputFrames: outputFrames.count,
      sound: {
        microphone: app.microphoneStream?.getAudioTracks()[0]?.label ?? null,
        received: app.output.sound !== null,
        muted: ui.outputVideo.muted,
        microphones: app.microphones,
      },
      scenes: scenes.names,
      recording: recorder.state,
    }),
    start,
    stop,
    setPrompt: (text) => controls.setPrompt(text),
  };
}

// Which model draws the picture: the offline toy says what it is and is not. With --compile, "compiling" until
// the server has made its graphs (minutes; the first frames wait for it), asked again every 2 s.
async function showModelNote() {
  const health = await healthReport();
  if (!health?.model) return;
  const note = byId("model-note");
  const compiling = health.compile === "compiling";
  note.textContent = `Model: ${health.model} on ${health.device}` +
    (health.model_description ? ` — ${health.model_description}` : "") +
    (health.version ? ` · lcmlive ${health.version}` : "") +
    (compiling ? ` · compiling (${health.compiled_sizes.length} sizes ready); the first frames wait for it` : "");
  note.hidden = false;
  if (compiling) setTimeout(showModelNote, 2000);
}

function init() {
  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);
  ui.camera.addEventListener("change", switchCamera);
  ui.microphone.addEventListener("change", switchMicrophone);
  ui.sound.addEventListener("change", updateSoundControls);
  ui.hear.addEventListener("change", updateSoundControls);
  ui.fullscreen.addEventListener("click", toggleFullscreen);
  ui.showControl.addEventListener("change", updateControlPane);
  ui.outputVideo.addEventListener("dblclick", toggleFullscreen);
  document.addEventListener("fullscreenchange", updateFullscreenButton);
  navigator.mediaDevices?.addEventListener("devicechange", refreshDeviceLists);
  enableCopyButtons(ui.streamPanel);
  // A name from the URL is known before the first session: its addresses can be shared before Start.
  if (app.streamName) showStream({ name: app.streamName });
  status.set("idle");
  updateButtons();
  exposeTestHook();
  refreshDeviceLists();
  loadControls();
  showModelNote();
}

init();

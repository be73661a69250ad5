// lcmlive browser client: camera out and stylised video back over WebRTC, params and stats over the /ws socket.

const ICE_GATHERING_TIMEOUT_MS = 3000;
const TEXT_DEBOUNCE_MS = 400;
const SLIDER_DEBOUNCE_MS = 150;
const RECONNECT_FIRST_DELAY_MS = 1000;
const RECONNECT_MAX_DELAY_MS = 10000;
// Above this many positions a slider cannot hit a chosen value (think seed), so a number box is used instead.
const MAX_SLIDER_POSITIONS = 1000;
// The server closes the socket right after these, so reconnecting would only repeat the refusal.
const FATAL_ERROR_CODES = new Set(["server_full", "unauthorized"]);
// Banners that a restored connection makes obsolete.
const CONNECTION_ERROR_CODES = new Set(["connection", "ice", "webrtc"]);
const STATUS_TEXT = {
  idle: "idle",
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  error: "error",
};
// The stats shown over the video, in display order; the rest of each message (totals) stays in lastStats.
const STAT_LABELS = {
  fps_in: "fps in",
  fps_out: "fps out",
  model_ms: "model ms",
  latency_ms: "latency ms",
  size: "size",
  dropped: "dropped",
  skipped: "skipped",
  state: "state",
};

const ui = {
  start: byId("start"),
  stop: byId("stop"),
  camera: byId("camera"),
  status: byId("status"),
  error: byId("error"),
  errorMessage: byId("error-message"),
  errorDismiss: byId("error-dismiss"),
  inputVideo: byId("input-video"),
  outputVideo: byId("output-video"),
  outputPane: byId("output-pane"),
  controlPane: byId("control-pane"),
  controlVideo: byId("control-video"),
  showCanny: byId("show-canny"),
  showCannyLabel: byId("show-canny-label"),
  stats: byId("stats"),
  fullscreen: byId("fullscreen"),
  prompt: byId("prompt"),
  promptRow: byId("prompt-row"),
  paramGrid: byId("param-grid"),
  notes: byId("notes"),
};

const token = new URLSearchParams(location.search).get("token");

const app = {
  wantRunning: false,
  schemaLoaded: false,
  cameraStream: null,
  session: null,
  reconnectAttempt: 0,
  reconnectTimer: null,
  lastStats: null,
  lastParams: null,
  lastError: null,
  outputFrames: 0,
  controlnet: false,
};

// Param name -> control built from the schema.
const controls = new Map();

function byId(id) {
  return document.getElementById(id);
}

// ---- status, errors, buttons ----

function setStatus(state) {
  ui.status.dataset.state = state;
  ui.status.textContent = STATUS_TEXT[state];
}

function showError(code, message) {
  app.lastError = { code, message };
  ui.error.dataset.code = code;
  ui.errorMessage.textContent = message;
  ui.error.hidden = false;
}

function dismissError() {
  ui.error.hidden = true;
}

function dismissConnectionError() {
  if (CONNECTION_ERROR_CODES.has(ui.error.dataset.code)) dismissError();
}

function updateButtons() {
  ui.start.disabled = app.wantRunning;
  ui.stop.disabled = !app.wantRunning;
}

// ---- parameter controls built from the server's JSON schema ----

function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function loadParamSchema() {
  try {
    const response = await fetch("/params/schema", { headers: authHeaders() });
    if (response.status === 401) {
      const refusal = await response.json();
      showError(refusal.code, refusal.message);
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    buildControls(await response.json());
  } catch (err) {
    showError("schema", `Could not load the parameter list (${err.message}); the server's defaults apply.`);
  }
}

function buildControls(schema) {
  controls.clear();
  ui.paramGrid.replaceChildren();
  for (const [name, paramSchema] of Object.entries(schema.properties ?? {})) {
    // The prompt is the one parameter people change all the time, so it gets the big box above the grid.
    const widget = name === "prompt" ? textWidget(ui.prompt) : createWidget(name, paramSchema);
    if (typeof paramSchema.maxLength === "number") widget.input.maxLength = paramSchema.maxLength;
    const control = createParamControl(name, widget);
    if (paramSchema.default !== undefined) control.write(paramSchema.default);
    controls.set(name, control);
  }
  ui.promptRow.hidden = !controls.has("prompt");
  // A ControlNet on the server: offer to show the Canny map it conditions on, on a second video track.
  app.controlnet = controls.has("controlnet_scale");
  ui.showCannyLabel.hidden = !app.controlnet;
  updateControlPane();
  app.schemaLoaded = true;
}

function createWidget(name, schema) {
  const widget = widgetForSchema(schema);
  widget.input.id = `param-${name}`;
  widget.input.name = name;
  widget.input.dataset.param = name;
  ui.paramGrid.append(fieldFor(name, schema, widget));
  return widget;
}

function widgetForSchema(schema) {
  if (Array.isArray(schema.enum)) return selectWidget(schema.enum);
  if (schema.type === "boolean") return checkboxWidget();
  if (schema.type === "number" || schema.type === "integer") {
    return sliderStep(schema) === null ? numberWidget(schema) : sliderWidget(schema);
  }
  const input = document.createElement("input");
  input.type = "text";
  return textWidget(input);
}

function fieldFor(name, schema, widget) {
  const label = document.createElement("label");
  label.htmlFor = widget.input.id;
  label.textContent = schema.title ?? name.replaceAll("_", " ");
  if (schema.description) label.title = schema.description;
  const head = document.createElement("div");
  head.className = "field-head";
  head.append(label);
  if (widget.readout) head.append(widget.readout);
  const field = document.createElement("div");
  field.className = "field";
  field.append(head, widget.input);
  return field;
}

// A schema parameter bound to its widget. An edit counts as unsent while the widget shows something other
// than what was last sent or received, so the server's full-set echoes never overwrite what is being typed.
function createParamControl(name, widget) {
  let committed = widget.read();
  let timer = null;
  const control = {
    read: widget.read,
    hasUnsentEdit: () => widget.read() !== committed,
    write(value) {
      widget.write(value);
      committed = widget.read();
    },
    send() {
      clearTimeout(timer);
      timer = null;
      const value = widget.read();
      if (value === undefined) return;
      committed = value;
      sendParams({ [name]: value });
    },
    sendAfter(delayMs) {
      clearTimeout(timer);
      timer = setTimeout(control.send, delayMs);
    },
    flush() {
      if (timer !== null) control.send();
    },
  };
  widget.listen(control);
  return control;
}

function textWidget(input) {
  return {
    input,
    read: () => input.value,
    write: (value) => {
      input.value = String(value);
    },
    listen(control) {
      input.addEventListener("input", () => control.sendAfter(TEXT_DEBOUNCE_MS));
      input.addEventListener("keydown", (event) => {
        if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
        event.preventDefault();
        control.send();
      });
    },
  };
}

function selectWidget(values) {
  const select = document.createElement("select");
  select.append(...values.map((value) => new Option(String(value))));
  return {
    input: select,
    // Reading by index keeps the schema's own value type (a number enum stays a number).
    read: () => values[select.selectedIndex],
    write: (value) => {
      const index = values.indexOf(value);
      if (index >= 0) select.selectedIndex = index;
    },
    listen: (control) => select.addEventListener("change", control.send),
  };
}

function checkboxWidget() {
  const checkbox = document.createElement("input");
  checkbox.type = "checkbox";
  return {
    input: checkbox,
    read: () => checkbox.checked,
    write: (value) => {
      checkbox.checked = Boolean(value);
    },
    listen: (control) => checkbox.addEventListener("change", control.send),
  };
}

// The slider step, or null when the schema gives no usable slider (no range, or too many positions).
function sliderStep(schema) {
  const { minimum, maximum } = schema;
  if (typeof minimum !== "number" || typeof maximum !== "number" || maximum <= minimum) return null;
  const range = maximum - minimum;
  // Without multipleOf a number slider gets the power of ten nearest to a hundredth of its range.
  const step = schema.multipleOf ?? (schema.type === "integer" ? 1 : 10 ** Math.round(Math.log10(range / 100)));
  return range / step <= MAX_SLIDER_POSITIONS ? step : null;
}

function decimalsOf(step) {
  return (String(step).split(".")[1] ?? "").length;
}

function sliderWidget(schema) {
  const slider = document.createElement("input");
  slider.type = "range";
  slider.min = String(schema.minimum);
  slider.max = String(schema.maximum);
  const step = sliderStep(schema);
  slider.step = String(step);
  const readout = document.createElement("output");
  const showValue = () => {
    readout.textContent = Number(slider.value).toFixed(decimalsOf(step));
  };
  showValue();
  return {
    input: slider,
    readout,
    read: () => Number(slider.value),
    write: (value) => {
      slider.value = String(value);
      showValue();
    },
    listen(control) {
      slider.addEventListener("input", () => {
        showValue();
        control.sendAfter(SLIDER_DEBOUNCE_MS);
      });
      slider.addEventListener("change", control.flush);
    },
  };
}

function numberWidget(schema) {
  const input = document.createElement("input");
  input.type = "number";
  if (typeof schema.minimum === "number") input.min = String(schema.minimum);
  if (typeof schema.maximum === "number") input.max = String(schema.maximum);
  input.step = String(schema.multipleOf ?? (schema.type === "integer" ? 1 : "any"));
  return {
    input,
    // An empty or unparsable box reads as "no value", so nothing is sent for it.
    read: () => (input.value === "" ? undefined : Number(input.value)),
    write: (value) => {
      input.value = String(value);
    },
    listen: (control) => input.addEventListener("change", control.send),
  };
}

function currentParamValues() {
  const values = {};
  for (const [name, control] of controls) {
    const value = control.read();
    if (value !== undefined) values[name] = value;
  }
  return values;
}

function applyServerParams(params, notes) {
  app.lastParams = params;
  for (const [name, value] of Object.entries(params)) {
    const control = controls.get(name);
    if (control && !control.hasUnsentEdit()) control.write(value);
  }
  ui.notes.replaceChildren(...notes.map((note) => listItem(note)));
}

function listItem(text) {
  const item = document.createElement("li");
  item.textContent = text;
  return item;
}

// ---- stats overlay ----

function showStats(message) {
  app.lastStats = message;
  ui.stats.replaceChildren(...statRows(message).flatMap(([label, value]) => statCells(label, value)));
}

function statRows(message) {
  const { width, height, ...fields } = message;
  delete fields.type;
  if (width !== undefined || height !== undefined) fields.size = `${width ?? "?"}×${height ?? "?"}`;
  return Object.keys(STAT_LABELS)
    .filter((name) => name in fields)
    .map((name) => [STAT_LABELS[name], formatStat(fields[name])]);
}

function formatStat(value) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(1);
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function statCells(label, value) {
  const labelCell = document.createElement("span");
  labelCell.textContent = label;
  const valueCell = document.createElement("span");
  valueCell.className = "stat-value";
  valueCell.textContent = value;
  return [labelCell, valueCell];
}

function clearOutput() {
  ui.outputVideo.srcObject = null;
  ui.controlVideo.srcObject = null;
  ui.stats.replaceChildren();
}

// ---- camera ----

function cameraConstraints(deviceId) {
  const video = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } };
  if (deviceId) video.deviceId = { exact: deviceId };
  return { audio: false, video };
}

function cameraErrorMessage(err) {
  switch (err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Camera permission was denied. Allow the camera for this page, then press Start again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No camera found (or the chosen camera is gone).";
    case "NotReadableError":
    case "AbortError":
      return "The camera could not be opened; another application may be using it.";
    default:
      return `Could not open the camera: ${err.message}`;
  }
}

async function openCamera(deviceId) {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("this page needs https (or localhost) for camera access");
  }
  return navigator.mediaDevices.getUserMedia(cameraConstraints(deviceId));
}

function showCamera(stream) {
  app.cameraStream = stream;
  ui.inputVideo.srcObject = stream;
  const track = stream.getVideoTracks()[0];
  track.addEventListener("ended", () => {
    if (app.cameraStream === stream) showError("camera", "The camera stopped (unplugged or taken by another application).");
  });
}

function stopTracks(stream) {
  stream?.getTracks().forEach((track) => track.stop());
}

function releaseCamera() {
  stopTracks(app.cameraStream);
  app.cameraStream = null;
  ui.inputVideo.srcObject = null;
}

function activeCameraId() {
  return app.cameraStream?.getVideoTracks()[0]?.getSettings().deviceId;
}

// Labels (and in Firefox real ids) only appear once camera permission is granted, so this runs again after it.
async function refreshCameraList() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  try {
    const devices = await navigator.mediaDevices.enumerateDevices();
    const cameras = devices.filter((device) => device.kind === "videoinput");
    const wanted = activeCameraId() ?? ui.camera.value;
    ui.camera.replaceChildren(
      ...cameras.map((camera, index) => new Option(camera.label || `Camera ${index + 1}`, camera.deviceId)),
    );
    if (cameras.some((camera) => camera.deviceId === wanted)) ui.camera.value = wanted;
    ui.camera.disabled = cameras.length === 0;
  } catch (err) {
    showError("camera", `Could not list cameras: ${err.message}`);
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
    await app.session?.sender?.replaceTrack(stream.getVideoTracks()[0]);
    stopTracks(app.cameraStream);
    showCamera(stream);
  } catch (err) {
    stopTracks(stream);
    if (app.cameraStream) {
      showError("camera", cameraErrorMessage(err));
      ui.camera.value = activeCameraId() ?? "";
    }
  }
}

// ---- session: one WebSocket plus one peer connection; it ends when the socket closes ----

function webSocketUrl() {
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (token) url.searchParams.set("token", token);
  return url.href;
}

function sendMessage(session, message) {
  if (session?.ws.readyState === WebSocket.OPEN) session.ws.send(JSON.stringify(message));
}

// Values changed while no socket is open stay in the controls and go out with the next offer.
function sendParams(params) {
  sendMessage(app.session, { type: "params", params });
}

function openSession() {
  const session = { ws: new WebSocket(webSocketUrl()), pc: null, sender: null, opened: false, fatal: false, failure: null };
  app.session = session;
  setStatus("connecting");
  session.ws.addEventListener("open", () => {
    session.opened = true;
    negotiate(session).catch((err) => failSession(session, "webrtc", `Could not set up the video connection: ${err.message}`));
  });
  session.ws.addEventListener("message", (event) => handleServerMessage(session, event.data));
  session.ws.addEventListener("close", (event) => handleSocketClosed(session, event));
}

// The server (aiortc) does not take trickled candidates, so the offer is sent only once gathering is done.
async function negotiate(session) {
  const pc = new RTCPeerConnection();
  session.pc = pc;
  pc.addEventListener("track", (event) => showTrack(session, event));
  pc.addEventListener("connectionstatechange", () => handlePeerState(session));
  const transceiver = pc.addTransceiver(app.cameraStream.getVideoTracks()[0], { direction: "sendrecv" });
  session.sender = transceiver.sender;
  session.controlTransceiver = app.controlnet ? pc.addTransceiver("video", { direction: "recvonly" }) : null;
  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringComplete(pc, ICE_GATHERING_TIMEOUT_MS);
  sendMessage(session, { type: "offer", sdp: pc.localDescription.sdp });
  sendMessage(session, { type: "params", params: currentParamValues() });
}

// Resolves when gathering completes, or after the timeout with whatever candidates were found by then.
function iceGatheringComplete(pc, timeoutMs) {
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", onChange);
      resolve();
    };
    const onChange = () => {
      if (pc.iceGatheringState === "complete") finish();
    };
    const timer = setTimeout(finish, timeoutMs);
    pc.addEventListener("icegatheringstatechange", onChange);
    onChange();
  });
}

// The first video track is the stylised output; a second one, when asked for, is the Canny map.
function showTrack(session, event) {
  // A stream of its own per track: the server sends both tracks in one MediaStream, and a <video> given that
  // stream would play its first video track in both places.
  const stream = new MediaStream([event.track]);
  const isControl = session.controlTransceiver !== null && event.transceiver === session.controlTransceiver;
  (isControl ? ui.controlVideo : ui.outputVideo).srcObject = stream;
}

function updateControlPane() {
  ui.controlPane.hidden = !(app.controlnet && ui.showCanny.checked);
}

function handlePeerState(session) {
  if (session !== app.session) return;
  const state = session.pc.connectionState;
  if (state === "connected") {
    app.reconnectAttempt = 0;
    setStatus("live");
    dismissConnectionError();
  } else if (state === "failed") {
    failSession(session, "ice", "The video connection failed (ICE): the server may not be reachable over UDP.");
  }
}

// Closing the socket ends the session; the close handler then decides whether to reconnect.
function failSession(session, code, message) {
  session.failure = { code, message };
  session.ws.close();
}

function handleServerMessage(session, data) {
  if (session !== app.session) return;
  let message;
  try {
    message = JSON.parse(data);
  } catch {
    showError("protocol", "The server sent a message that is not JSON.");
    return;
  }
  switch (message.type) {
    case "answer":
      session.pc
        ?.setRemoteDescription({ type: "answer", sdp: message.sdp })
        .catch((err) => failSession(session, "webrtc", `The server's answer was rejected: ${err.message}`));
      break;
    case "params":
      applyServerParams(message.params ?? {}, message.notes ?? []);
      break;
    case "stats":
      showStats(message);
      break;
    case "error":
      handleServerError(session, message);
      break;
    default:
      // Other types come from a newer server; ignoring them keeps this page working against it.
      break;
  }
}

function handleServerError(session, { code = "error", message }) {
  if (FATAL_ERROR_CODES.has(code)) session.fatal = true;
  showError(code, message || code);
}

function handleSocketClosed(session, event) {
  if (session !== app.session) return;
  app.session = null;
  session.pc?.close();
  clearOutput();
  if (!app.wantRunning) return;
  if (session.fatal) {
    endRun("error");
    return;
  }
  // A specific failure is always worth showing; "connection lost" only once per outage, not on every retry.
  if (session.failure) showError(session.failure.code, session.failure.message);
  else if (app.reconnectAttempt === 0) showError("connection", connectionLostMessage(session, event));
  scheduleReconnect();
}

function connectionLostMessage(session, event) {
  if (!session.opened) return `Cannot reach the server at ${location.host}; retrying.`;
  const reason = event.reason ? `: ${event.reason}` : "";
  return `Lost the connection to the server${reason}; reconnecting.`;
}

// ---- reconnect with backoff, waiting for /health before opening a new session ----

function scheduleReconnect() {
  const delay = Math.min(RECONNECT_FIRST_DELAY_MS * 2 ** app.reconnectAttempt, RECONNECT_MAX_DELAY_MS);
  app.reconnectAttempt += 1;
  setStatus("reconnecting");
  app.reconnectTimer = setTimeout(tryReconnect, delay);
}

async function tryReconnect() {
  app.reconnectTimer = null;
  const healthy = await serverIsHealthy();
  if (!app.wantRunning) return;
  if (healthy) openSession();
  else scheduleReconnect();
}

async function serverIsHealthy() {
  try {
    const response = await fetch("/health", { headers: authHeaders(), cache: "no-store" });
    return response.ok && (await response.json()).status === "ok";
  } catch {
    return false;
  }
}

// ---- start / stop ----

async function start() {
  if (app.wantRunning) return;
  app.wantRunning = true;
  updateButtons();
  setStatus("connecting");
  if (!app.schemaLoaded) await loadParamSchema();
  let stream;
  try {
    stream = await openCamera(ui.camera.value);
  } catch (err) {
    showError("camera", cameraErrorMessage(err));
    endRun("error");
    return;
  }
  if (!app.wantRunning) {
    stopTracks(stream);
    return;
  }
  showCamera(stream);
  refreshCameraList();
  openSession();
}

function stop() {
  endRun("idle");
}

function endRun(status) {
  app.wantRunning = false;
  clearTimeout(app.reconnectTimer);
  app.reconnectTimer = null;
  app.reconnectAttempt = 0;
  const session = app.session;
  app.session = null;
  if (session) {
    session.pc?.close();
    session.ws.close(1000, "stopped");
  }
  clearOutput();
  releaseCamera();
  setStatus(status);
  updateButtons();
}

// ---- full screen and frame counting ----

function toggleFullscreen() {
  if (document.fullscreenElement) {
    document.exitFullscreen();
    return;
  }
  ui.outputPane.requestFullscreen().catch((err) => showError("fullscreen", `Full screen was refused: ${err.message}`));
}

function updateFullscreenButton() {
  const isFullscreen = document.fullscreenElement === ui.outputPane;
  ui.fullscreen.textContent = isFullscreen ? "Exit full screen" : "Full screen";
  ui.fullscreen.setAttribute("aria-pressed", String(isFullscreen));
}

const canCountPresentedFrames = "requestVideoFrameCallback" in HTMLVideoElement.prototype;

function countOutputFrames() {
  const onFrame = () => {
    app.outputFrames += 1;
    ui.outputVideo.requestVideoFrameCallback(onFrame);
  };
  ui.outputVideo.requestVideoFrameCallback(onFrame);
}

function outputFrameCount() {
  return canCountPresentedFrames ? app.outputFrames : ui.outputVideo.getVideoPlaybackQuality().totalVideoFrames;
}

// ---- test hook for automated browser tests ----

function isConnected() {
  return app.session?.ws.readyState === WebSocket.OPEN && app.session.pc?.connectionState === "connected";
}

function setPrompt(text) {
  ui.prompt.value = text;
  controls.get("prompt")?.send();
}

function exposeTestHook() {
  window.lcmlive = {
    state: () => ({
      connected: isConnected(),
      running: app.wantRunning,
      lastStats: app.lastStats,
      lastParams: app.lastParams,
      lastError: app.lastError,
      outputFrames: outputFrameCount(),
    }),
    start,
    stop,
    setPrompt,
  };
}

function init() {
  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);
  ui.camera.addEventListener("change", switchCamera);
  ui.errorDismiss.addEventListener("click", dismissError);
  ui.fullscreen.addEventListener("click", toggleFullscreen);
  ui.showCanny.addEventListener("change", updateControlPane);
  ui.outputVideo.addEventListener("dblclick", toggleFullscreen);
  document.addEventListener("fullscreenchange", updateFullscreenButton);
  navigator.mediaDevices?.addEventListener("devicechange", refreshCameraList);
  if (canCountPresentedFrames) countOutputFrames();
  setStatus("idle");
  updateButtons();
  exposeTestHook();
  refreshCameraList();
  loadParamSchema();
}

init();

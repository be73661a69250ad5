// The camera and, with Sound on, the microphone: opening them, naming what went wrong, and the lists of devices
// to choose from.

const VIDEO = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } };
// The stream's sound is the show's (music, a room, a voice) and its level drives the picture: a call's processing
// would gate quiet passages, ride the level and smear music. Without an echo canceller, Hear needs headphones.
const AUDIO = { echoCancellation: false, noiseSuppression: false, autoGainControl: false };

function withDevice(constraints, deviceId) {
  return deviceId ? { ...constraints, deviceId: { exact: deviceId } } : constraints;
}

function getUserMedia(constraints) {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("this page needs https (or localhost) for camera access");
  }
  return navigator.mediaDevices.getUserMedia(constraints);
}

// One request for both, so that a browser asks for camera and microphone in one prompt.
export async function openCamera(cameraId, { sound = false, microphoneId = "" } = {}) {
  return getUserMedia({ video: withDevice(VIDEO, cameraId), audio: sound ? withDevice(AUDIO, microphoneId) : false });
}

export async function openMicrophone(microphoneId) {
  return getUserMedia({ video: false, audio: withDevice(AUDIO, microphoneId) });
}

// `what`: the devices asked for, as the message names them ("camera", "microphone", "camera and microphone").
export function cameraErrorMessage(err, what = "camera") {
  switch (err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return what === "camera"
        ? "Camera permission was denied. Allow the camera for this page, then press Start again."
        : `Permission for the ${what} was denied. Allow it for this page (or turn Sound off), then press Start again.`;
    case "NotFoundError":
    case "OverconstrainedError":
      return `No ${what} found (or the chosen one is gone).`;
    case "NotReadableError":
    case "AbortError":
      return `The ${what} could not be opened; another application may be using it.`;
    default:
      return `Could not open the ${what}: ${err.message}`;
  }
}

export function stopTracks(stream) {
  stream?.getTracks().forEach((track) => track.stop());
}

export function cameraIdOf(stream) {
  return stream?.getVideoTracks()[0]?.getSettings().deviceId;
}

export function microphoneIdOf(stream) {
  return stream?.getAudioTracks()[0]?.getSettings().deviceId;
}

const DEVICE_WORDS = { videoinput: "Camera", audioinput: "Microphone" };

// Fill `select` with the devices of `kind` ("videoinput", "audioinput"), keeping `wantedId` chosen when it is
// still there; returns how many there are. Labels (and in Firefox real ids) only appear once permission is
// granted, so pages call this again after it.
export async function listDevices(select, kind, wantedId) {
  if (!navigator.mediaDevices?.enumerateDevices) return 0;
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((device) => device.kind === kind);
  const label = (device, index) => device.label || `${DEVICE_WORDS[kind]} ${index + 1}`;
  select.replaceChildren(...devices.map((device, index) => new Option(label(device, index), device.deviceId)));
  if (devices.some((device) => device.deviceId === wantedId)) select.value = wantedId;
  select.disabled = devices.length === 0;
  return devices.length;
}

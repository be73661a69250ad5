// The camera: opening one, naming what went wrong, and the list of cameras to choose from.

function cameraConstraints(deviceId) {
  const video = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } };
  if (deviceId) video.deviceId = { exact: deviceId };
  return { audio: false, video };
}

export async function openCamera(deviceId) {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("this page needs https (or localhost) for camera access");
  }
  return navigator.mediaDevices.getUserMedia(cameraConstraints(deviceId));
}

export function cameraErrorMessage(err) {
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

export function stopTracks(stream) {
  stream?.getTracks().forEach((track) => track.stop());
}

export function cameraIdOf(stream) {
  return stream?.getVideoTracks()[0]?.getSettings().deviceId;
}

// Fill `select` with the cameras, keeping `wantedId` chosen when it is still there. Labels (and in Firefox real
// ids) only appear once camera permission is granted, so pages call this again after it.
export async function listCameras(select, wantedId) {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  const cameras = devices.filter((device) => device.kind === "videoinput");
  select.replaceChildren(
    ...cameras.map((camera, index) => new Option(camera.label || `Camera ${index + 1}`, camera.deviceId)),
  );
  if (cameras.some((camera) => camera.deviceId === wantedId)) select.value = wantedId;
  select.disabled = cameras.length === 0;
}

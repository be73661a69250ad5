// The view page (/view/NAME): plays the stream over WHEP on a chrome-free page, waits while it is not there,
// and plays it again by itself when it comes back. With ?sound=1 it plays the stream's sound too (for an OBS
// browser source with "control audio via OBS"); without, it stays muted and asks for no sound.

import { streamNameFromPath } from "./lib/access.js";
import { FrameCounter } from "./lib/frames.js";
import { WhepPlayer } from "./lib/whep.js";

const name = streamNameFromPath();
const video = document.getElementById("picture");
const waiting = document.getElementById("waiting");
const soundNote = document.getElementById("sound-note");
const frames = new FrameCounter(video);
const sound = soundWanted(new URLSearchParams(location.search).get("sound"));
const player = new WhepPlayer({ stream: name, video, sound: sound === true, onChange: showState });
let soundBlocked = false;

// true, false, or null for a value the page does not understand (said on the page rather than guessed).
function soundWanted(value) {
  if (value === null || value === "0") return false;
  return value === "1" ? true : null;
}

function showState() {
  waiting.hidden = player.playing;
  // Only a refusal that no retry can change replaces the waiting line: everything else is "not there yet".
  waiting.textContent = player.gaveUp ? `lcmlive: ${player.lastError.message}` : `waiting for stream ${name}`;
}

// A browser may refuse to start a picture with sound before the person has used the page (an OBS browser source
// does not): then it plays muted, and the first click anywhere turns the sound on.
async function playWithSound() {
  try {
    await video.play();
  } catch (err) {
    if (err.name !== "NotAllowedError" || soundBlocked) return;
    soundBlocked = true;
    soundNote.hidden = false;
    video.muted = true;
    video.play().catch(() => {});
    addEventListener("click", unmute, { once: true });
  }
}

function unmute() {
  soundBlocked = false;
  soundNote.hidden = true;
  video.muted = false;
  video.play().catch(() => {});
}

window.lcmlive = {
  state: () => ({
    playing: player.playing,
    frames: frames.count,
    lastError: player.lastError,
    attempts: player.attempts,
    sound: {
      asked: player.sound,
      tracks: video.srcObject?.getAudioTracks().length ?? 0,
      muted: video.muted,
      blocked: soundBlocked,
    },
  }),
};

document.title = `${name} · lcmlive view`;
if (sound === null) {
  waiting.textContent = "lcmlive: ?sound= takes 1 (play the stream's sound) or 0; leave it out for a silent picture";
} else {
  if (sound) {
    video.muted = false;
    // Every new connection sets the element's source again, and with it the browser's autoplay decision.
    video.addEventListener("loadedmetadata", playWithSound);
  }
  // Leaving frees the server's viewer slot at once; a page restored from the back/forward cache starts again.
  addEventListener("pagehide", () => player.stop());
  addEventListener("pageshow", (event) => {
    if (event.persisted) player.start();
  });
  showState();
  player.start();
}

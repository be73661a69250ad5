// The view page (/view/NAME): plays the stream over WHEP on a chrome-free page, waits while it is not there,
// and plays it again by itself when it comes back.

import { streamNameFromPath } from "./lib/access.js";
import { FrameCounter } from "./lib/frames.js";
import { WhepPlayer } from "./lib/whep.js";

const name = streamNameFromPath();
const video = document.getElementById("picture");
const waiting = document.getElementById("waiting");
const frames = new FrameCounter(video);
const player = new WhepPlayer({ stream: name, video, onChange: showState });

function showState() {
  waiting.hidden = player.playing;
  // Only a refusal that no retry can change replaces the waiting line: everything else is "not there yet".
  waiting.textContent = player.gaveUp ? `lcmlive: ${player.lastError.message}` : `waiting for stream ${name}`;
}

window.lcmlive = {
  state: () => ({
    playing: player.playing,
    frames: frames.count,
    lastError: player.lastError,
    attempts: player.attempts,
  }),
};

// Leaving frees the server's viewer slot at once; a page restored from the back/forward cache starts again.
addEventListener("pagehide", () => player.stop());
addEventListener("pageshow", (event) => {
  if (event.persisted) player.start();
});

document.title = `${name} · lcmlive view`;
showState();
player.start();

// Watching a stream over WHEP (RFC 9725 egress): a recvonly offer POSTed to /whep/NAME, the answer applied, and
// the viewer resource DELETEd on leaving. WhepPlayer keeps a picture on a <video> for as long as it runs: the
// stream may not exist yet, may end, or may stall, and each time it tries again with a capped backoff. With
// `sound` it also asks for the stream's sound (an audio m-line, recvonly), which plays on the same element, in
// step with the picture; a stream without sound answers that m-line inactive, and the picture plays alone.

import { authHeaders } from "./access.js";
import { Retry } from "./backoff.js";
import { iceGatheringComplete } from "./ice.js";

const RETRY_FIRST_DELAY_MS = 500;
const RETRY_MAX_DELAY_MS = 5000;
const REQUEST_TIMEOUT_MS = 10000;
// How long a leaving viewer keeps its connection open for the server to answer its DELETE.
const LEAVE_TIMEOUT_MS = 2000;
const WATCH_INTERVAL_MS = 500;
// Playing, but no frame decoded for this long: the stream is gone even if nobody said so.
const STALL_TIMEOUT_MS = 5000;
// Answered, but no first frame in this time (ICE never connected, or the stream has no picture yet).
const FIRST_FRAME_TIMEOUT_MS = 15000;
// Refusals that another try cannot change: the page's URL is wrong.
const FINAL_CODES = new Set(["unauthorized", "forbidden_origin", "bad_stream_name"]);

class WhepError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// One viewer: its peer connection and, once the server created it, its resource URL.
class WhepSession {
  constructor(stream, { sound, onTrack, onLost }) {
    this.stream = stream;
    this.location = null;
    this.closed = false;
    this.answeredAt = null;
    this.progressAt = null; // when a frame was last decoded
    this.decoded = 0;
    this.pc = new RTCPeerConnection();
    this.pc.addTransceiver("video", { direction: "recvonly" });
    if (sound) this.pc.addTransceiver("audio", { direction: "recvonly" });
    // The server closes a viewer's connection when its stream ends. Chromium shows that at once only as the
    // DTLS transport closing; the connection state follows when ICE consent runs out, seconds later.
    this.pc.addEventListener("track", (event) => {
      onTrack(event.track);
      if (event.track.kind !== "video") return; // the picture decides whether the stream is there
      event.track.addEventListener("ended", () => onLost("the video track ended"));
      const dtls = event.receiver.transport;
      dtls?.addEventListener("statechange", () => {
        if (dtls.state === "closed" || dtls.state === "failed") onLost(`the secure transport is ${dtls.state}`);
      });
    });
    this.pc.addEventListener("connectionstatechange", () => {
      const state = this.pc.connectionState;
      if (state === "disconnected" || state === "failed" || state === "closed") onLost(`the connection is ${state}`);
    });
  }

  async open() {
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await iceGatheringComplete(this.pc);
    if (this.closed) throw new WhepError("closed", "left while connecting");
    let response;
    try {
      response = await fetch(`/whep/${encodeURIComponent(this.stream)}`, {
        method: "POST",
        headers: { "Content-Type": "application/sdp", ...authHeaders() },
        body: this.pc.localDescription.sdp,
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
    } catch (err) {
      throw new WhepError("connection", `cannot reach the server (${err.message})`);
    }
    if (response.status !== 201) throw await refusal(response);
    this.location = response.headers.get("Location");
    if (this.closed) {
      // Left while the server was answering: its new viewer would otherwise wait out a timeout there.
      this.leave();
      throw new WhepError("closed", "left while connecting");
    }
    await this.pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    this.answeredAt = this.progressAt = performance.now();
  }

  async framesDecoded() {
    const stats = await this.pc.getStats();
    for (const report of stats.values()) {
      if (report.type === "inbound-rtp" && report.kind === "video") return report.framesDecoded ?? 0;
    }
    return 0;
  }

  // Leave: tell the server, and close the connection once it answered (or after LEAVE_TIMEOUT_MS). Closing at once
  // races the request: the server may see the connection close first, drop the viewer by itself, and answer the
  // DELETE 404 (seen once in CI). keepalive lets the request outlive a closing page, which closes the connection.
  close() {
    this.closed = true;
    const answered = this.leave();
    const timeout = new Promise((resolve) => setTimeout(resolve, LEAVE_TIMEOUT_MS));
    Promise.race([answered, timeout]).then(() => this.pc.close());
  }

  // The DELETE for this viewer, if the server made one; settles when answered (or failed).
  leave() {
    if (this.location === null) return Promise.resolve();
    const request = fetch(this.location, { method: "DELETE", headers: authHeaders(), keepalive: true });
    this.location = null;
    return request.catch(() => {});
  }
}

async function refusal(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // Not a JSON refusal (a proxy's page, say): the status says enough.
  }
  const status = response.status;
  return new WhepError(body.code ?? `http_${status}`, body.message ?? `the server answered ${status}`);
}

export class WhepPlayer {
  // `onChange()` is called whenever `playing` or `lastError` changes. `sound`: ask for the stream's sound too.
  constructor({ stream, video, sound = false, onChange = () => {} }) {
    this.stream = stream;
    this.video = video;
    this.sound = sound;
    this.onChange = onChange;
    this.session = null;
    this.running = false;
    this.playing = false;
    this.attempts = 0;
    this.lastError = null; // {code, message}, kept after the picture comes back
    this.gaveUp = false; // a refusal that no retry can change
    this.retry = new Retry(() => this.connect(), { firstMs: RETRY_FIRST_DELAY_MS, maxMs: RETRY_MAX_DELAY_MS });
    this.watchTimer = null;
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.gaveUp = false;
    this.watchTimer = setInterval(() => this.watch(), WATCH_INTERVAL_MS);
    this.connect();
  }

  stop() {
    this.running = false;
    this.retry.cancel();
    clearInterval(this.watchTimer);
    this.teardown();
  }

  async connect() {
    if (!this.running || this.session !== null) return;
    this.attempts += 1;
    const tracks = [];
    const session = new WhepSession(this.stream, {
      sound: this.sound,
      // One element plays the picture and its sound, so that they stay in step.
      onTrack: (track) => {
        tracks.push(track);
        if (session === this.session) this.video.srcObject = new MediaStream(tracks);
      },
      onLost: (reason) => this.lost(session, "stream_lost", `lost the stream: ${reason}`),
    });
    this.session = session;
    try {
      await session.open();
    } catch (err) {
      this.lost(session, err.code ?? "webrtc", err.message);
    }
  }

  // This session is over: drop it, and try again unless the refusal was final.
  lost(session, code, message) {
    if (session !== this.session) return;
    this.teardown();
    this.lastError = { code, message };
    if (FINAL_CODES.has(code)) {
      this.gaveUp = true;
      this.stop();
    } else if (this.running) {
      this.retry.schedule();
    }
    this.onChange();
  }

  teardown() {
    const session = this.session;
    this.session = null;
    session?.close();
    this.video.srcObject = null;
    if (this.playing) {
      this.playing = false;
      this.onChange();
    }
  }

  // Frames decoded, not frames shown: a hidden page shows none, and that is no reason to reconnect.
  async watch() {
    const session = this.session;
    if (session?.answeredAt == null) return;
    const decoded = await session.framesDecoded().catch(() => session.decoded);
    if (session !== this.session) return;
    const now = performance.now();
    if (decoded > session.decoded) {
      session.decoded = decoded;
      session.progressAt = now;
      if (!this.playing) {
        this.playing = true;
        this.retry.succeeded();
        this.onChange();
      }
    } else if (this.playing && now - session.progressAt > STALL_TIMEOUT_MS) {
      this.lost(session, "stalled", `no new frame for ${STALL_TIMEOUT_MS / 1000} s`);
    } else if (!this.playing && now - session.answeredAt > FIRST_FRAME_TIMEOUT_MS) {
      this.lost(session, "no_picture", `no picture within ${FIRST_FRAME_TIMEOUT_MS / 1000} s of the answer`);
    }
  }
}

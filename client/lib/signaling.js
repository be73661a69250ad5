// Publishing the camera as a named stream: the /ws socket plus one peer connection that sends the camera and
// receives the stylised picture (and, when asked for, the control image — Canny or depth map — on a second video
// track). With a microphone it also sends the stream's sound, and asks for that sound back, delayed with the
// picture, on an audio m-line of its own (the page plays it only when Hear is on). The session ends when its
// socket closes; the page decides whether to open another.

import { iceGatheringComplete } from "./ice.js";
import { StreamSocket } from "./socket.js";

export class PublishSession {
  // `handlers`: those of StreamSocket (stream, params, stats, error, close), plus picture(track),
  // controlMap(track), sound(track) and peerState(state). `params()` gives the values to send along with the offer.
  // `microphoneTrack`: null for a stream without sound.
  constructor({ stream, cameraTrack, microphoneTrack = null, withControlMap, params, handlers }) {
    this.handlers = handlers;
    this.pc = null;
    this.sender = null;
    this.microphoneSender = null;
    this.controlTransceiver = null;
    this.soundTransceiver = null;
    this.socket = new StreamSocket({
      stream,
      role: "publish",
      handlers: {
        ...handlers,
        open: () => {
          this.negotiate(cameraTrack, microphoneTrack, withControlMap, params).catch((err) =>
            this.socket.fail("webrtc", `Could not set up the video connection: ${err.message}`),
          );
        },
        answer: (message) => {
          this.pc
            ?.setRemoteDescription({ type: "answer", sdp: message.sdp })
            .catch((err) => this.socket.fail("webrtc", `The server's answer was rejected: ${err.message}`));
        },
        close: (event) => {
          this.pc?.close();
          handlers.close?.(event);
        },
      },
    });
  }

  get connected() {
    return this.socket.isOpen && this.pc?.connectionState === "connected";
  }

  sendParams(params) {
    this.socket.sendParams(params);
  }

  // Swap the camera on the live sender: the session and its peer connection survive.
  replaceTrack(track) {
    return this.sender?.replaceTrack(track);
  }

  replaceMicrophone(track) {
    return this.microphoneSender?.replaceTrack(track);
  }

  // The socket first: the server then ends the stream as the publisher leaving, not as its connection failing.
  close() {
    this.socket.close("stopped");
    this.pc?.close();
  }

  async negotiate(cameraTrack, microphoneTrack, withControlMap, params) {
    const pc = new RTCPeerConnection();
    this.pc = pc;
    pc.addEventListener("track", (event) => this.receiveTrack(event));
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed") {
        this.socket.fail("ice", "The video connection failed (ICE): the server may not be reachable over UDP.");
      }
      this.handlers.peerState?.(pc.connectionState);
    });
    this.sender = pc.addTransceiver(cameraTrack, { direction: "sendrecv" }).sender;
    this.controlTransceiver = withControlMap ? pc.addTransceiver("video", { direction: "recvonly" }) : null;
    if (microphoneTrack) {
      // Two m-lines, not one sendrecv: the server answers the m-line that brings a stream's sound as receiving
      // only, and sends the delayed sound on the first audio m-line that asks to receive it.
      this.microphoneSender = pc.addTransceiver(microphoneTrack, { direction: "sendonly" }).sender;
      this.soundTransceiver = pc.addTransceiver("audio", { direction: "recvonly" });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc);
    this.socket.send({ type: "offer", sdp: pc.localDescription.sdp });
    this.socket.sendParams(params());
  }

  // The first video track is the stylised picture; a second one, when asked for, is the control image; an audio
  // track is the stream's sound.
  receiveTrack(event) {
    if (event.transceiver === this.soundTransceiver) {
      this.handlers.sound?.(event.track);
      return;
    }
    const isControlMap = this.controlTransceiver !== null && event.transceiver === this.controlTransceiver;
    (isControlMap ? this.handlers.controlMap : this.handlers.picture)?.(event.track);
  }
}

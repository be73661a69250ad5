// The page's /ws socket on one stream, as its publisher or as a controller: JSON messages in and out.

import { socketUrl } from "./access.js";

// What the server sends; a type not listed here comes from a newer server and is ignored.
const MESSAGE_TYPES = new Set(["stream", "answer", "params", "stats", "error"]);

// The stream ended (its source left, went quiet, or never connected): it may come back under the same name.
export const STREAM_END_CODES = new Set(["publisher_left", "source_gone", "source_idle", "connect_timeout"]);

export class StreamSocket {
  // `stream` may be null for a publisher: the server then names the stream in its first message. `handlers` may
  // have open(), close(event) and one function per message type: stream, answer, params, stats, error.
  constructor({ stream, role = "publish", handlers }) {
    this.handlers = handlers;
    this.opened = false;
    this.attached = false; // the server's "stream" message came: this socket is on the stream
    this.error = null; // the latest error message from the server
    this.failure = null; // {code, message} when this page closed the socket because something failed
    this.ws = new WebSocket(socketUrl(role === "control" ? { stream, role } : { stream }));
    this.ws.addEventListener("open", () => {
      this.opened = true;
      handlers.open?.();
    });
    this.ws.addEventListener("message", (event) => this.receive(event.data));
    this.ws.addEventListener("close", (event) => handlers.close?.(event));
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  send(message) {
    if (this.isOpen) this.ws.send(JSON.stringify(message));
  }

  sendParams(params) {
    this.send({ type: "params", params });
  }

  // Close because something failed; the close handler finds out why in `failure`.
  fail(code, message) {
    this.failure = { code, message };
    this.ws.close();
  }

  close(reason = "closed by the page") {
    this.ws.close(1000, reason);
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      const notJson = { type: "error", code: "protocol", message: "The server sent a message that is not JSON." };
      this.handlers.error?.(notJson);
      return;
    }
    if (!MESSAGE_TYPES.has(message.type)) return;
    if (message.type === "stream") {
      this.attached = true;
    } else if (message.type === "error") {
      this.error = message;
    }
    this.handlers[message.type]?.(message);
  }
}

// The server (aiortc) takes no trickled candidates: an offer goes out once ICE gathering is complete.

const ICE_GATHERING_TIMEOUT_MS = 3000;

// Resolves when gathering completes, or after the timeout with whatever candidates were found by then.
export function iceGatheringComplete(pc, timeoutMs = ICE_GATHERING_TIMEOUT_MS) {
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

"""The README's pictures: the studio page restyling a test camera (studio.png) and a loop of the camera and the
stylised output side by side (loop.webp), made from a real `lcmlive serve --model tiny` in headless Chromium, whose
fake camera plays a clip this script draws (a room with a white disc swinging and a bar turning, slowly).

    .venv/bin/python scripts/screenshots.py [FOLDER]      # default docs/images

It types the prompt (default: the model's own first prompt), waits for the processing size to settle, records the loop,
takes the screenshot (of a dozen, the one whose output is most like its camera: the output comes a few hundred ms late),
and prints what it measured of the loop's frames (JSON): how the output's disc follows the camera's (the lag, the
distance), the output's grey and edge correlation with the camera, how far the style moved it, the edge sharpness of
each, the frame rate the page showed and the processing size. `--params` sets stream params before the prompt (to
compare settings on the same camera). About 25-40 s on a loaded 2-core machine, most of it the server's start and the
settling.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageDraw

from server.bench.chromium import CHROMIUM, CHROMIUM_ARGS

if TYPE_CHECKING:
    from playwright.sync_api import ViewportSize

ROOT = Path(__file__).resolve().parent.parent

VIEWPORT: ViewportSize = {"width": 1280, "height": 720}
# The pictures are taken once the processing size has held this long (the adaptation has settled).
SETTLE_S = 4.0
SETTLE_TIMEOUT_S = 40.0
LOOP_S = 4.0
LOOP_INTERVAL_MS = 100
MAX_LOOP_BYTES = 2_000_000
SCREENSHOTS = 12
# The clip's white disc covers about 3.7% of the picture (a 60 px radius in 640x480); its brightest 3% is within
# it, blur at the output's edge left out.
DISC_SHARE = 0.03
# The output's lag behind the camera is searched up to this: the latency is 150-300 ms on the 2-core CPU.
MAX_LAG_MS = 500
SCREENSHOT_INTERVAL_MS = 150

# The camera: a clip Chromium plays as its fake camera (Chromium's own test pattern, a pie sweeping at 600 degrees
# a second, turned by a third of a turn between the camera and an output 200 ms late: the loop could not show the
# output following it).
CAMERA_SIZE = (640, 480)
CAMERA_FPS = 15
CAMERA_LOOP_S = 8

# The camera and the output drawn side by side, each at the output video's size, every `interval` ms for `seconds`,
# kept as PNG data URLs with their times. Sampled on a timer, as a viewer's eye sees the page: the loop shows the
# output at its own rate beside the camera's.
CAPTURE = """
([seconds, interval]) => new Promise((resolve) => {
  const camera = document.getElementById("input-video");
  const output = document.getElementById("output-video");
  const [w, h] = [output.videoWidth, output.videoHeight];
  const canvas = document.createElement("canvas");
  canvas.width = 2 * w;
  canvas.height = h;
  const context = canvas.getContext("2d");
  const frames = [];
  const start = performance.now();
  const grab = () => {
    const now = performance.now();
    context.drawImage(camera, 0, 0, w, h);
    context.drawImage(output, w, 0, w, h);
    frames.push([now, canvas.toDataURL("image/png")]);
    if (now - start < seconds * 1000) setTimeout(grab, Math.max(0, start + frames.length * interval - now));
    else resolve(frames);
  };
  grab();
})
"""


def camera_frame(index: int) -> np.ndarray:
    """Frame `index` of the camera clip (RGB, CAMERA_SIZE): shapes a webcam might see, moving slowly enough that
    the output, a few hundred ms late, is seen to follow. A white disc swings from side to side and a pale bar turns
    about the middle, once per CAMERA_LOOP_S each (the clip loops without a jump), in front of a dark graded wall
    with a window, a shelf and a framed square."""
    width, height = CAMERA_SIZE
    t = index / CAMERA_FPS / CAMERA_LOOP_S  # 0..1 over the loop
    wall = np.linspace(70, 30, height, dtype=np.float32)[:, None, None] * np.array([0.8, 0.9, 1.2], np.float32)
    frame = np.ascontiguousarray(np.broadcast_to(wall, (height, width, 3)).clip(0, 255).astype(np.uint8))
    cv2.rectangle(frame, (40, 40), (220, 200), (120, 140, 170), -1)  # a window
    cv2.line(frame, (130, 40), (130, 200), (40, 40, 50), 6)
    cv2.line(frame, (40, 120), (220, 120), (40, 40, 50), 6)
    cv2.rectangle(frame, (420, 60), (580, 180), (150, 110, 70), 10)  # a picture frame
    cv2.rectangle(frame, (0, 380), (width, 400), (110, 90, 70), -1)  # a shelf
    centre = (width // 2, height // 2 + 20)
    angle = 2 * np.pi * t
    end = (round(centre[0] + 170 * np.cos(angle)), round(centre[1] + 170 * np.sin(angle)))
    start = (round(centre[0] - 170 * np.cos(angle)), round(centre[1] - 170 * np.sin(angle)))
    cv2.line(frame, start, end, (190, 170, 140), 18, cv2.LINE_AA)  # a turning bar
    disc = (round(width / 2 + 200 * np.sin(2 * np.pi * t)), 270)
    cv2.circle(frame, disc, 60, (255, 255, 255), -1, cv2.LINE_AA)  # a white disc, the brightest thing in view
    return frame


def write_camera_clip(path: Path) -> None:
    """The camera clip as a Y4M file, which Chromium plays (looping) as its fake camera."""
    width, height = CAMERA_SIZE
    with path.open("wb") as clip:
        clip.write(f"YUV4MPEG2 W{width} H{height} F{CAMERA_FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for index in range(round(CAMERA_FPS * CAMERA_LOOP_S)):
            clip.write(b"FRAME\n")
            clip.write(cv2.cvtColor(camera_frame(index), cv2.COLOR_RGB2YUV_I420).tobytes())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now. server.bench.loopback has the same; importing
    it (the server's package, torch) took 14 s of this script's 44 on a loaded 2-core machine."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`lcmlive serve --model tiny` on a free loopback port, stopped with Ctrl-C (SIGINT) by `stop`."""

    def __init__(self, log: BinaryIO) -> None:
        """`log`: where it prints, told when it fails to start."""
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        self.log = log
        self.process = subprocess.Popen(
            [*command, "--model", "tiny", "--device", "cpu", "--ice-loopback"],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"lcmlive serve exited early ({self.process.returncode}):\n{self.output()}")
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"lcmlive serve did not answer /health within 90 s:\n{self.output()}") from None
                time.sleep(0.3)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def first_prompt(self) -> str:
        """The prompt a stream starts with: the served schema's default (the loaded model's own)."""
        with urllib.request.urlopen(f"{self.url}/params/schema", timeout=10) as response:
            return json.loads(response.read())["properties"]["prompt"]["default"]

    def patch(self, stream: str, params: dict) -> None:
        request = urllib.request.Request(
            f"{self.url}/streams/{stream}",
            data=json.dumps(params).encode(),
            headers={"Content-Type": "application/json"},
            method="PATCH",
        )
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def state(page) -> dict:
    return page.evaluate("window.lcmlive.state()")


def wait_for(page, condition: str, timeout_s: float) -> dict:
    """Wait until the JS `condition` over `s = window.lcmlive.state()` holds."""
    page.wait_for_function(
        f"() => {{ const s = window.lcmlive?.state(); return Boolean(s && ({condition})); }}", timeout=timeout_s * 1000
    )
    return state(page)


def settle(page, seconds: float) -> dict:
    """The last stats once the processing size has held for `seconds` (or SETTLE_TIMEOUT_S has passed)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    stats = wait_for(page, "s.lastStats", 20)["lastStats"]
    size, since = (stats["width"], stats["height"]), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < seconds:
        page.wait_for_timeout(250)
        stats = state(page)["lastStats"]
        if (stats["width"], stats["height"]) != size:
            size, since = (stats["width"], stats["height"]), time.monotonic()
    return stats


def box(page, selector: str) -> list[float]:
    """An element's (left, top, width, height) on the page."""
    found = page.locator(selector).bounding_box()
    return [found["x"], found["y"], found["width"], found["height"]]


def panes_correlation(png: bytes, boxes: dict) -> float:
    """Grey correlation of the output pane with the camera pane in a screenshot, below the stats overlay."""
    grey = np.array(Image.open(io.BytesIO(png)).convert("L"), np.float32)
    camera_left, top, width, height = (round(v) for v in boxes["input-video"])
    output_left = round(boxes["output-video"][0])
    rows = slice(round(boxes["stats"][1] + boxes["stats"][3]), top + height)
    return correlation(grey[rows, camera_left : camera_left + width], grey[rows, output_left : output_left + width])


def decode(data_url: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def gradient(grey: np.ndarray) -> np.ndarray:
    return np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def measure(frames: list[np.ndarray]) -> dict:
    """How the output (right half of each frame) shows the camera (left half), the medians over the frames:
    `grey_correlation`, the output's grey picture against the camera's of up to a second before it (the output
    comes a latency later; the best of those); `edge_correlation`, the same for their edge maps (Sobel gradient
    magnitude, lightly blurred: edges where the camera's are); `style_distance`, the mean 0-255 RGB difference
    from that best camera picture (how far the style moved it); and each one's edge sharpness (the variance of
    the Laplacian, the mean gradient magnitude) on 0-255 grey."""
    greys = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) for frame in frames]
    half = greys[0].shape[1] // 2
    cameras, outputs = [g[:, :half] for g in greys], [g[:, half:] for g in greys]
    edges = [cv2.GaussianBlur(gradient(g), (0, 0), 1.0) for g in greys]
    camera_edges, output_edges = [e[:, :half] for e in edges], [e[:, half:] for e in edges]
    lag = max(1, len(frames) // 4)  # about a second of the capture's frames
    follows, edges_follow, distances = [], [], []
    for i in range(lag, len(frames)):
        earlier = range(i - lag, i + 1)
        best = max(earlier, key=lambda j: correlation(outputs[i], cameras[j]))
        follows.append(correlation(outputs[i], cameras[best]))
        edges_follow.append(max(correlation(output_edges[i], camera_edges[j]) for j in earlier))
        output, camera = frames[i][:, half:].astype(np.float32), frames[best][:, :half].astype(np.float32)
        distances.append(np.abs(output - camera).mean())

    def median(values) -> float:
        return round(float(np.median(list(values))), 3)

    return {
        **follow(cameras, outputs),
        "grey_correlation": median(follows),
        "edge_correlation": median(edges_follow),
        "style_distance": median(distances),
        "camera_laplacian_var": median(cv2.Laplacian(c, cv2.CV_32F).var() for c in cameras),
        "output_laplacian_var": median(cv2.Laplacian(o, cv2.CV_32F).var() for o in outputs),
        "camera_gradient": median(gradient(c).mean() for c in cameras),
        "output_gradient": median(gradient(o).mean() for o in outputs),
    }


def disc_x(grey: np.ndarray) -> float:
    """Where the camera clip's white disc is across a pane, 0-1: the middle of its brightest DISC_SHARE of pixels."""
    bright = grey >= np.quantile(grey, 1 - DISC_SHARE)
    return float(np.nonzero(bright)[1].mean() / grey.shape[1])


def follow(cameras: list[np.ndarray], outputs: list[np.ndarray]) -> dict:
    """How the output follows the camera: the white disc's place across each pane, and the lag (in loop frames, up
    to MAX_LAG_MS) at which the output's disc is nearest the camera's. `disc_travel` and `output_disc_travel`: how
    far each pane's disc went in the loop; `follow_error`: the median distance between the two discs at that lag;
    all a share of the width."""
    camera_x, output_x = [disc_x(c) for c in cameras], [disc_x(o) for o in outputs]
    most = min(len(cameras) // 4, MAX_LAG_MS // LOOP_INTERVAL_MS)
    errors = {
        lag: float(np.median(np.abs(np.subtract(output_x[lag:], camera_x[: len(camera_x) - lag]))))
        for lag in range(most + 1)
    }
    lag = min(errors, key=errors.__getitem__)
    return {
        "disc_travel": round(max(camera_x) - min(camera_x), 3),
        "output_disc_travel": round(max(output_x) - min(output_x), 3),
        "follow_error": round(errors[lag], 3),
        "follow_lag_ms": lag * LOOP_INTERVAL_MS,
    }


def save_loop(frames: list[np.ndarray], times_ms: list[float], path: Path) -> None:
    """An animated WebP of the frames, each shown for as long as it was on screen and captioned (camera, output);
    lossy, so it stays small."""
    durations = [max(20, round(b - a)) for a, b in zip(times_ms, times_ms[1:], strict=False)]
    durations.append(durations[-1] if durations else 100)
    pictures = [Image.fromarray(frame) for frame in frames]
    half = frames[0].shape[1] // 2
    for picture in pictures:
        draw = ImageDraw.Draw(picture)
        for x, caption in ((0, "camera"), (half, "output")):
            draw.text(
                (x + 6, picture.height - 16), caption, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0)
            )
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0, quality=80)
    if path.stat().st_size >= MAX_LOOP_BYTES:
        raise RuntimeError(f"{path} is {path.stat().st_size} bytes, over {MAX_LOOP_BYTES}")


def make_pictures(folder: Path, prompt: str | None, params: dict, loop_s: float, settle_s: float) -> dict:
    """Serve the toy, take the pictures into `folder`, and say what they show (see the module's docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryFile() as log:
        server = Server(log)
        server_start = time.monotonic() - started
        try:
            report = photograph(server, folder, prompt, params, loop_s, settle_s)
        finally:
            server.stop()
    return {**report, "server_start_seconds": round(server_start, 1), "seconds": round(time.monotonic() - started, 1)}


def photograph(server: Server, folder: Path, prompt: str | None, params: dict, loop_s: float, settle_s: float) -> dict:
    """The studio page on `server` in headless Chromium: Start, the prompt, settling, the loop, the screenshot."""
    from playwright.sync_api import sync_playwright

    # The page names the camera after the clip's path: a short one.
    with tempfile.TemporaryDirectory(prefix="lcmlive-") as scratch, sync_playwright() as playwright:
        clip = Path(scratch) / "test-camera.y4m"
        write_camera_clip(clip)
        camera = [*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={clip}"]
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=camera)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(45_000)
        page.goto(server.url)
        page.locator("#prompt").wait_for(state="visible")
        page.click("#start")
        stream = wait_for(page, "s.connected && s.outputFrames > 5", 45)["streamName"]
        if params:
            server.patch(stream, params)
        prompt = prompt or server.first_prompt()
        page.fill("#prompt", prompt)
        page.press("#prompt", "Enter")
        wait_for(page, f"s.lastParams?.prompt === {json.dumps(prompt)}", 20)
        # Typing scrolled the prompt into view; headless Chromium stops drawing videos scrolled out of it.
        page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
        settling = time.monotonic()
        stats = settle(page, settle_s)
        settling = time.monotonic() - settling
        frames_before = state(page)["outputFrames"]
        captured = page.evaluate(CAPTURE, [loop_s, LOOP_INTERVAL_MS])
        frames_during = state(page)["outputFrames"] - frames_before
        # Where the panes and the output's stats overlay are in the picture (CSS pixels: the picture's, at scale 1).
        boxes = {name: box(page, f"#{name}") for name in ("input-video", "output-video", "stats")}
        # The output shows the camera a few hundred ms late: of a dozen screenshots, the one whose output pane is
        # most like its camera pane.
        shots = []
        for _ in range(SCREENSHOTS):
            shot = page.screenshot()
            shots.append((panes_correlation(shot, boxes), shot))
            page.wait_for_timeout(SCREENSHOT_INTERVAL_MS)
        studio_correlation, best = max(shots, key=lambda scored: scored[0])
        (folder / "studio.png").write_bytes(best)
        browser.close()
    times_ms = [t for t, _ in captured]
    frames = [decode(url) for _, url in captured]
    save_loop(frames, times_ms, folder / "loop.webp")
    loop_seconds = (times_ms[-1] - times_ms[0]) / 1000
    return {
        **measure(frames),
        "studio_correlation": round(studio_correlation, 3),
        "output_box": boxes["output-video"],
        "stats_box": boxes["stats"],
        # Frames the page's output video showed during the loop, a second: the picture's rate as a viewer sees it.
        "fps_shown": round(frames_during / loop_seconds, 2),
        "fps_out": stats["fps_out"],
        "processing_size": [stats["width"], stats["height"]],
        "loop_frames": len(frames),
        "loop_fps": round((len(frames) - 1) / loop_seconds, 2),
        "loop_bytes": (folder / "loop.webp").stat().st_size,
        "settle_seconds": round(settling, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--prompt", help="typed into the page's prompt (default: the model's first prompt)")
    parser.add_argument("--params", type=json.loads, default={}, help="stream params (JSON) set before the prompt")
    parser.add_argument("--loop-seconds", type=float, default=LOOP_S, help="length of the loop")
    parser.add_argument(
        "--settle-seconds", type=float, default=SETTLE_S, help="how long the processing size must hold first"
    )
    args = parser.parse_args(argv)
    report = make_pictures(args.folder, args.prompt, args.params, args.loop_seconds, args.settle_seconds)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

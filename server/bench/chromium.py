"""Headless Chromium as a person's page for the tests and the README's pictures: its binary and launch flags."""

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright's own download cannot be fetched on the dev machines
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Chromium's moving test pattern instead of a webcam, and camera permission granted without a prompt.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # Loopback host candidates, so that ICE with the server (--ice-loopback) stays on 127.0.0.1.
    "--allow-loopback-in-peer-connection",
]

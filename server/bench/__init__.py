"""`lcmlive bench` and the Python WebRTC clients it drives; the server never imports this package."""

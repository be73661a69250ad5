"""The media side of streams: peer connections, the camera pump, encode-once feeds and ICE on loopback."""

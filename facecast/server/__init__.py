"""The Facecast server: a LiveAvatar-shaped session API, standalone WebRTC, the LITE WebSocket and the
browser test client."""

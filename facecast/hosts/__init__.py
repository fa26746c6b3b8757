"""Host adapters: each maps one protocol (a file, WebRTC, LiveKit) onto the engine's small interface."""

"""Clients of a Facecast server: what an app, a plugin, the bench or a test needs to use a session."""

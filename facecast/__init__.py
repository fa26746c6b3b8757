"""Facecast: self-hosted real-time talking avatars for voice agents, on a CPU."""

__version__ = "0.1.0"

"""Facecast talking avatars for Pipecat: a lip-synced face for the bot's voice, rendered on the CPU.

>>> from pipecat_facecast import FacecastVideoService
>>> avatar = FacecastVideoService(settings=FacecastVideoService.Settings(avatar="ava", fps=30))
>>> pipeline = Pipeline([..., tts, avatar, transport.output(), ...])
"""

from pipecat_facecast.video import PHONES_METADATA_KEY, FacecastVideoService, FacecastVideoSettings

__all__ = ["PHONES_METADATA_KEY", "FacecastVideoService", "FacecastVideoSettings"]
__version__ = "0.1.0"

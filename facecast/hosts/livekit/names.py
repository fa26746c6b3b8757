"""Names on the LiveKit wire and the defaults they share (a light module: no livekit import)."""

from __future__ import annotations

from typing import Final

# Agent <-> avatar protocol (livekit-agents' DataStreamAudioOutput / DataStreamAudioReceiver).
AUDIO_STREAM_TOPIC: Final = "lk.audio_stream"
RPC_CLEAR_BUFFER: Final = "lk.clear_buffer"
RPC_PLAYBACK_STARTED: Final = "lk.playback_started"
RPC_PLAYBACK_FINISHED: Final = "lk.playback_finished"
ATTRIBUTE_PUBLISH_ON_BEHALF: Final = "lk.publish_on_behalf"
ATTRIBUTE_AGENT_STATE: Final = "lk.agent.state"
ATTRIBUTE_WORKER: Final = "facecast.worker"  # host:pid of the `facecast worker` serving a dispatched avatar
ATTRIBUTE_JOB_PROCESS: Final = "facecast.job_process"  # pid of the worker's child process running it
TOPIC_TRANSCRIPTION: Final = "lk.transcription"
TRANSCRIBED_TRACK: Final = "lk.transcribed_track_id"  # text stream attribute: the track it transcribes
TOPIC_AGENT_SESSION: Final = "lk.agent.session"

# Worker status for the room: data packets {"state", "reason"} on this topic.
SESSION_STATE_TOPIC: Final = "session.state"
STATE_CONNECTED: Final = "connected"
STATE_DISCONNECTED: Final = "disconnected"
STATE_ERROR: Final = "error"

# The mouth track (docs/mouth-track.md): one JSON record per frame, sent lossy as the frame plays.
MOUTH_TRACK_TOPIC: Final = "facecast.mouth_track"

AUDIO_TRACK_NAME: Final = "avatar_audio"
VIDEO_TRACK_NAME: Final = "avatar_video"

DEFAULT_AGENT_NAME: Final = "facecast-avatar"  # `facecast worker` registers under this for dispatch
DEFAULT_AVATAR_IDENTITY: Final = "facecast-avatar"
DEFAULT_AVATAR_NAME: Final = "Facecast avatar"
DEFAULT_SENDER_IDENTITY: Final = "facecast-say"

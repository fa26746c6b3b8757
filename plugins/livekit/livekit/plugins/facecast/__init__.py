"""Facecast plugin for LiveKit Agents: self-hosted, lip-synced talking avatars rendered on a CPU.

    from livekit.plugins import facecast

    avatar = facecast.AvatarSession(avatar="ava", aspect_ratio="4:3")  # FACECAST_API_URL / FACECAST_API_KEY
    await avatar.start(session, room=ctx.room)
    await session.start(agent=MyAgent(), room=ctx.room)

`avatar=` is an avatar id ("ava", or one made on the server), a photo (a local path or an http(s) URL,
built into an avatar in `start()`), or a `.facecast` file.

Docs: docs/livekit.md in the Facecast repository.
"""

from livekit.agents import Plugin

from .api import FacecastAPI, FacecastException
from .avatar import AvatarSession
from .log import logger
from .remote import mint_worker_token
from .version import __version__

__all__ = ["AvatarSession", "FacecastAPI", "FacecastException", "__version__", "mint_worker_token"]


class FacecastPlugin(Plugin):
    def __init__(self) -> None:
        super().__init__(__name__, __version__, __package__, logger)


Plugin.register_plugin(FacecastPlugin())

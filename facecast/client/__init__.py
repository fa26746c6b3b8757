"""Clients of a Facecast server: what an app, a plugin, the bench or a test needs to use a session.

- `api.LiteClient`: the session API over HTTP (token → start → offer → stop, stats), checked with the
  server's own request models;
- `lite_socket.LiteSocket`: a session's LITE WebSocket (speech up, events down);
- `peer.ReceivingPeer`: an aiortc peer receiving the session's video, audio and data-channel events;
- `sender_clock.SenderClock`: received media time on the sender's clock (RTCP sender reports);
- `rtpcount`: counting received frames without decoding them.

Needs aiohttp, aiortc and pydantic (`pip install 'facecast[client]'`), not the engine or the server.
"""

from facecast.client.api import LiteClient, MintedSession, ServerError, StartedSession, WebRTCDetails
from facecast.client.lite_socket import LiteSocket
from facecast.client.peer import ReceivingPeer
from facecast.client.sender_clock import SenderClock

__all__ = [
    "LiteClient",
    "LiteSocket",
    "MintedSession",
    "ReceivingPeer",
    "SenderClock",
    "ServerError",
    "StartedSession",
    "WebRTCDetails",
]

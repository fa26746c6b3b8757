"""Access tokens for the avatar worker, for senders of external audio, and for plain participants.

The worker token's claims are the ones every LiveKit avatar plugin mints: kind `agent` (LiveKit frontends
treat an agent participant that names the agent in `lk.publish_on_behalf` as that agent's avatar, and
the agent's RoomIO skips it when choosing its user), and the attribute present at join time.
`livekit-plugins-facecast` mints the same claims without importing facecast; a test keeps them equal.
"""

from __future__ import annotations

from datetime import timedelta

from livekit import api

from facecast.hosts.livekit.names import ATTRIBUTE_PUBLISH_ON_BEHALF

DEFAULT_TTL = timedelta(hours=6)


def mint_worker_token(
    api_key: str,
    api_secret: str,
    *,
    room: str,
    identity: str,
    name: str,
    agent_identity: str,
    ttl: timedelta = DEFAULT_TTL,
) -> str:
    """A token for the avatar worker joining `room` on behalf of the agent `agent_identity`."""
    grants = api.VideoGrants(
        room_join=True, room=room, can_publish=True, can_subscribe=True, can_publish_data=True
    )
    return (
        api.AccessToken(api_key, api_secret)
        .with_kind("agent")
        .with_identity(identity)
        .with_name(name)
        .with_grants(grants)
        .with_attributes({ATTRIBUTE_PUBLISH_ON_BEHALF: agent_identity})
        .with_ttl(ttl)
        .to_jwt()
    )


def mint_sender_token(
    api_key: str, api_secret: str, *, room: str, identity: str, ttl: timedelta = timedelta(hours=1)
) -> str:
    """A token for a participant that streams audio to the avatar (`facecast say`). It joins as kind
    `agent`: a worker not told whom to follow listens to the first agent in the room."""
    grants = api.VideoGrants(
        room_join=True, room=room, can_publish=False, can_subscribe=False, can_publish_data=True
    )
    return (
        api.AccessToken(api_key, api_secret)
        .with_kind("agent")
        .with_identity(identity)
        .with_name(identity)
        .with_grants(grants)
        .with_ttl(ttl)
        .to_jwt()
    )


def mint_participant_token(
    api_key: str, api_secret: str, *, room: str, identity: str, kind: str = "standard"
) -> str:
    """A token for a participant of `kind` (standard, agent, ...) that may publish, subscribe and send data
    in `room`: the agents and viewers the benchmarks put in a room."""
    grants = api.VideoGrants(
        room_join=True, room=room, can_publish=True, can_subscribe=True, can_publish_data=True
    )
    return (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_kind(kind)
        .with_grants(grants)
        .to_jwt()
    )

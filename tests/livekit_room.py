"""An in-memory stand-in for a LiveKit server and `rtc.Room`, for tests that have no livekit-server.

Stand-in: the SFU (rooms, participants, signalling) and the data channel (byte/text streams, RPC, data
packets). Real: everything above it that the tests exercise — livekit-agents' `DataStreamAudioOutput`,
`DataStreamAudioReceiver`, `AgentSession`, and `rtc.AudioSource` / `VideoSource` / local tracks, whose
played-out audio a test can read back with `rtc.AudioStream.from_track` on the published track.

Faithful where the protocol depends on it:
- joining decodes and verifies the JWT (identity, name, kind, attributes, room grant);
- every message between participants (stream header, chunks, trailer, RPC request and response, data
  packet) is delivered asynchronously and in send order, like LiveKit's reliable data channel;
- RPC to an unknown method fails with UNSUPPORTED_METHOD, to an absent participant with
  RECIPIENT_NOT_FOUND, and a handler's exception comes back as APPLICATION_ERROR;
- a published track counts as subscribed once a participant with auto-subscribe is in the room;
- leaving (or being removed) emits participant_disconnected on everyone else, and disconnected (with
  the reason) on the one who left.
- with `activation_delay_s`, a newcomer is ACTIVE only after that delay, while its data flows at once
  (what a real server does; the stock avatar receiver listens only from ACTIVE on).
Not modelled: media transport, bandwidth, reconnection, permissions beyond the room grant.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from livekit import api, rtc

API_KEY = "devkey"
API_SECRET = "memory-room-secret-that-is-long-enough"
URL = "ws://memory.invalid"

Kind = Literal["standard", "egress", "ingress", "sip", "agent"]

_KINDS = {
    "": rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
    "standard": rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
    "agent": rtc.ParticipantKind.PARTICIPANT_KIND_AGENT,
    "ingress": rtc.ParticipantKind.PARTICIPANT_KIND_INGRESS,
    "egress": rtc.ParticipantKind.PARTICIPANT_KIND_EGRESS,
    "sip": rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
}


def _sid(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@dataclass
class RpcRecord:
    caller: str
    destination: str
    method: str
    payload: str
    response: str | None = None
    error: str | None = None
    at: float = field(default_factory=time.monotonic)  # when it was sent
    handled_at: float | None = None  # when the recipient's handler returned


@dataclass
class DataRecord:
    sender: str
    topic: str
    payload: bytes


@dataclass
class StreamRecord:
    sender: str
    topic: str
    destinations: list[str]
    attributes: dict[str, str]
    size: int = 0
    closed: bool = False
    delivered_to: list[str] = field(default_factory=list)  # recipients that had a handler for the topic


class MemoryServer:
    """The 'server': rooms by name, token verification, and logs of what crossed the data channel."""

    def __init__(
        self, api_key: str = API_KEY, api_secret: str = API_SECRET, *, activation_delay_s: float = 0.0
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        # A real server announces a newcomer as JOINING and reports it ACTIVE only once its media
        # connection is up, while its data already flows: set a delay to see that order.
        self.activation_delay_s = activation_delay_s
        self.rooms: dict[str, dict[str, MemoryRoom]] = {}
        self.rpc_log: list[RpcRecord] = []
        self.data_log: list[DataRecord] = []
        self.stream_log: list[StreamRecord] = []

    def token(
        self,
        identity: str,
        room: str,
        *,
        kind: Kind = "standard",
        name: str | None = None,
        attributes: dict[str, str] | None = None,
    ) -> str:
        grants = api.VideoGrants(
            room_join=True, room=room, can_publish=True, can_subscribe=True, can_publish_data=True
        )
        token = (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_name(name or identity)
            .with_kind(kind)
            .with_grants(grants)
        )
        if attributes:
            token = token.with_attributes(attributes)
        return token.to_jwt()

    def new_room(self) -> MemoryRoom:
        return MemoryRoom(self)

    async def connect(
        self, identity: str, room: str, *, kind: Kind = "standard", auto_subscribe: bool = True, **kw: Any
    ) -> MemoryRoom:
        client = self.new_room()
        await client.connect(
            URL, self.token(identity, room, kind=kind, **kw), rtc.RoomOptions(auto_subscribe)
        )
        return client

    def participants(self, room: str) -> list[str]:
        return list(self.rooms.get(room, {}))

    async def remove_participant(self, room: str, identity: str) -> None:
        """What RoomService.RemoveParticipant does: the participant is disconnected by the server."""
        member = self.rooms.get(room, {}).get(identity)
        if member is None:
            raise api.TwirpError("not_found", "participant not found", status=404)
        await member._leave(rtc.DisconnectReason.PARTICIPANT_REMOVED)

    def rpcs(self, method: str, *, caller: str | None = None) -> list[RpcRecord]:
        return [r for r in self.rpc_log if r.method == method and (caller is None or r.caller == caller)]

    def data(self, topic: str, *, sender: str | None = None) -> list[DataRecord]:
        return [d for d in self.data_log if d.topic == topic and (sender is None or d.sender == sender)]

    def _member(self, room: str, identity: str) -> MemoryRoom | None:
        return self.rooms.get(room, {}).get(identity)


def _deliver(fn: Callable[..., Any], *args: Any) -> None:
    # One loop, FIFO callbacks: messages arrive asynchronously and in the order they were sent.
    asyncio.get_running_loop().call_soon(fn, *args)


class MemoryRemoteTrackPublication:
    def __init__(self, local: MemoryLocalTrackPublication) -> None:
        self.sid = local.sid
        self.name = local.name
        self.kind = local.kind
        self.source = local.source
        self.track: Any = None
        self.subscribed = False
        self.muted = False


class MemoryRemoteParticipant:
    def __init__(self, local: MemoryLocalParticipant) -> None:
        self.sid = local.sid
        self.identity = local.identity
        self.name = local.name
        self.kind = local.kind
        self.metadata = ""
        self.attributes = dict(local.attributes)
        self.state = rtc.ParticipantState.PARTICIPANT_STATE_ACTIVE
        self.track_publications: dict[str, MemoryRemoteTrackPublication] = {}
        self.disconnect_reason: int | None = None


class MemoryLocalTrackPublication:
    def __init__(self, track: Any, options: rtc.TrackPublishOptions) -> None:
        self.sid = _sid("TR_")
        self.name = track.name
        self.kind = track.kind
        self.source = options.source
        self.track = track
        self.muted = False
        self._subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def wait_for_subscription(self) -> None:
        await asyncio.shield(self._subscribed)

    def _mark_subscribed(self) -> None:
        if not self._subscribed.done():
            self._subscribed.set_result(None)


class MemoryByteStreamReader:
    def __init__(self, info: rtc.ByteStreamInfo) -> None:
        self.info = info
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._done = False

    def __aiter__(self) -> MemoryByteStreamReader:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        chunk = await self._queue.get()
        if chunk is None:
            self._done = True
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        self._done = True


class MemoryTextStreamReader(MemoryByteStreamReader):
    def __aiter__(self) -> MemoryTextStreamReader:
        return self

    async def __anext__(self) -> str:  # type: ignore[override]
        return (await super().__anext__()).decode()

    async def read_all(self) -> str:
        return "".join([chunk async for chunk in self])


class _StreamWriter:
    def __init__(self, info: Any, readers: list[MemoryByteStreamReader], record: StreamRecord) -> None:
        self.info = info
        self._readers = readers
        self._record = record

    async def _write(self, data: bytes) -> None:
        if self._record.closed:
            raise RuntimeError("stream is closed")
        self._record.size += len(data)
        for reader in self._readers:
            _deliver(reader._queue.put_nowait, bytes(data))

    async def aclose(self, *, reason: str = "", attributes: dict[str, str] | None = None) -> None:
        if self._record.closed:
            return
        self._record.closed = True
        for reader in self._readers:
            _deliver(reader._queue.put_nowait, None)


class MemoryByteStreamWriter(_StreamWriter):
    async def write(self, data: bytes) -> None:
        await self._write(data)


class MemoryTextStreamWriter(_StreamWriter):
    async def write(self, text: str) -> None:
        await self._write(text.encode())


class MemoryLocalParticipant:
    def __init__(self, room: MemoryRoom) -> None:
        self._room = room
        self.sid = _sid("PA_")
        self.identity = ""
        self.name = ""
        self.kind = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD
        self.metadata = ""
        self.attributes: dict[str, str] = {}
        self.track_publications: dict[str, MemoryLocalTrackPublication] = {}
        self._rpc_handlers: dict[str, Callable[[rtc.RpcInvocationData], Any]] = {}

    # -- RPC -------------------------------------------------------------------------------------------
    def register_rpc_method(self, method_name: str, handler: Callable[..., Any] | None = None) -> Any:
        if handler is None:

            def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
                self._rpc_handlers[method_name] = fn
                return fn

            return decorator
        self._rpc_handlers[method_name] = handler
        return handler

    def unregister_rpc_method(self, method: str) -> None:
        self._rpc_handlers.pop(method, None)

    async def perform_rpc(
        self,
        *,
        destination_identity: str,
        method: str,
        payload: str,
        response_timeout: float | None = None,
        max_round_trip_latency: float | None = None,
    ) -> str:
        server = self._room._server
        record = RpcRecord(self.identity, destination_identity, method, payload)
        server.rpc_log.append(record)
        loop = asyncio.get_running_loop()
        response: asyncio.Future[str] = loop.create_future()

        def respond(result: str | None, error: rtc.RpcError | None) -> None:
            record.response, record.error = result, (error.message if error else None)
            if response.done():
                return
            if error is not None:
                response.set_exception(error)
            else:
                response.set_result(result or "")

        def invoke() -> None:
            target = server._member(self._room.name, destination_identity)
            if target is None:
                err = rtc.RpcError(rtc.RpcError.ErrorCode.RECIPIENT_NOT_FOUND, "Recipient not found")
                _deliver(respond, None, err)
                return
            handler = target.local_participant._rpc_handlers.get(method)
            if handler is None:
                err = rtc.RpcError(rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD, "Method not supported")
                _deliver(respond, None, err)
                return
            data = rtc.RpcInvocationData(
                _sid("RPC_"), self.identity, payload, response_timeout or 15.0, method
            )

            async def run() -> None:
                try:
                    result = handler(data)
                    if asyncio.iscoroutine(result):
                        result = await result
                    record.handled_at = time.monotonic()
                    _deliver(respond, str(result) if result is not None else "", None)
                except rtc.RpcError as exc:
                    _deliver(respond, None, exc)
                except Exception as exc:
                    _deliver(respond, None, rtc.RpcError(rtc.RpcError.ErrorCode.APPLICATION_ERROR, str(exc)))

            target._spawn(run())

        _deliver(invoke)
        try:
            return await asyncio.wait_for(response, response_timeout or 15.0)
        except TimeoutError:
            raise rtc.RpcError(rtc.RpcError.ErrorCode.RESPONSE_TIMEOUT, "Response timeout") from None

    # -- data streams and packets ----------------------------------------------------------------------
    def _open_stream(
        self,
        topic: str,
        destinations: list[str] | None,
        attributes: dict[str, str] | None,
        text: bool,
        **info: Any,
    ) -> tuple[list[MemoryByteStreamReader], StreamRecord, Any]:
        server = self._room._server
        record = StreamRecord(self.identity, topic, list(destinations or []), dict(attributes or {}))
        server.stream_log.append(record)
        stream_id = info.pop("stream_id", None) or _sid("ST_")
        common = dict(
            stream_id=stream_id,
            topic=topic,
            timestamp=int(time.time() * 1000),
            size=info.pop("total_size", None),
            attributes=dict(attributes or {}),
        )
        if text:
            stream_info: Any = rtc.TextStreamInfo(mime_type="text/plain", attachments=[], **common)
        else:
            stream_info = rtc.ByteStreamInfo(
                mime_type=info.pop("mime_type", "application/octet-stream"),
                name=info.pop("name", ""),
                **common,
            )
        readers: list[MemoryByteStreamReader] = []
        for target in self._room._others():
            if destinations and target.local_participant.identity not in destinations:
                continue
            handlers = target._text_handlers if text else target._byte_handlers
            handler = handlers.get(topic)
            if handler is None:
                continue  # the real SDK drops streams nobody handles
            reader = MemoryTextStreamReader(stream_info) if text else MemoryByteStreamReader(stream_info)
            readers.append(reader)
            record.delivered_to.append(target.local_participant.identity)
            _deliver(handler, reader, self.identity)
        return readers, record, stream_info

    async def stream_bytes(
        self,
        name: str,
        *,
        total_size: int | None = None,
        mime_type: str = "application/octet-stream",
        attributes: dict[str, str] | None = None,
        stream_id: str | None = None,
        destination_identities: list[str] | None = None,
        topic: str = "",
    ) -> MemoryByteStreamWriter:
        readers, record, info = self._open_stream(
            topic,
            destination_identities,
            attributes,
            False,
            name=name,
            mime_type=mime_type,
            stream_id=stream_id,
            total_size=total_size,
        )
        return MemoryByteStreamWriter(info, readers, record)

    async def stream_text(
        self,
        *,
        destination_identities: list[str] | None = None,
        topic: str = "",
        attributes: dict[str, str] | None = None,
        stream_id: str | None = None,
        reply_to_id: str | None = None,
        total_size: int | None = None,
        sender_identity: str | None = None,
    ) -> MemoryTextStreamWriter:
        readers, record, info = self._open_stream(
            topic, destination_identities, attributes, True, stream_id=stream_id, total_size=total_size
        )
        return MemoryTextStreamWriter(info, readers, record)

    async def send_text(
        self,
        text: str,
        *,
        destination_identities: list[str] | None = None,
        topic: str = "",
        attributes: dict[str, str] | None = None,
        **_: Any,
    ) -> rtc.TextStreamInfo:
        writer = await self.stream_text(
            destination_identities=destination_identities, topic=topic, attributes=attributes
        )
        await writer.write(text)
        await writer.aclose()
        return writer.info

    async def publish_data(
        self,
        payload: bytes | str,
        *,
        reliable: bool = True,
        destination_identities: list[str] | None = None,
        topic: str = "",
    ) -> None:
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        self._room._server.data_log.append(DataRecord(self.identity, topic, data))
        for target in self._room._others():
            if destination_identities and target.local_participant.identity not in destination_identities:
                continue
            sender = target.remote_participants.get(self.identity)
            packet = rtc.DataPacket(
                data=data,
                kind=rtc.DataPacketKind.KIND_RELIABLE,
                participant=sender,  # type: ignore[arg-type]
                topic=topic,
            )
            _deliver(target.emit, "data_received", packet)

    # -- tracks and attributes -------------------------------------------------------------------------
    async def publish_track(self, track: Any, options: rtc.TrackPublishOptions | None = None) -> Any:
        pub = MemoryLocalTrackPublication(track, options or rtc.TrackPublishOptions())
        self.track_publications[pub.sid] = pub
        self._room.emit("local_track_published", pub, track)
        for target in self._room._others():
            target._add_remote_publication(self.identity, pub)
        return pub

    async def unpublish_track(self, track_sid: str) -> None:
        pub = self.track_publications.pop(track_sid, None)
        if pub is None:
            return
        self._room.emit("local_track_unpublished", pub)
        for target in self._room._others():
            remote = target.remote_participants.get(self.identity)
            if remote is not None and (rpub := remote.track_publications.pop(track_sid, None)) is not None:
                _deliver(target.emit, "track_unpublished", rpub, remote)

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        self.attributes.update(attributes)
        for target in self._room._others():
            remote = target.remote_participants.get(self.identity)
            if remote is not None:
                remote.attributes.update(attributes)
                _deliver(target.emit, "participant_attributes_changed", list(attributes), remote)


class MemoryRoom(rtc.EventEmitter[str]):
    """A client's view of a room: the subset of `rtc.Room` that livekit-agents and Facecast use."""

    def __init__(self, server: MemoryServer) -> None:
        super().__init__()
        self._server = server
        self.name = ""
        self.metadata = ""
        self.local_participant = MemoryLocalParticipant(self)
        self.remote_participants: dict[str, MemoryRemoteParticipant] = {}
        self.connection_state = rtc.ConnectionState.CONN_DISCONNECTED
        self.auto_subscribe = True
        self._byte_handlers: dict[str, Callable[..., Any]] = {}
        self._text_handlers: dict[str, Callable[..., Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def isconnected(self) -> bool:
        return self.connection_state == rtc.ConnectionState.CONN_CONNECTED

    async def connect(self, url: str, token: str, options: rtc.RoomOptions | None = None) -> None:
        claims = api.TokenVerifier(self._server.api_key, self._server.api_secret).verify(token)
        grants = claims.video
        if grants is None or not grants.room_join or not grants.room:
            raise rtc.ConnectError("token does not grant joining a room")
        self.name = grants.room
        me = self.local_participant
        me.identity = claims.identity
        me.name = claims.name or ""
        me.kind = _KINDS.get(claims.kind or "", rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD)
        me.attributes = dict(claims.attributes or {})
        self.auto_subscribe = options.auto_subscribe if options is not None else True

        members = self._server.rooms.setdefault(self.name, {})
        if (old := members.get(me.identity)) is not None:
            await old._leave(rtc.DisconnectReason.DUPLICATE_IDENTITY)
        for other in members.values():
            self.remote_participants[other.local_participant.identity] = MemoryRemoteParticipant(
                other.local_participant
            )
        members[me.identity] = self
        self.connection_state = rtc.ConnectionState.CONN_CONNECTED
        for other in list(members.values()):
            if other is self:
                continue
            # existing publications become visible (and subscribed, with auto-subscribe) to the newcomer
            for pub in other.local_participant.track_publications.values():
                self._add_remote_publication(other.local_participant.identity, pub, announce=False)
            other._add_remote_participant(self)
        self.emit("connection_state_changed", self.connection_state)
        self.emit("connected")

    async def disconnect(self, *, reason: int = rtc.DisconnectReason.CLIENT_INITIATED) -> None:
        await self._leave(reason)

    async def aclose(self) -> None:
        await self.disconnect()

    def register_byte_stream_handler(self, topic: str, handler: Callable[..., Any]) -> None:
        if topic in self._byte_handlers:
            raise ValueError(f"byte stream handler for topic '{topic}' already set")
        self._byte_handlers[topic] = handler

    def unregister_byte_stream_handler(self, topic: str) -> None:
        self._byte_handlers.pop(topic, None)

    def register_text_stream_handler(self, topic: str, handler: Callable[..., Any]) -> None:
        if topic in self._text_handlers:
            raise ValueError(f"text stream handler for topic '{topic}' already set")
        self._text_handlers[topic] = handler

    def unregister_text_stream_handler(self, topic: str) -> None:
        self._text_handlers.pop(topic, None)

    # -- the server's side -----------------------------------------------------------------------------
    def _others(self) -> list[MemoryRoom]:
        members = self._server.rooms.get(self.name, {})
        return [m for m in members.values() if m is not self]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _add_remote_participant(self, other: MemoryRoom) -> None:
        remote = MemoryRemoteParticipant(other.local_participant)
        self.remote_participants[remote.identity] = remote
        delay = self._server.activation_delay_s
        if delay > 0:
            remote.state = rtc.ParticipantState.PARTICIPANT_STATE_JOINED
        _deliver(self.emit, "participant_connected", remote)
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._activate, remote)
        else:
            _deliver(self.emit, "participant_active", remote)

    def _activate(self, remote: MemoryRemoteParticipant) -> None:
        if self.remote_participants.get(remote.identity) is remote:
            remote.state = rtc.ParticipantState.PARTICIPANT_STATE_ACTIVE
            self.emit("participant_active", remote)

    def _add_remote_publication(
        self, owner: str, pub: MemoryLocalTrackPublication, *, announce: bool = True
    ) -> None:
        remote = self.remote_participants.get(owner)
        if remote is None:
            return
        rpub = MemoryRemoteTrackPublication(pub)
        remote.track_publications[rpub.sid] = rpub
        if announce:
            _deliver(self.emit, "track_published", rpub, remote)
        if self.auto_subscribe:
            rpub.subscribed = True
            rpub.track = pub.track  # the local track itself: tests can read its media back in-process
            _deliver(pub._mark_subscribed)
            _deliver(self.emit, "track_subscribed", pub.track, rpub, remote)

    async def _leave(self, reason: int) -> None:
        if not self.isconnected():
            return
        members = self._server.rooms.get(self.name, {})
        if members.get(self.local_participant.identity) is self:
            del members[self.local_participant.identity]
        for other in members.values():
            remote = other.remote_participants.pop(self.local_participant.identity, None)
            if remote is not None:
                remote.state = rtc.ParticipantState.PARTICIPANT_STATE_DISCONNECTED
                remote.disconnect_reason = reason
                _deliver(other.emit, "participant_disconnected", remote)
        self.remote_participants.clear()
        self.connection_state = rtc.ConnectionState.CONN_DISCONNECTED
        self.emit("connection_state_changed", self.connection_state)
        self.emit("disconnected", reason)
        for task in list(self._tasks):
            task.cancel()

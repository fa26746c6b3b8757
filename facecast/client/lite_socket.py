"""A session's LITE WebSocket: speech up (`agent.speak` PCM16 24 kHz, or text), interrupt, the listening
pose, keep-alive; the server's events down (`facecast.protocol` names them)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from facecast import protocol as p

DEFAULT_WAIT_S = 30.0
SPEAK_CHUNK_S = 0.1  # agent.speak messages as a streaming TTS sends them
EventHandler = Callable[[dict[str, Any]], Awaitable[None] | None]
EventMatch = Callable[[dict[str, Any]], bool]


class LiteSocket:
    """The WebSocket of one started session. A reader task (owned here, ended by `close`) keeps every
    event with its arrival time (`events`, unless `keep_events` is False) and hands each to `on_event`."""

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, on_event: EventHandler | None, keep_events: bool
    ) -> None:
        """Use `connect`."""
        self._ws = ws
        self._on_event = on_event
        self._keep = keep_events
        self.events: list[tuple[float, dict[str, Any]]] = []  # (time.monotonic() on arrival, event)
        self._new_event = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        http: aiohttp.ClientSession,
        ws_url: str,
        *,
        on_event: EventHandler | None = None,
        keep_events: bool = True,
    ) -> LiteSocket:
        """Open the socket (the session's `ws_url` carries its token) and start reading events."""
        socket = cls(await http.ws_connect(ws_url, max_msg_size=0), on_event, keep_events)
        socket._reader = asyncio.create_task(socket._read(), name="facecast-lite-socket")
        return socket

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def wait_connected(self, timeout: float = DEFAULT_WAIT_S) -> None:
        """Until the session reports the socket `connected` (speech sent before then is refused)."""
        await self.wait_event(
            lambda e: e["type"] == p.SESSION_STATE_UPDATED and e.get("state") == p.WS_STATE_CONNECTED,
            timeout=timeout,
        )

    async def wait_event(
        self, match: EventMatch, since: int = 0, timeout: float = DEFAULT_WAIT_S
    ) -> tuple[float, dict[str, Any]]:
        """The first kept event from index `since` on that matches, with its arrival time."""
        if not self._keep:
            raise RuntimeError("this socket keeps no events (keep_events=False): use on_event")
        deadline = time.monotonic() + timeout
        while True:
            for stamped in self.events[since:]:
                if match(stamped[1]):
                    return stamped
            since = len(self.events)
            self._new_event.clear()
            left = deadline - time.monotonic()
            seen = [event.get("type") for _, event in self.events[-20:]]
            if left <= 0:
                raise TimeoutError(f"no matching event within {timeout:.0f} s (last events: {seen})")
            if self._reader is not None and self._reader.done():
                raise ConnectionError(f"the LITE WebSocket closed without a matching event (last: {seen})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_event.wait(), left)

    # -- client -> server -----------------------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> float:
        """Send one message; the time it was sent (time.monotonic)."""
        return await self.send_text(json.dumps(message))

    async def send_text(self, text: str) -> float:
        """Send one message as it is given (already JSON, or not: a test of the server's refusals)."""
        await self._ws.send_str(text)
        return time.monotonic()

    async def speak(self, event_id: str, pcm: bytes) -> float:
        """One `agent.speak` message: PCM16 little-endian mono at 24 kHz (at most 10 s)."""
        audio = base64.b64encode(pcm).decode("ascii")
        return await self.send({"type": p.AGENT_SPEAK, "event_id": event_id, "audio": audio})

    async def speak_end(self, event_id: str) -> float:
        """The utterance `event_id` is complete: the server plays it out and reports `agent.speak_ended`."""
        return await self.send({"type": p.AGENT_SPEAK_END, "event_id": event_id})

    async def speak_text(self, event_id: str, text: str) -> float:
        """Speech by the server's own TTS."""
        return await self.send({"type": p.AGENT_SPEAK_TEXT, "event_id": event_id, "text": text})

    async def interrupt(self) -> float:
        return await self.send({"type": p.AGENT_INTERRUPT})

    async def set_listening(self, listening: bool) -> float:
        """The attentive pose while the user talks (`agent.start_listening` / `agent.stop_listening`)."""
        return await self.send({"type": p.AGENT_START_LISTENING if listening else p.AGENT_STOP_LISTENING})

    async def keep_alive(self) -> float:
        return await self.send({"type": p.SESSION_KEEP_ALIVE})

    async def close(self) -> None:
        """Close the socket and end the reader; idempotent."""
        await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                event = json.loads(message.data)
                if self._keep:
                    self.events.append((time.monotonic(), event))
                    self._new_event.set()
                if self._on_event is not None:
                    handled = self._on_event(event)
                    if inspect.isawaitable(handled):
                        await handled
        finally:
            self._new_event.set()  # a waiter sees the end


def pcm_chunks(pcm: bytes, seconds: float = SPEAK_CHUNK_S) -> list[bytes]:
    """24 kHz PCM16 split into `agent.speak` chunks of `seconds` each."""
    step = int(p.LITE_AUDIO_RATE * seconds) * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]

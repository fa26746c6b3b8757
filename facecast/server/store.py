"""The server's persistent store: API keys, session records and avatar records, in SQLite (default) or
PostgreSQL.

The API is synchronous and thread-safe: the asyncio server calls it directly because every query is a
small indexed lookup. Times are unix seconds. Secrets never reach the database, only their hashes
(facecast.server.auth.hash_secret). Several API servers may share one PostgreSQL database, so every
state transition is a single conditional statement in the database, never a read-modify-write here.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import astuple, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import psycopg

from facecast.protocol import (
    AVATAR_BUILDING,
    AVATAR_FAILED,
    AVATAR_READY,
    AVATAR_STATUSES,
    END_KEY_REVOKED,
    END_REASONS,
    END_SERVER_LOST,
    END_TOKEN_EXPIRED,
    STATE_CREATED,
    STATE_ENDED,
    STATE_STARTED,
)
from facecast.server.auth import hash_secret, key_prefix, new_api_key
from facecast.server.session_settings import SessionSettings

DEV_KEY_NAME = "dev"
DEV_KEY_FILE = "dev-key"
SQLITE_FILE = "facecast.db"
ACCEPTED_URLS = (
    "sqlite:///ABSOLUTE/PATH.db, sqlite:RELATIVE/PATH.db, or postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
)
_PG_MIGRATION_LOCK = 0x46434D47  # pg_advisory_xact_lock id: servers starting together migrate one at a time
MAX_OFFSET = 2**63 - 1  # OFFSET is a signed 64-bit integer in SQLite and PostgreSQL
_MIN_PREFIX_LEN = 5  # "key_" / "fck_" alone would match every key


# What a call raises while the database cannot be reached (a restart, a network cut, a locked file).
UNREACHABLE_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, sqlite3.OperationalError)


class StoreError(RuntimeError):
    """The database cannot be opened or has a schema this version does not know."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    created_at: float
    revoked_at: float | None
    max_concurrent: int | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass
class SessionRecord:
    id: str
    key_id: str
    mode: str
    avatar_id: str
    is_sandbox: bool
    transport: str
    settings: SessionSettings
    state: str  # protocol.STATE_*
    token_hash: str
    token_expires_at: float
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    last_activity_at: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None  # the API server that runs (or minted) it, when several share the database

    @property
    def duration_s(self) -> float | None:
        """Seconds since start, up to the end if it has ended; None if it never started."""
        if self.started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else time.time()
        return max(0.0, end - self.started_at)


@dataclass
class AvatarRecord:
    """An avatar uploaded or built through the API; its bundle is `<data_dir>/avatars/<id>.facecast`."""

    avatar_id: str
    owner: str  # the API key id that created it; no other key sees it
    display_name: str
    kind: str  # the bundle's kind: portrait (built from a photo) or whatever an uploaded bundle holds
    status: str  # protocol.AVATAR_*: building -> ready | failed
    progress: float  # 0..1 while building
    stage: str  # what the build is doing ("queued", "analysing the face", ..., "done")
    error: str | None  # why it failed
    source: str  # protocol.AVATAR_SOURCE_*: upload | url | bundle
    source_sha256: str | None  # of the uploaded bytes: the same upload by the same key is not built twice
    created_at: float
    updated_at: float
    server: str | None = None  # the API server that runs (or ran) the build


@dataclass
class ContextRecord:
    """A persona for FULL sessions: the LLM's system prompt and what the avatar says first."""

    id: str
    owner: str
    name: str
    prompt: str
    opening_text: str
    created_at: float
    updated_at: float


@dataclass
class SecretRecord:
    """A credential (e.g. an LLM API key); only its ciphertext is stored (facecast.server.secret_box)."""

    id: str
    owner: str
    secret_name: str
    secret_type: str
    ciphertext: str
    created_at: float
    updated_at: float


@dataclass
class LlmConfigRecord:
    """An OpenAI-compatible chat endpoint: model, base URL (None: OpenAI's) and the secret of its key."""

    id: str
    owner: str
    display_name: str
    model_name: str
    secret_id: str | None
    base_url: str | None
    created_at: float
    updated_at: float


OwnedRecord = ContextRecord | SecretRecord | LlmConfigRecord
# Each owned resource's table; the record's fields are its columns.
RESOURCE_TABLES: dict[type, str] = {
    ContextRecord: "contexts",
    SecretRecord: "secrets",
    LlmConfigRecord: "llm_configurations",
}


def new_avatar_id() -> str:
    """`av_` + 12 hex digits: a valid bundle name, so it is also the library id."""
    return "av_" + secrets.token_hex(6)


def new_session_id() -> str:
    return "ses_" + secrets.token_hex(16)


def _new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


class Store(Protocol):
    def create_key(self, name: str, *, max_concurrent: int | None = None) -> tuple[ApiKey, str]:
        """A new key and its secret; the secret is returned only here, the store keeps its hash."""
        ...

    def authenticate_key(self, secret: str) -> ApiKey | None:
        """The key with this secret; None if unknown or revoked."""
        ...

    def get_key(self, key_id: str) -> ApiKey | None: ...

    def list_keys(self) -> list[ApiKey]:
        """All keys, revoked ones included, newest first."""
        ...

    def revoke_key(self, key_id_or_prefix: str) -> ApiKey | None:
        """Revoke the key with this id, or whose id or secret starts with this; None if no key matches.
        Idempotent. ValueError if several keys match."""
        ...

    def insert_session(self, record: SessionRecord, *, max_active: int | None = None) -> bool:
        """Store a new session. With `max_active`, only while its key has fewer active sessions, checked
        and inserted atomically (several servers may mint for one key at once); False when at the cap."""
        ...

    def start_session(
        self, session_id: str, *, started_at: float, token_expires_at: float, owner: str
    ) -> bool:
        """Mark a created session started by `owner`; False unless it was still `created` (of starts racing
        on any thread or server, one wins)."""
        ...

    def get_session(self, session_id: str) -> SessionRecord | None: ...

    def session_by_token_hash(self, token_hash: str) -> SessionRecord | None: ...

    def update_session(self, session_id: str, **fields: Any) -> bool:
        """Set these fields; False if the session is unknown, or `state` was given and it has ended.
        ValueError for unknown fields and for those only end_session may set."""
        ...

    def end_session(
        self, session_id: str, reason: str, ended_at: float, stats: dict[str, Any] | None = None
    ) -> bool:
        """End the session unless it has already ended (then False): every session ends exactly once."""
        ...

    def count_active(self, key_id: str) -> int: ...

    def list_sessions(
        self, key_id: str | None, *, active: bool, page: int = 1, page_size: int = 20
    ) -> tuple[list[SessionRecord], int]:
        """One page of live (active=True) or ended sessions, newest first, and the number of all matches."""
        ...

    def end_key_sessions(self, key_id: str, reason: str, ended_at: float) -> int:
        """End every session of this key that has not ended; how many."""
        ...

    def renew_lease(self, server: str, now: float, lease_s: float) -> None:
        """`server` is alive and owns its sessions until `now + lease_s`."""
        ...

    def release_lease(self, server: str) -> None:
        """`server` stopped cleanly (its sessions are ended): forget its lease."""
        ...

    def sweep_sessions(self, now: float, *, server: str) -> dict[str, int]:
        """End the sessions nobody may run any more, whichever server owns them: those of revoked keys
        (key_revoked), those of servers other than `server` whose lease expired (server_lost), and
        unstarted ones whose token expired (token_expired). How many, by reason."""
        ...

    def end_live_sessions(self, reason: str, ended_at: float, *, owner: str | None = None) -> int:
        """End every session that has not ended (crash recovery at start-up), only those of `owner` if
        given (other servers' sessions on a shared database are still running); how many."""
        ...

    def insert_avatar(
        self, record: AvatarRecord, *, max_building: int | None = None, unique_source: bool = False
    ) -> AvatarRecord | None:
        """Store a new avatar and return it. With `unique_source`, an avatar of the same owner made from
        the same bytes (building or ready) is returned instead and nothing is stored; with `max_building`,
        nothing is stored while the owner has that many avatars building (None). The checks and the
        insert are one atomic step across threads, processes and servers."""
        ...

    def get_avatar(self, avatar_id: str) -> AvatarRecord | None: ...

    def list_avatars(self, owner: str) -> list[AvatarRecord]:
        """This key's avatars, oldest first."""
        ...

    def avatar_by_source(self, owner: str, source_sha256: str) -> AvatarRecord | None:
        """The key's building or ready avatar made from these bytes, if any (failed ones do not count)."""
        ...

    def count_building(self, owner: str) -> int: ...

    def update_avatar(self, avatar_id: str, *, if_status: str | None = None, **fields: Any) -> bool:
        """Set these fields (and updated_at); with `if_status` only while the avatar has that status.
        False if the avatar is unknown (deleted) or not in that status."""
        ...

    def delete_avatar(self, avatar_id: str) -> bool:
        """Remove the record; False if there was none."""
        ...

    def fail_building_avatars(self, error: str, now: float, *, server: str | None = None) -> list[str]:
        """Mark every building avatar failed (crash recovery at start-up), only `server`'s if given;
        the ids."""
        ...

    def insert_owned(self, record: OwnedRecord) -> None:
        """Store a new context, secret or LLM configuration."""
        ...

    def get_owned(self, kind: type[OwnedRecord], owner: str, record_id: str) -> OwnedRecord | None:
        """The record of this kind with this id, if `owner` owns it."""
        ...

    def list_owned(self, kind: type[OwnedRecord], owner: str) -> list[OwnedRecord]:
        """The owner's records of this kind, oldest first."""
        ...

    def update_owned(self, kind: type[OwnedRecord], owner: str, record_id: str, /, **fields: Any) -> bool:
        """Set these fields (and updated_at); False if the owner has no such record."""
        ...

    def delete_owned(self, kind: type[OwnedRecord], owner: str, record_id: str) -> bool:
        """Remove the record; False if the owner had none."""
        ...

    def close(self) -> None: ...


# -- schema -------------------------------------------------------------------------------------------
# Migration N takes the schema from version N to N+1; never edit a released one, append a new one.
# {real}, {bool} and {json} are filled in per database.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            secret_hash TEXT NOT NULL UNIQUE,
            created_at {real} NOT NULL,
            revoked_at {real},
            max_concurrent INTEGER
        )""",
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            key_id TEXT NOT NULL REFERENCES api_keys (id),
            mode TEXT NOT NULL,
            avatar_id TEXT NOT NULL,
            is_sandbox {bool} NOT NULL,
            transport TEXT NOT NULL,
            settings {json} NOT NULL,
            state TEXT NOT NULL,
            token_hash TEXT NOT NULL,
            token_expires_at {real} NOT NULL,
            created_at {real} NOT NULL,
            started_at {real},
            ended_at {real},
            end_reason TEXT,
            last_activity_at {real},
            stats {json} NOT NULL,
            owner TEXT
        )""",
        "CREATE UNIQUE INDEX sessions_token_hash ON sessions (token_hash)",
        "CREATE INDEX sessions_key_id ON sessions (key_id, created_at)",
        "CREATE INDEX sessions_state ON sessions (state)",
    ),
    (
        """CREATE TABLE avatars (
            avatar_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL REFERENCES api_keys (id),
            display_name TEXT NOT NULL,
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            progress {real} NOT NULL,
            stage TEXT NOT NULL,
            error TEXT,
            source TEXT NOT NULL,
            source_sha256 TEXT,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL,
            server TEXT
        )""",
        "CREATE INDEX avatars_owner ON avatars (owner, created_at)",
        "CREATE INDEX avatars_source ON avatars (owner, source_sha256)",
        "CREATE INDEX avatars_status ON avatars (status)",
    ),
    (
        # Who owns a session is its server's lease, renewed while that server runs: an address can be
        # reused by another server, or a killed server come back elsewhere.
        """CREATE TABLE servers (
            id TEXT PRIMARY KEY,
            lease_expires_at {real} NOT NULL
        )""",
        "CREATE INDEX servers_lease ON servers (lease_expires_at)",
        "CREATE INDEX sessions_owner ON sessions (owner, state)",
    ),
    (
        # FULL mode's resources (facecast.server.routes.resources), each owned by one API key.
        """CREATE TABLE contexts (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL REFERENCES api_keys (id),
            name TEXT NOT NULL,
            prompt TEXT NOT NULL,
            opening_text TEXT NOT NULL,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL
        )""",
        "CREATE INDEX contexts_owner ON contexts (owner, created_at)",
        """CREATE TABLE secrets (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL REFERENCES api_keys (id),
            secret_name TEXT NOT NULL,
            secret_type TEXT NOT NULL,
            ciphertext TEXT NOT NULL,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL
        )""",
        "CREATE INDEX secrets_owner ON secrets (owner, created_at)",
        """CREATE TABLE llm_configurations (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL REFERENCES api_keys (id),
            display_name TEXT NOT NULL,
            model_name TEXT NOT NULL,
            secret_id TEXT,
            base_url TEXT,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL
        )""",
        "CREATE INDEX llm_configurations_owner ON llm_configurations (owner, created_at)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_KEY_COLUMNS = ", ".join(f.name for f in fields(ApiKey))
_SESSION_FIELDS = tuple(f.name for f in fields(SessionRecord))
_SESSION_COLUMNS = ", ".join(_SESSION_FIELDS)
_JSON_FIELDS = frozenset({"settings", "stats"})
_END_ONLY_FIELDS = frozenset({"ended_at", "end_reason"})
_FIXED_FIELDS = frozenset({"id", "key_id", "created_at"})
_AVATAR_FIELDS = tuple(f.name for f in fields(AvatarRecord))
_AVATAR_COLUMNS = ", ".join(_AVATAR_FIELDS)
_Run = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]  # runs one statement in a transaction: its rows
# The owner's oldest building or ready avatar made from these bytes (failed builds do not count).
_AVATAR_BY_SOURCE = (
    f"SELECT {_AVATAR_COLUMNS} FROM avatars WHERE owner = ? AND source_sha256 = ? "
    f"AND status IN ('{AVATAR_BUILDING}', '{AVATAR_READY}') ORDER BY created_at LIMIT 1"
)
_AVATAR_FIXED_FIELDS = frozenset({"avatar_id", "owner", "created_at", "source", "source_sha256"})


def _check_schema_version(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema version {version}, newer than this facecast knows "
            f"({SCHEMA_VERSION}); upgrade facecast"
        )


def _check_reason(reason: str) -> None:
    if reason not in END_REASONS:
        raise ValueError(f"unknown end reason {reason!r}; expected one of {', '.join(END_REASONS)}")


def _encode(name: str, value: Any) -> Any:
    if isinstance(value, SessionSettings):
        value = value.to_json()
    return json.dumps(value, separators=(",", ":")) if name in _JSON_FIELDS else value


def _decode_json(value: Any) -> dict[str, Any]:
    # SQLite hands back the JSON text, psycopg an already-parsed JSONB value.
    return json.loads(value) if isinstance(value, str) else value


def _check_avatar_status(status: str) -> None:
    if status not in AVATAR_STATUSES:
        raise ValueError(f"unknown avatar status {status!r}; expected one of {', '.join(AVATAR_STATUSES)}")


def _avatar(row: Sequence[Any]) -> AvatarRecord:
    return AvatarRecord(*row)


def _session(row: Sequence[Any]) -> SessionRecord:
    values = dict(zip(_SESSION_FIELDS, row, strict=True))
    values["is_sandbox"] = bool(values["is_sandbox"])
    for name in _JSON_FIELDS:
        values[name] = _decode_json(values[name])
    values["settings"] = SessionSettings.from_json(values["settings"], avatar=values["avatar_id"])
    return SessionRecord(**values)


class _Result(NamedTuple):
    rows: list[tuple[Any, ...]]
    rowcount: int


class _SqlStore(ABC):
    """Everything but the connection: SQL written once, with `?` placeholders."""

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> _Result: ...

    @abstractmethod
    def close(self) -> None: ...

    # -- keys ---------------------------------------------------------------------------------------
    def create_key(self, name: str, *, max_concurrent: int | None = None) -> tuple[ApiKey, str]:
        name = name.strip()
        if not name:
            raise ValueError("a key needs a name")
        if max_concurrent is not None and max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        secret = new_api_key()
        key = ApiKey(_new_key_id(), name, key_prefix(secret), time.time(), None, max_concurrent)
        self._execute(
            f"INSERT INTO api_keys ({_KEY_COLUMNS}, secret_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*astuple(key), hash_secret(secret)),
        )
        return key, secret

    def authenticate_key(self, secret: str) -> ApiKey | None:
        rows = self._execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE secret_hash = ?", (hash_secret(secret),)
        ).rows
        key = ApiKey(*rows[0]) if rows else None
        return None if key is None or key.revoked else key

    def get_key(self, key_id: str) -> ApiKey | None:
        rows = self._execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).rows
        return ApiKey(*rows[0]) if rows else None

    def list_keys(self) -> list[ApiKey]:
        rows = self._execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at DESC, id DESC").rows
        return [ApiKey(*row) for row in rows]

    def revoke_key(self, key_id_or_prefix: str) -> ApiKey | None:
        wanted = key_id_or_prefix.strip()
        keys = self.list_keys()  # a handful of rows; matching here keeps LIKE's `_` wildcard out of it
        matches = [k for k in keys if wanted in (k.id, k.prefix)]
        if not matches:
            if len(wanted) < _MIN_PREFIX_LEN:
                raise ValueError(
                    f"{wanted!r} is too short to pick a key: give its id or at least "
                    f"{_MIN_PREFIX_LEN} characters of its id or prefix"
                )
            matches = [k for k in keys if k.id.startswith(wanted) or k.prefix.startswith(wanted)]
        if not matches:
            return None
        if len(matches) > 1:
            ids = ", ".join(k.id for k in matches)
            raise ValueError(f"{wanted!r} matches {len(matches)} keys ({ids}); give the full key id")
        self._execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), matches[0].id),
        )
        return self.get_key(matches[0].id)

    # -- sessions -----------------------------------------------------------------------------------
    def insert_session(self, record: SessionRecord, *, max_active: int | None = None) -> bool:
        if record.state not in (STATE_CREATED, STATE_STARTED):
            raise ValueError(f"a new session is {STATE_CREATED} or {STATE_STARTED}, not {record.state!r}")
        placeholders = ", ".join("?" for _ in _SESSION_FIELDS)
        values = [_encode(name, getattr(record, name)) for name in _SESSION_FIELDS]
        insert = f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES ({placeholders})"
        if max_active is None:
            self._execute(insert, values)
            return True
        count = f"SELECT COUNT(*) FROM sessions WHERE key_id = ? AND state <> '{STATE_ENDED}'"
        with self._key_transaction(record.key_id) as run:
            if run(count, (record.key_id,))[0][0] >= max_active:
                return False
            run(insert, values)
            return True

    @abstractmethod
    def _key_transaction(self, key_id: str) -> AbstractContextManager[_Run]:
        """A context: one transaction holding API key `key_id`'s lock (across threads, processes and
        servers) until it commits; yields a function that runs a statement in it and returns its rows."""

    def start_session(
        self, session_id: str, *, started_at: float, token_expires_at: float, owner: str
    ) -> bool:
        result = self._execute(
            f"UPDATE sessions SET state = '{STATE_STARTED}', started_at = ?, last_activity_at = ?, "
            f"token_expires_at = ?, owner = ? WHERE id = ? AND state = '{STATE_CREATED}'",
            (started_at, started_at, token_expires_at, owner, session_id),
        )
        return result.rowcount == 1

    def get_session(self, session_id: str) -> SessionRecord | None:
        rows = self._execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).rows
        return _session(rows[0]) if rows else None

    def session_by_token_hash(self, token_hash: str) -> SessionRecord | None:
        rows = self._execute(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE token_hash = ?", (token_hash,)
        ).rows
        return _session(rows[0]) if rows else None

    def update_session(self, session_id: str, **fields: Any) -> bool:
        if not fields:
            raise ValueError("no fields to update")
        for name in fields:
            if name not in _SESSION_FIELDS:
                raise ValueError(f"unknown session field {name!r}")
            if name in _FIXED_FIELDS:
                raise ValueError(f"a session's {name} cannot change")
            if name in _END_ONLY_FIELDS:
                raise ValueError(f"{name} is set by end_session")
        if "state" in fields and fields["state"] not in (STATE_CREATED, STATE_STARTED):
            raise ValueError(f"state {fields['state']!r} cannot be set here; end sessions with end_session")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        # An ended session must never come back to life, e.g. a start racing an idle timeout.
        guard = f" AND state <> '{STATE_ENDED}'" if "state" in fields else ""
        values = [_encode(name, value) for name, value in fields.items()]
        result = self._execute(
            f"UPDATE sessions SET {assignments} WHERE id = ?{guard}", (*values, session_id)
        )
        return result.rowcount == 1

    def end_session(
        self, session_id: str, reason: str, ended_at: float, stats: dict[str, Any] | None = None
    ) -> bool:
        _check_reason(reason)
        # One conditional UPDATE is the compare-and-set: of concurrent enders, from any thread or server,
        # exactly one sees its row come back.
        rows = self._execute(
            f"UPDATE sessions SET state = '{STATE_ENDED}', ended_at = ?, end_reason = ?, "
            f"stats = COALESCE(?, stats) WHERE id = ? AND state <> '{STATE_ENDED}' RETURNING id",
            (ended_at, reason, None if stats is None else _encode("stats", stats), session_id),
        ).rows
        return len(rows) == 1

    def count_active(self, key_id: str) -> int:
        rows = self._execute(
            f"SELECT COUNT(*) FROM sessions WHERE key_id = ? AND state <> '{STATE_ENDED}'", (key_id,)
        ).rows
        return int(rows[0][0])

    def list_sessions(
        self, key_id: str | None, *, active: bool, page: int = 1, page_size: int = 20
    ) -> tuple[list[SessionRecord], int]:
        if page < 1 or page_size < 1:
            raise ValueError(f"page and page_size start at 1, got page={page}, page_size={page_size}")
        if (page - 1) * page_size > MAX_OFFSET:
            raise ValueError(f"page {page} of {page_size} starts past the last row a database can hold")
        where = f"state {'<>' if active else '='} '{STATE_ENDED}'"
        params: list[Any] = []
        if key_id is not None:
            where += " AND key_id = ?"
            params.append(key_id)
        total = int(self._execute(f"SELECT COUNT(*) FROM sessions WHERE {where}", params).rows[0][0])
        rows = self._execute(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE {where} "
            "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            (*params, page_size, (page - 1) * page_size),
        ).rows
        return [_session(row) for row in rows], total

    def end_key_sessions(self, key_id: str, reason: str, ended_at: float) -> int:
        _check_reason(reason)
        return self._execute(
            f"UPDATE sessions SET state = '{STATE_ENDED}', ended_at = ?, end_reason = ? "
            f"WHERE key_id = ? AND state <> '{STATE_ENDED}'",
            (ended_at, reason, key_id),
        ).rowcount

    def renew_lease(self, server: str, now: float, lease_s: float) -> None:
        self._execute(
            "INSERT INTO servers (id, lease_expires_at) VALUES (?, ?) "
            "ON CONFLICT (id) DO UPDATE SET lease_expires_at = excluded.lease_expires_at",
            (server, now + lease_s),
        )

    def release_lease(self, server: str) -> None:
        self._execute("DELETE FROM servers WHERE id = ?", (server,))

    def sweep_sessions(self, now: float, *, server: str) -> dict[str, int]:
        live = f"state <> '{STATE_ENDED}'"
        end = f"UPDATE sessions SET state = '{STATE_ENDED}', ended_at = ?, end_reason = ? WHERE {live} AND "
        revoked = self._execute(
            end + "key_id IN (SELECT id FROM api_keys WHERE revoked_at IS NOT NULL)", (now, END_KEY_REVOKED)
        ).rowcount
        lost = self._execute(
            end + "owner <> ? AND owner IN (SELECT id FROM servers WHERE lease_expires_at < ?)",
            (now, END_SERVER_LOST, server, now),
        ).rowcount
        expired = self._execute(
            end + f"state = '{STATE_CREATED}' AND token_expires_at <= ?", (now, END_TOKEN_EXPIRED, now)
        ).rowcount
        return {END_KEY_REVOKED: revoked, END_SERVER_LOST: lost, END_TOKEN_EXPIRED: expired}

    def end_live_sessions(self, reason: str, ended_at: float, *, owner: str | None = None) -> int:
        _check_reason(reason)
        where, params = f"state <> '{STATE_ENDED}'", [ended_at, reason]
        if owner is not None:
            where += " AND owner = ?"
            params.append(owner)
        return self._execute(
            f"UPDATE sessions SET state = '{STATE_ENDED}', ended_at = ?, end_reason = ? WHERE {where}", params
        ).rowcount

    # -- avatars ------------------------------------------------------------------------------------
    def insert_avatar(
        self, record: AvatarRecord, *, max_building: int | None = None, unique_source: bool = False
    ) -> AvatarRecord | None:
        _check_avatar_status(record.status)
        placeholders = ", ".join("?" for _ in _AVATAR_FIELDS)
        values = list(astuple(record))
        insert = f"INSERT INTO avatars ({_AVATAR_COLUMNS}) VALUES ({placeholders})"
        if max_building is None and not unique_source:
            self._execute(insert, values)
            return record
        with self._key_transaction(record.owner) as run:
            if unique_source and record.source_sha256 is not None:
                rows = run(_AVATAR_BY_SOURCE, (record.owner, record.source_sha256))
                if rows:
                    return _avatar(rows[0])
            count = f"SELECT COUNT(*) FROM avatars WHERE owner = ? AND status = '{AVATAR_BUILDING}'"
            if max_building is not None and run(count, (record.owner,))[0][0] >= max_building:
                return None
            run(insert, values)
            return record

    def get_avatar(self, avatar_id: str) -> AvatarRecord | None:
        rows = self._execute(f"SELECT {_AVATAR_COLUMNS} FROM avatars WHERE avatar_id = ?", (avatar_id,)).rows
        return _avatar(rows[0]) if rows else None

    def list_avatars(self, owner: str) -> list[AvatarRecord]:
        rows = self._execute(
            f"SELECT {_AVATAR_COLUMNS} FROM avatars WHERE owner = ? ORDER BY created_at, avatar_id", (owner,)
        ).rows
        return [_avatar(row) for row in rows]

    def avatar_by_source(self, owner: str, source_sha256: str) -> AvatarRecord | None:
        rows = self._execute(_AVATAR_BY_SOURCE, (owner, source_sha256)).rows
        return _avatar(rows[0]) if rows else None

    def count_building(self, owner: str) -> int:
        rows = self._execute(
            f"SELECT COUNT(*) FROM avatars WHERE owner = ? AND status = '{AVATAR_BUILDING}'", (owner,)
        ).rows
        return int(rows[0][0])

    def update_avatar(self, avatar_id: str, *, if_status: str | None = None, **fields: Any) -> bool:
        if not fields:
            raise ValueError("no fields to update")
        for name in fields:
            if name not in _AVATAR_FIELDS:
                raise ValueError(f"unknown avatar field {name!r}")
            if name in _AVATAR_FIXED_FIELDS:
                raise ValueError(f"an avatar's {name} cannot change")
        if "status" in fields:
            _check_avatar_status(fields["status"])
        fields.setdefault("updated_at", time.time())
        assignments = ", ".join(f"{name} = ?" for name in fields)
        where, params = "avatar_id = ?", [*fields.values(), avatar_id]
        if if_status is not None:
            # The compare-and-set that keeps a finished build from reviving a deleted or failed avatar.
            where += " AND status = ?"
            params.append(if_status)
        return self._execute(f"UPDATE avatars SET {assignments} WHERE {where}", params).rowcount == 1

    def delete_avatar(self, avatar_id: str) -> bool:
        return self._execute("DELETE FROM avatars WHERE avatar_id = ?", (avatar_id,)).rowcount == 1

    def fail_building_avatars(self, error: str, now: float, *, server: str | None = None) -> list[str]:
        where, params = f"status = '{AVATAR_BUILDING}'", [error, now]
        if server is not None:
            where += " AND server = ?"
            params.append(server)
        rows = self._execute(
            f"UPDATE avatars SET status = '{AVATAR_FAILED}', stage = 'failed', error = ?, updated_at = ? "
            f"WHERE {where} RETURNING avatar_id",
            params,
        ).rows
        return sorted(row[0] for row in rows)

    # -- owned resources: contexts, secrets, LLM configurations --------------------------------------
    def insert_owned(self, record: OwnedRecord) -> None:
        names = [f.name for f in fields(record)]
        placeholders = ", ".join("?" for _ in names)
        self._execute(
            f"INSERT INTO {RESOURCE_TABLES[type(record)]} ({', '.join(names)}) VALUES ({placeholders})",
            astuple(record),
        )

    def get_owned(self, kind: type[OwnedRecord], owner: str, record_id: str) -> OwnedRecord | None:
        columns = ", ".join(f.name for f in fields(kind))
        rows = self._execute(
            f"SELECT {columns} FROM {RESOURCE_TABLES[kind]} WHERE id = ? AND owner = ?", (record_id, owner)
        ).rows
        return kind(*rows[0]) if rows else None

    def list_owned(self, kind: type[OwnedRecord], owner: str) -> list[OwnedRecord]:
        columns = ", ".join(f.name for f in fields(kind))
        rows = self._execute(
            f"SELECT {columns} FROM {RESOURCE_TABLES[kind]} WHERE owner = ? ORDER BY created_at, id", (owner,)
        ).rows
        return [kind(*row) for row in rows]

    def update_owned(self, kind: type[OwnedRecord], owner: str, record_id: str, /, **values: Any) -> bool:
        allowed = {f.name for f in fields(kind)} - {"id", "owner", "created_at"}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"cannot set {', '.join(unknown)} of a {RESOURCE_TABLES[kind]} record")
        values.setdefault("updated_at", time.time())
        assignments = ", ".join(f"{name} = ?" for name in values)
        result = self._execute(
            f"UPDATE {RESOURCE_TABLES[kind]} SET {assignments} WHERE id = ? AND owner = ?",
            (*values.values(), record_id, owner),
        )
        return result.rowcount == 1

    def delete_owned(self, kind: type[OwnedRecord], owner: str, record_id: str) -> bool:
        result = self._execute(
            f"DELETE FROM {RESOURCE_TABLES[kind]} WHERE id = ? AND owner = ?", (record_id, owner)
        )
        return result.rowcount == 1


class SQLiteStore(_SqlStore):
    """A single SQLite file (WAL mode), one connection behind a lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit (isolation_level=None): each statement is its own transaction, except the
            # migration, which opens one explicitly. timeout waits out other processes' write locks.
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        try:
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException as exc:
            self._conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
            raise

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")  # take the write lock before reading the version
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            _check_schema_version(version)
            types = {"real": "REAL", "bool": "INTEGER", "json": "TEXT"}
            for migration in _MIGRATIONS[version:]:
                for statement in migration:
                    conn.execute(statement.format(**types))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> _Result:
        with self._lock:
            cursor = self._conn.execute(sql, params)
            rows = cursor.fetchall()
            return _Result(rows, cursor.rowcount)

    @contextmanager
    def _key_transaction(self, key_id: str) -> Iterator[_Run]:
        with self._lock:
            # The database write lock, whatever the key: no other process reads or writes meanwhile.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield lambda sql, params: self._conn.execute(sql, params).fetchall()
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresStore(_SqlStore):
    """PostgreSQL through psycopg 3: one autocommit connection behind a lock, reconnected once if broken."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        try:
            self._conn = self._connect()
        except psycopg.Error as exc:
            # The message names host and port, never the password.
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        try:
            self._migrate()
        except BaseException as exc:
            self._conn.close()
            if isinstance(exc, psycopg.Error):  # e.g. no right to create tables
                raise StoreError(f"cannot set up the PostgreSQL schema: {exc}") from exc
            raise

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(self._url, autocommit=True, connect_timeout=10)

    def _migrate(self) -> None:
        conn = self._conn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS facecast_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            row = conn.execute("SELECT value FROM facecast_meta WHERE name = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            _check_schema_version(version)
            types = {"real": "DOUBLE PRECISION", "bool": "BOOLEAN", "json": "JSONB"}
            for migration in _MIGRATIONS[version:]:
                for statement in migration:
                    conn.execute(statement.format(**types))
            conn.execute(
                "INSERT INTO facecast_meta (name, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                (str(SCHEMA_VERSION),),
            )

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> _Result:
        query = sql.replace("?", "%s")
        with self._lock:
            try:
                return self._run(query, params)
            except psycopg.OperationalError:
                if not self._conn.broken:
                    raise
            # Retrying is safe: inserts are keyed by id and every update is conditional, so a statement
            # that did commit before the connection dropped cannot apply twice.
            self._conn = self._connect()
            return self._run(query, params)

    @contextmanager
    def _key_transaction(self, key_id: str) -> Iterator[_Run]:
        with self._lock, self._conn.transaction():
            # One lock per key, held to commit; under READ COMMITTED what is read after it includes every
            # row another server inserted while holding it.
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key_id,))
            yield lambda sql, params: self._run(sql.replace("?", "%s"), params).rows

    def _run(self, query: str, params: Sequence[Any]) -> _Result:
        cursor = self._conn.execute(query, params)
        rows = cursor.fetchall() if cursor.description is not None else []
        return _Result(rows, cursor.rowcount)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_store(url: str | None, data_dir: Path) -> Store:
    """The store a database URL names; None means SQLite in `data_dir`.

    Accepted: sqlite:///ABSOLUTE/PATH.db, sqlite:RELATIVE/PATH.db (relative to the working directory),
    postgresql://... or postgres://... (any libpq URL).
    """
    if url is None:
        return SQLiteStore(Path(data_dir) / SQLITE_FILE)
    scheme, colon, rest = url.partition(":")
    scheme = scheme.lower()
    if colon and scheme == "sqlite":
        path = rest
        if rest.startswith("//"):
            path = rest[2:]  # sqlite:///abs: an empty host, then the absolute path
            if not path.startswith("/"):
                raise ValueError(f"{url!r} has a host; use {ACCEPTED_URLS}")
        if path.strip("/") == "":
            raise ValueError(f"{url!r} names no file; use {ACCEPTED_URLS}")
        return SQLiteStore(Path(path).expanduser())
    if colon and scheme in ("postgresql", "postgres") and rest.startswith("//"):
        return PostgresStore(url)
    # Only the scheme is echoed: the rest of a URL may hold a password.
    shown = f"{scheme}:..." if colon else "a URL without a scheme"
    raise ValueError(f"unsupported database URL ({shown}); use {ACCEPTED_URLS}")


def ensure_dev_key(store: Store, data_dir: Path) -> str:
    """The secret of the local demo's API key ("dev"), created on first use.

    The secret is saved in `data_dir/dev-key` (mode 0600) and reused while that key exists and is not
    revoked; otherwise a new key replaces it. A plaintext secret on disk is acceptable only for this
    local development key, so the demo works in one command; keys for real clients come from
    `facecast keys create` and exist only as hashes.
    """
    path = Path(data_dir) / DEV_KEY_FILE
    try:
        saved = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        saved = ""
    if saved and store.authenticate_key(saved) is not None:
        return saved
    _key, secret = store.create_key(DEV_KEY_NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover file
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")
    os.replace(partial, path)  # readers never see a half-written key
    return secret

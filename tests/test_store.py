"""The persistent store (SQLite and PostgreSQL), secrets, and `facecast keys`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from pg import postgres_server, postgres_url, with_options  # noqa: F401  (fixtures)

from facecast import protocol
from facecast.avatars.look import Look
from facecast.cli.keys import add_keys_parser, run_keys
from facecast.server.auth import (
    default_data_dir,
    hash_secret,
    key_prefix,
    new_api_key,
    new_session_token,
    parse_bearer,
)
from facecast.server.session_settings import SessionSettings
from facecast.server.store import (
    SessionRecord,
    Store,
    StoreError,
    ensure_dev_key,
    new_session_id,
    open_store,
)

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for an empty store of each kind."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/db/facecast.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture()
def reopen(url: str, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens another store on the same database (a restart, or a second server); all closed at the end."""
    opened: list[Store] = []

    def make() -> Store:
        opened.append(open_store(url, tmp_path))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


@pytest.fixture()
def store(reopen: Callable[[], Store]) -> Store:
    return reopen()


def make_session(
    key_id: str, *, created_at: float = 1000.0, state: str = protocol.STATE_CREATED
) -> SessionRecord:
    return SessionRecord(
        id=new_session_id(),
        key_id=key_id,
        mode="LITE",
        avatar_id="ava",
        is_sandbox=True,
        transport="webrtc",
        settings=SessionSettings(
            look=Look(avatar="ava", aspect="4:3"),
            encoding="VP8",
            max_session_duration=60,
            interactivity_type="CONVERSATIONAL",
        ),
        state=state,
        token_hash=hash_secret(new_session_token()),
        token_expires_at=created_at + 60,
        created_at=created_at,
    )


def raw_contents(url: str, tmp_path: Path) -> str:
    """Everything the database holds about keys and sessions, as text, read around the store."""
    if url.startswith("sqlite:"):
        # The WAL file may hold rows not yet checkpointed into the main file.
        files = sorted((tmp_path / "db").glob("facecast.db*"))
        return "".join(f.read_bytes().decode("latin-1") for f in files)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT k::text FROM api_keys k UNION ALL SELECT s::text FROM sessions s")
        return "\n".join(row[0] for row in rows.fetchall())


# -- secrets ------------------------------------------------------------------------------------------
def test_secret_formats() -> None:
    key, token = new_api_key(), new_session_token()
    assert key.startswith("fck_") and len(key) == 44
    assert token.startswith("fst_") and len(token) == 47
    assert new_api_key() != key
    assert all(c.isalnum() or c in "-_" for c in key + token)
    assert hash_secret(key) == hash_secret(key) != hash_secret(token)
    # SHA-256 as lowercase hex: keys already stored are found by it, so it may never change.
    assert re.fullmatch("[0-9a-f]{64}", hash_secret(key))
    assert hash_secret("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert key_prefix(key) == key[:12]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer fck_abc", "fck_abc"),
        ("bearer   fck_abc  ", "fck_abc"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic dXNlcjpwdw==", None),
        ("Bearer a b", None),
        ("fck_abc", None),
    ],
)
def test_parse_bearer(header: str | None, expected: str | None) -> None:
    assert parse_bearer(header) == expected


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FACECAST_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "facecast"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "facecast"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "facecast"
    monkeypatch.setenv("FACECAST_DATA_DIR", str(tmp_path / "explicit"))
    assert default_data_dir() == tmp_path / "explicit"


# -- keys ---------------------------------------------------------------------------------------------
def test_create_authenticate_list(store: Store) -> None:
    key, secret = store.create_key(" app ", max_concurrent=3)
    other, other_secret = store.create_key("other")
    assert key.id.startswith("key_") and len(key.id) == 20
    assert (key.name, key.prefix, key.max_concurrent, key.revoked) == ("app", secret[:12], 3, False)
    assert other.max_concurrent is None
    assert store.authenticate_key(secret) == key
    assert store.authenticate_key(other_secret) == other
    assert store.authenticate_key(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert store.authenticate_key("") is None
    assert store.get_key(key.id) == key
    assert store.get_key("key_0000000000000000") is None
    listed = store.list_keys()
    assert {k.id for k in listed} == {key.id, other.id}
    assert listed[0].created_at >= listed[1].created_at  # newest first
    with pytest.raises(ValueError, match="name"):
        store.create_key("  ")
    with pytest.raises(ValueError, match="at least 1"):
        store.create_key("zero", max_concurrent=0)


def test_revoke(store: Store) -> None:
    key, secret = store.create_key("a")
    other, other_secret = store.create_key("b")
    revoked = store.revoke_key(key.id)
    assert revoked is not None and revoked.id == key.id and revoked.revoked
    assert store.authenticate_key(secret) is None
    assert store.authenticate_key(other_secret) == other
    again = store.revoke_key(key.id)  # idempotent: the first revocation time stays
    assert again == revoked
    assert [k.revoked for k in store.list_keys() if k.id == key.id] == [True]  # listed, marked revoked
    by_prefix = store.revoke_key(other.prefix[:9])  # the start of the prefix a listing shows
    assert by_prefix is not None and by_prefix.id == other.id and store.authenticate_key(other_secret) is None
    assert store.revoke_key("key_ffffffffffffffff") is None
    assert store.revoke_key("fck_nothing-like-this") is None
    with pytest.raises(ValueError, match="too short"):
        store.revoke_key("key_")


def test_revoke_ambiguous_prefix(store: Store) -> None:
    # Ids are "key_" + hex: among 17 keys, two share their first hex digit.
    keys = [store.create_key(f"k{i}")[0] for i in range(17)]
    by_start: dict[str, list[str]] = {}
    for k in keys:
        by_start.setdefault(k.id[:5], []).append(k.id)
    shared, ids = next((start, ids) for start, ids in by_start.items() if len(ids) > 1)
    with pytest.raises(ValueError, match=f"matches {len(ids)} keys") as raised:
        store.revoke_key(shared)
    assert all(i in str(raised.value) for i in ids)
    assert not any(k.revoked for k in store.list_keys())
    assert store.revoke_key(ids[0]) is not None  # the full id is never ambiguous


def test_only_hashes_stored(store: Store, url: str, tmp_path: Path) -> None:
    key, secret = store.create_key("app")
    token = new_session_token()
    record = make_session(key.id)
    record.token_hash = hash_secret(token)
    store.insert_session(record)
    contents = raw_contents(url, tmp_path)
    assert hash_secret(secret) in contents and record.token_hash in contents  # the reading works
    assert secret not in contents and secret[12:] not in contents
    assert token not in contents


# -- sessions -----------------------------------------------------------------------------------------
def test_session_insert_get_update(store: Store) -> None:
    key, _ = store.create_key("app")
    record = make_session(key.id)
    store.insert_session(record)
    assert store.get_session(record.id) == record
    assert store.session_by_token_hash(record.token_hash) == record
    assert store.get_session("ses_missing") is None
    assert store.session_by_token_hash(hash_secret("nope")) is None

    settings = dataclasses.replace(
        record.settings, look=record.settings.look.replace(fps=25), max_session_duration=120
    )
    assert store.update_session(
        record.id, state=protocol.STATE_STARTED, started_at=1010.0, last_activity_at=1011.5, settings=settings
    )
    got = store.get_session(record.id)
    assert got is not None
    assert (got.state, got.started_at, got.last_activity_at, got.settings) == (
        protocol.STATE_STARTED,
        1010.0,
        1011.5,
        settings,
    )
    assert got.is_sandbox is True and got.stats == {}
    assert not store.update_session("ses_missing", last_activity_at=1.0)
    for bad in ({"colour": "red"}, {"ended_at": 5.0}, {"end_reason": "stopped"}, {"key_id": "key_x"}, {}):
        with pytest.raises(ValueError):
            store.update_session(record.id, **bad)
    with pytest.raises(ValueError, match="end_session"):
        store.update_session(record.id, state=protocol.STATE_ENDED)
    with pytest.raises(ValueError):
        store.insert_session(make_session(key.id, state=protocol.STATE_ENDED))
    assert store.get_session(record.id) == got  # failed calls changed nothing


def test_duration() -> None:
    record = make_session("key_x")
    assert record.duration_s is None
    record.started_at = 100.0
    assert record.duration_s is not None and record.duration_s > 1e9  # still live: measured up to now
    record.ended_at = 130.5
    assert record.duration_s == 30.5


def test_end_session_once(store: Store) -> None:
    key, _ = store.create_key("app")
    record = make_session(key.id)
    store.insert_session(record)
    store.update_session(record.id, state=protocol.STATE_STARTED, started_at=1001.0, stats={"frames": 1})
    with pytest.raises(ValueError, match="end reason"):
        store.end_session(record.id, "bored", 1002.0)
    assert store.end_session(record.id, protocol.END_IDLE, 1100.0, stats={"frames": 2970})
    assert not store.end_session(record.id, protocol.END_STOPPED, 1200.0, stats={"frames": 0})
    assert not store.end_session("ses_missing", protocol.END_STOPPED, 1200.0)
    ended = store.get_session(record.id)
    assert ended is not None
    assert (ended.state, ended.end_reason, ended.ended_at, ended.stats) == (
        protocol.STATE_ENDED,
        protocol.END_IDLE,
        1100.0,
        {"frames": 2970},
    )
    assert ended.duration_s == 99.0
    # A start that lost the race to the end must not bring the session back.
    assert not store.update_session(record.id, state=protocol.STATE_STARTED)
    assert store.update_session(record.id, last_activity_at=1300.0)  # bookkeeping still lands
    after = store.get_session(record.id)
    assert after is not None and after.state == protocol.STATE_ENDED and after.last_activity_at == 1300.0

    kept = make_session(key.id)
    store.insert_session(kept)
    store.update_session(kept.id, stats={"frames": 7})
    assert store.end_session(kept.id, protocol.END_STOPPED, 1100.0)  # no stats given: the last ones stay
    got = store.get_session(kept.id)
    assert got is not None and got.stats == {"frames": 7}


def race_to_end(stores: list[Store], session_id: str, threads_n: int) -> list[bool]:
    """Thread i ends the session at time 2000 + i through stores[i % len(stores)], all at once."""
    barrier = threading.Barrier(threads_n)
    results: list[bool] = [False] * threads_n

    def end(i: int) -> None:
        barrier.wait()
        store = stores[i % len(stores)]
        results[i] = store.end_session(session_id, protocol.END_CLIENT_GONE, 2000.0 + i)

    threads = [threading.Thread(target=end, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_ends_exactly_one_wins(reopen: Callable[[], Store]) -> None:
    # Two stores are two connections, as two API servers would have; four threads on each.
    stores = [reopen(), reopen()]
    key, _ = stores[0].create_key("app")
    for _ in range(10):
        record = make_session(key.id)
        stores[0].insert_session(record)
        results = race_to_end(stores, record.id, 8)
        assert results.count(True) == 1
        stored = stores[1].get_session(record.id)
        assert stored is not None and stored.ended_at == 2000.0 + results.index(True)


def test_count_active_and_list(store: Store) -> None:
    a, _ = store.create_key("a")
    b, _ = store.create_key("b")
    a_sessions = [make_session(a.id, created_at=1000.0 + i) for i in range(8)]
    b_sessions = [make_session(b.id, created_at=1000.5 + i) for i in range(2)]
    for record in a_sessions + b_sessions:
        store.insert_session(record)
    store.update_session(a_sessions[1].id, state=protocol.STATE_STARTED, started_at=1500.0)
    for record in a_sessions[5:]:
        assert store.end_session(record.id, protocol.END_STOPPED, 2000.0)
    assert (store.count_active(a.id), store.count_active(b.id), store.count_active("key_none")) == (5, 2, 0)

    def ids(key_id: str | None, active: bool, page: int, page_size: int) -> tuple[list[str], int]:
        records, total = store.list_sessions(key_id, active=active, page=page, page_size=page_size)
        return [r.id for r in records], total

    live_a = [r.id for r in reversed(a_sessions[:5])]  # newest first
    assert ids(a.id, True, 1, 2) == (live_a[0:2], 5)
    assert ids(a.id, True, 2, 2) == (live_a[2:4], 5)
    assert ids(a.id, True, 3, 2) == (live_a[4:], 5)
    assert ids(a.id, True, 4, 2) == ([], 5)
    assert ids(a.id, False, 1, 20) == ([r.id for r in reversed(a_sessions[5:])], 3)
    assert ids(b.id, False, 1, 20) == ([], 0)
    everyone = sorted(a_sessions[:5] + b_sessions, key=lambda r: r.created_at, reverse=True)
    assert ids(None, True, 1, 20) == ([r.id for r in everyone], 7)
    assert store.list_sessions(a.id, active=True)[0][0] == store.get_session(live_a[0])  # full records
    with pytest.raises(ValueError):
        store.list_sessions(a.id, active=True, page=0)
    with pytest.raises(ValueError):
        store.list_sessions(a.id, active=True, page_size=0)


def test_end_live_sessions(store: Store) -> None:
    key, _ = store.create_key("app")
    created, started, ended, elsewhere = (make_session(key.id) for _ in range(4))
    for record in (created, started, ended, elsewhere):
        record.owner = "server-a"
        store.insert_session(record)
    store.update_session(started.id, state=protocol.STATE_STARTED, started_at=1001.0)
    store.update_session(elsewhere.id, state=protocol.STATE_STARTED, owner="server-b")  # taken over
    store.end_session(ended.id, protocol.END_STOPPED, 1002.0)
    with pytest.raises(ValueError):
        store.end_live_sessions("crashed", 1003.0)

    def outcome() -> dict[str, tuple[str | None, float | None]]:
        records = [store.get_session(r.id) for r in (created, started, ended, elsewhere)]
        return {r.id: (r.end_reason, r.ended_at) for r in records if r is not None}

    # Server a restarts: only its own live sessions end, b's keeps running.
    assert store.end_live_sessions(protocol.END_SERVER_SHUTDOWN, 1003.0, owner="server-a") == 2
    assert store.end_live_sessions(protocol.END_SERVER_SHUTDOWN, 1003.0, owner="server-c") == 0
    assert outcome() == {
        created.id: (protocol.END_SERVER_SHUTDOWN, 1003.0),
        started.id: (protocol.END_SERVER_SHUTDOWN, 1003.0),
        ended.id: (protocol.END_STOPPED, 1002.0),
        elsewhere.id: (None, None),
    }
    assert store.end_live_sessions(protocol.END_SERVER_SHUTDOWN, 1004.0) == 1  # no owner: every one
    assert outcome()[elsewhere.id] == (protocol.END_SERVER_SHUTDOWN, 1004.0)
    assert store.count_active(key.id) == 0
    assert store.end_live_sessions(protocol.END_SERVER_SHUTDOWN, 1005.0) == 0


def test_a_session_starts_once(reopen: Callable[[], Store]) -> None:
    a, b = reopen(), reopen()  # two servers on one database
    key, _ = a.create_key("app")
    record = make_session(key.id)
    a.insert_session(record)
    assert a.start_session(record.id, started_at=1001.0, token_expires_at=2000.0, owner="server-a")
    assert not b.start_session(record.id, started_at=1002.0, token_expires_at=2000.0, owner="server-b")
    started = b.get_session(record.id)
    assert started is not None and (started.state, started.owner, started.started_at) == (
        protocol.STATE_STARTED,
        "server-a",
        1001.0,
    )
    a.end_session(record.id, protocol.END_STOPPED, 1003.0)
    assert not a.start_session(record.id, started_at=1004.0, token_expires_at=2000.0, owner="server-a")


def test_sweep_ends_sessions_of_lost_servers_revoked_keys_and_expired_tokens(store: Store) -> None:
    key, _ = store.create_key("app")
    revoked_key, _ = store.create_key("gone")
    store.renew_lease("alive", 1000.0, 15.0)  # until 1015
    store.renew_lease("dead", 980.0, 15.0)  # until 995
    records = {name: make_session(key.id, created_at=990.0) for name in ("alive", "dead", "me", "expired")}
    records["revoked"] = make_session(revoked_key.id, created_at=990.0)
    for name, record in records.items():
        record.owner = {"expired": "alive", "revoked": "alive"}.get(name, name)
        record.token_expires_at = 990.0 if name == "expired" else 2000.0
        store.insert_session(record)
    for name in ("alive", "dead", "me"):
        store.start_session(records[name].id, started_at=991.0, token_expires_at=2000.0, owner=name)
    store.renew_lease("me", 900.0, 15.0)  # this server's own lease lapsed (the database was down)
    store.revoke_key(revoked_key.id)

    swept = store.sweep_sessions(1000.0, server="me")
    assert swept == {protocol.END_KEY_REVOKED: 1, protocol.END_SERVER_LOST: 1, protocol.END_TOKEN_EXPIRED: 1}
    reasons = {name: store.get_session(r.id).end_reason for name, r in records.items()}  # type: ignore[union-attr]
    assert reasons == {
        "alive": None,
        "dead": protocol.END_SERVER_LOST,
        "me": None,  # never its own: this server is alive, it renews once the database is back
        "expired": protocol.END_TOKEN_EXPIRED,
        "revoked": protocol.END_KEY_REVOKED,
    }
    assert store.count_active(key.id) == 2
    assert store.sweep_sessions(1000.0, server="me") == dict.fromkeys(swept, 0)
    store.release_lease("alive")  # a clean stop: nothing of it is swept afterwards
    assert store.sweep_sessions(5000.0, server="me")[protocol.END_SERVER_LOST] == 0
    assert store.end_key_sessions(key.id, protocol.END_KEY_REVOKED, 1001.0) == 2
    assert store.count_active(key.id) == 0


def test_restart_loses_nothing(reopen: Callable[[], Store]) -> None:
    first = reopen()
    key, secret = first.create_key("app", max_concurrent=2)
    revoked, _ = first.create_key("old")
    first.revoke_key(revoked.id)
    live, done = make_session(key.id, created_at=1.0), make_session(key.id, created_at=2.0)
    live.owner = "host:8000"
    first.insert_session(live)
    first.insert_session(done)
    first.update_session(live.id, state=protocol.STATE_STARTED, started_at=3.0, stats={"frames": 5})
    first.end_session(done.id, protocol.END_MAX_DURATION, 4.0, stats={"frames": 9})
    before = (first.list_keys(), first.get_session(live.id), first.get_session(done.id))
    first.close()

    second = reopen()
    assert (second.list_keys(), second.get_session(live.id), second.get_session(done.id)) == before
    assert second.authenticate_key(secret) == key
    assert second.count_active(key.id) == 1


def test_newer_schema_is_refused(reopen: Callable[[], Store], url: str, tmp_path: Path) -> None:
    reopen().close()
    if url.startswith("sqlite:"):
        with sqlite3.connect(tmp_path / "db" / "facecast.db") as conn:
            conn.execute("PRAGMA user_version = 99")
        conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute("UPDATE facecast_meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99"):
        reopen()


@pytest.mark.parametrize("url", ["postgres"], indirect=True)
def test_postgres_reconnects(url: str, tmp_path: Path) -> None:
    name = "facecast-reconnect"
    store = open_store(with_options(url, application_name=name), tmp_path)
    try:
        key, secret = store.create_key("app")
        with psycopg.connect(url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchall()
        assert killed == [(True,)]
        assert store.authenticate_key(secret) == key  # the first query after the drop reconnects
    finally:
        store.close()


def test_postgres_connection_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot connect"):
        open_store(f"postgresql://nobody@/none?host={tmp_path}&connect_timeout=2", tmp_path)


# -- opening ------------------------------------------------------------------------------------------
def test_open_store_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = open_store(None, tmp_path / "data" / "dir")
    default.close()
    assert (tmp_path / "data" / "dir" / "facecast.db").is_file()
    absolute = open_store(f"sqlite://{tmp_path}/abs/x.db", tmp_path / "unused")
    absolute.close()
    assert (tmp_path / "abs" / "x.db").is_file()
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:rel/y.db", tmp_path / "unused")
    relative.close()
    assert (tmp_path / "rel" / "y.db").is_file()
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize(
    "bad", ["mysql://user:hunter2@host/db", "facecast.db", "sqlite://host/x.db", "sqlite:", "sqlite:///", ""]
)
def test_open_store_bad_urls(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape("sqlite:///ABSOLUTE/PATH.db")) as raised:
        open_store(bad, tmp_path)
    assert "hunter2" not in str(raised.value)


# -- dev key ------------------------------------------------------------------------------------------
def test_ensure_dev_key(store: Store, tmp_path: Path) -> None:
    data_dir = tmp_path / "dev"
    secret = ensure_dev_key(store, data_dir)
    saved = data_dir / "dev-key"
    assert saved.read_text().strip() == secret
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    key = store.authenticate_key(secret)
    assert key is not None and key.name == "dev"
    assert ensure_dev_key(store, data_dir) == secret  # reused, not remade
    assert len(store.list_keys()) == 1

    store.revoke_key(key.id)
    renewed = ensure_dev_key(store, data_dir)
    assert renewed != secret and saved.read_text().strip() == renewed
    assert store.authenticate_key(renewed) is not None
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600

    saved.write_text("fck_from-another-database\n")  # e.g. the database was swapped
    assert ensure_dev_key(store, data_dir) not in (renewed, "fck_from-another-database")


# -- `facecast keys` ----------------------------------------------------------------------------------
def keys(argv: list[str], parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> int:
    parser = parser_class(prog="facecast")
    add_keys_parser(parser.add_subparsers(dest="command", required=True, parser_class=parser_class))
    return run_keys(parser.parse_args(["keys", *argv]))


def test_keys_cli(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    where = ["--data-dir", str(tmp_path), "--database-url", url]
    assert keys(["create", "--name", "ci", "--max-concurrent", "2", *where]) == 0
    out, err = capsys.readouterr()
    secret = out.strip()
    assert secret.startswith("fck_") and len(secret) == 44  # stdout holds the secret alone
    assert "cannot be shown again" in err

    assert keys(["list", *where]) == 0
    table = capsys.readouterr().out
    assert secret not in table
    header, row = table.splitlines()
    assert header.split() == ["ID", "NAME", "PREFIX", "MAX", "CREATED", "REVOKED"]
    assert row.split()[1:4] == ["ci", secret[:12] + "…", "2"] and row.endswith(" -")

    assert keys(["list", "--json", *where]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["name"], listed["prefix"], listed["revoked"], listed["max_concurrent"]) == (
        "ci",
        secret[:12],
        False,
        2,
    )

    assert keys(["revoke", secret[:12], *where]) == 0
    assert listed["id"] in capsys.readouterr().out
    assert keys(["list", "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out)[0]["revoked"] is True

    assert keys(["revoke", "key_0123456789abcdef", *where]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "no API key matches" in err


def test_keys_cli_defaults_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FACECAST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FACECAST_DATABASE_URL", raising=False)
    assert keys(["list"]) == 0
    assert "no API keys yet" in capsys.readouterr().out
    assert (tmp_path / "data" / "facecast.db").is_file()

    monkeypatch.setenv("FACECAST_DATABASE_URL", f"sqlite://{tmp_path}/env.db")
    assert keys(["create"]) == 0
    assert (tmp_path / "env.db").is_file()
    capsys.readouterr()

    monkeypatch.setenv("FACECAST_DATABASE_URL", "mysql://x@y/z")
    assert keys(["list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facecast keys: error: unsupported database URL") and err.count("\n") == 1


class RaisingParser(argparse.ArgumentParser):
    """Like facecast.cli's parser: errors raise instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise LookupError(message)


def test_keys_parser_keeps_the_parser_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACECAST_DATABASE_URL", raising=False)
    with pytest.raises(LookupError, match="at least 1"):
        keys(["create", "--max-concurrent", "0"], RaisingParser)
    with pytest.raises(LookupError, match="required"):
        keys(["revoke"], RaisingParser)
    with pytest.raises(LookupError):
        keys([], RaisingParser)
    assert keys(["list", "--data-dir", str(tmp_path)], RaisingParser) == 0


def test_capped_insert_admits_exactly_the_cap_across_stores(reopen: Callable[[], Store]) -> None:
    """Two stores on one database (two servers) minting for one key at once never exceed its cap."""
    import threading

    stores = [reopen(), reopen()]
    key, _ = stores[0].create_key("capped")
    admitted: list[bool] = []
    lock = threading.Lock()

    def mint(store: Store) -> None:
        for _ in range(10):
            ok = store.insert_session(make_session(key.id), max_active=3)
            with lock:
                admitted.append(ok)

    threads = [threading.Thread(target=mint, args=(s,)) for s in stores for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted.count(True) == 3 and len(admitted) == 40
    assert stores[1].count_active(key.id) == 3


def test_owned_resources_belong_to_their_key_on_both_backends(reopen: Callable[[], Store]) -> None:
    from facecast.server.store import ContextRecord, LlmConfigRecord, SecretRecord

    store = reopen()
    owner, other = store.create_key("a")[0].id, store.create_key("b")[0].id
    context = ContextRecord("ctx_1", owner, "n", "Help ${user}.", "Hi", 1.0, 1.0)
    secret = SecretRecord("sec_1", owner, "key", "LLM_API_KEY", "gAAAA-ciphertext", 2.0, 2.0)
    config = LlmConfigRecord("llm_1", owner, "d", "m", "sec_1", None, 3.0, 3.0)
    for record in (context, secret, config):
        store.insert_owned(record)
    again = reopen()  # what another server (or a restart) reads
    assert again.get_owned(ContextRecord, owner, "ctx_1") == context
    assert again.get_owned(ContextRecord, other, "ctx_1") is None
    assert again.list_owned(LlmConfigRecord, owner) == [config]
    assert again.list_owned(SecretRecord, other) == []
    assert again.update_owned(ContextRecord, owner, "ctx_1", prompt="Bye.", updated_at=5.0)
    assert not again.update_owned(ContextRecord, other, "ctx_1", prompt="stolen")
    assert store.get_owned(ContextRecord, owner, "ctx_1") == ContextRecord(
        "ctx_1", owner, "n", "Bye.", "Hi", 1.0, 5.0
    )
    with pytest.raises(ValueError, match="owner"):
        again.update_owned(ContextRecord, owner, "ctx_1", owner=other)
    assert not again.delete_owned(SecretRecord, other, "sec_1")
    assert again.delete_owned(SecretRecord, owner, "sec_1")
    assert store.get_owned(SecretRecord, owner, "sec_1") is None

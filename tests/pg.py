"""PostgreSQL for tests: $FACECAST_TEST_POSTGRES_URL if set, else a throwaway server started from the local
PostgreSQL binaries for the test session (skipped, with how to enable it, when there are none).

Import the fixtures into a test module or conftest: `from pg import postgres_url  # noqa: F401`.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

URL_ENV = "FACECAST_TEST_POSTGRES_URL"
SKIP_REASON = (
    "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found: run scripts/install-postgres, or set "
    f"{URL_ENV}=postgresql://USER@HOST/DB to use a server of yours"
)
_TOOLS = ("initdb", "pg_ctl", "postgres")
_RUN_AS = "postgres"  # the account Debian's postgresql package creates; PostgreSQL refuses to run as root
_TIMEOUT_S = 120


def find_bindir() -> Path | None:
    """The first directory holding all the server binaries: pg_config's, Debian's, or initdb's on PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        # pg_config also comes with the client library alone, so its bindir may lack the server.
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            candidates.append(Path(done.stdout.strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)[::-1]
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in _TOOLS):
            return bindir
    return None


class LocalPostgres:
    """A server in a temporary directory, reachable only through a unix socket there (no TCP port)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        # Root: /tmp, which the unprivileged server account can reach. Otherwise $TMPDIR, unless it
        # would push the socket path past the ~107 bytes unix sockets allow.
        base = tempfile.gettempdir()
        if self.as_root or len(base) > 60:
            base = "/tmp"
        self.dir = Path(tempfile.mkdtemp(prefix="facecast-pg-", dir=base))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        if self.as_root:
            account = pwd.getpwnam(_RUN_AS)
            os.chown(self.dir, account.pw_uid, account.pw_gid)

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if self.as_root:
            command = ["runuser", "-u", _RUN_AS, "--", *command]
        # cwd: the server account may not be allowed into the caller's working directory.
        return subprocess.run(
            command, cwd=self.dir, capture_output=True, text=True, check=False, timeout=_TIMEOUT_S
        )

    @property
    def url(self) -> str:
        return f"postgresql://facecast@/postgres?host={quote(str(self.dir), safe='')}"

    def start(self) -> str:
        """Create and start the cluster; its URL."""
        initdb = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "facecast", "-E", "UTF8"]
        # trust: only this socket reaches the server, in a directory only its account may enter.
        initdb += ["-A", "trust", "--locale=C", "--no-sync"]
        self._step(*initdb)
        self.start_server()
        return self.url

    def start_server(self) -> None:
        """Start the (created) cluster's server."""
        pg_ctl = [str(self.bindir / "pg_ctl"), "start", "-w", "-t", str(_TIMEOUT_S), "-D", str(self.data)]
        # -h '': no TCP listener; -F: no fsync, the data is thrown away anyway.
        self._step(*pg_ctl, "-l", str(self.log), "-o", f"-k {self.dir} -h '' -F")

    def stop_server(self) -> None:
        """Stop the server at once, as a crash would (the cluster stays, for start_server)."""
        self._step(str(self.bindir / "pg_ctl"), "stop", "-w", "-m", "immediate", "-D", str(self.data))

    def restart(self) -> None:
        """Restart the server abruptly: every connection to it breaks."""
        self.stop_server()
        self.start_server()

    def _step(self, *argv: str) -> None:
        done = self._run(*argv)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(
                f"{Path(argv[0]).name} failed ({done.returncode}):\n{done.stdout}{done.stderr}{log}"
            )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "stop", "-w", "-m", "immediate", "-D", str(self.data))
        shutil.rmtree(self.dir, ignore_errors=True)


def with_options(url: str, **params: str) -> str:
    """`url` with these query parameters added."""
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL database for this test session."""
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(SKIP_REASON)
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _account_exists(_RUN_AS)):
        pytest.skip(f"running as root needs runuser and a {_RUN_AS!r} account to start PostgreSQL as")
    server = LocalPostgres(bindir)
    try:
        yield server.start()
    finally:
        server.stop()


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture()
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A URL of the test database whose tables land in a fresh schema, dropped after the test."""
    schema = "facecast_test_" + secrets.token_hex(6)
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield with_options(postgres_server, options=f"-csearch_path={schema}")
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))

"""The FACECAST_* settings: one table that the code reads, the docs are generated from, and
`facecast config` prints."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from facecast import settings
from facecast.cli import main
from facecast.server.config import AvatarSettings, Limits, ServerConfig

ROOT = Path(__file__).resolve().parent.parent
# A whole variable name (a prefix such as FACECAST_LIVEKIT_ ends in "_" and is not one).
NAME = re.compile(r"\bFACECAST_[A-Z0-9_]*[A-Z0-9]\b")
SEARCHED = ("facecast", "plugins", "examples", "scripts", "tests", ".ci")
SUFFIXES = {".py", ".sh", ".md", ".js", ".html", ".toml", ""}


def names_in_tree() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for top in SEARCHED:
        for path in (ROOT / top).rglob("*"):
            if "node_modules" in path.parts or not path.is_file() or path.suffix not in SUFFIXES:
                continue
            if path == ROOT / "facecast" / "settings.py":
                continue
            try:
                content = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            for name in set(NAME.findall(content)):
                found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def test_the_configuration_page_is_generated_from_the_table() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == settings.markdown(), "run: python -m facecast.settings > docs/configuration.md"


def test_every_variable_in_the_tree_is_in_the_table_and_every_one_in_the_table_is_read() -> None:
    found = names_in_tree()
    registered = {s.name for s in settings.SETTINGS}
    unknown = {name: where for name, where in found.items() if name not in registered}
    assert not unknown, f"FACECAST_* variables missing from facecast/settings.py: {unknown}"
    assert registered - set(found) == set(), "settings that nothing reads"
    assert len(registered) == len(settings.SETTINGS), "a variable registered twice"


def test_the_documented_server_defaults_are_the_ones_the_server_uses() -> None:
    limits, avatars = Limits(), AvatarSettings()
    for setting, value in (
        (settings.MAX_SESSION_DURATION, limits.max_session_duration),
        (settings.DEFAULT_SESSION_DURATION, limits.default_session_duration),
        (settings.IDLE_TIMEOUT, limits.idle_timeout),
        (settings.TOKEN_TTL, limits.token_ttl),
        (settings.CONNECT_TIMEOUT, limits.connect_timeout),
        (settings.MAX_CONCURRENT_PER_KEY, limits.max_concurrent_per_key),
        (settings.SANDBOX_DURATION, limits.sandbox_duration),
        (settings.MAX_UPLOAD_BYTES, avatars.max_upload_bytes),
        (settings.AVATAR_BUILD_WORKERS, avatars.build_workers),
        (settings.MAX_AVATAR_BUILDS_PER_KEY, avatars.max_building_per_key),
        (settings.AVATAR_BUILD_WAIT, avatars.build_wait_s),
    ):
        assert setting.default == value, setting.name


def test_the_server_reads_its_limits_through_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACECAST_IDLE_TIMEOUT", "45")
    monkeypatch.setenv("FACECAST_AVATAR_BUILD_WAIT", "2.5")
    assert ServerConfig.limits_from_env().idle_timeout == 45
    assert AvatarSettings.from_env().build_wait_s == 2.5
    assert dataclasses.replace(Limits(), idle_timeout=45) == ServerConfig.limits_from_env()
    monkeypatch.setenv("FACECAST_IDLE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match=r"FACECAST_IDLE_TIMEOUT='soon' is not a whole number"):
        ServerConfig.limits_from_env()


def test_config_prints_effective_values_with_secrets_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for setting in settings.SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    monkeypatch.setenv("FACECAST_API_KEY", "fk_live_secret_1")
    monkeypatch.setenv("FACECAST_LIVEKIT_API_SECRET", "lk-secret-2")
    monkeypatch.setenv("FACECAST_DATABASE_URL", "postgresql://fc:db-pass-3@db.internal:5432/facecast")
    monkeypatch.setenv("FACECAST_ICE_SERVERS", '[{"urls": "turn:t:3478", "credential": "turn-pass-4"}]')
    monkeypatch.setenv("FACECAST_IDLE_TIMEOUT", "45")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for secret in ("fk_live_secret_1", "lk-secret-2", "db-pass-3", "turn-pass-4"):
        assert secret not in out
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in out.splitlines()[1:]}
    assert set(rows) == {s.name for s in settings.SETTINGS}
    assert rows["FACECAST_API_KEY"] == ["environment", settings.MASK]
    assert rows["FACECAST_DATABASE_URL"] == ["environment", "postgresql://fc:****@db.internal:5432/facecast"]
    assert rows["FACECAST_IDLE_TIMEOUT"] == ["environment", "45"]
    assert rows["FACECAST_TOKEN_TTL"] == ["default", "300"]


def test_config_exits_1_and_names_a_bad_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FACECAST_FETCH_ALLOW_NETWORKS", "10.0.0.0/8,intranet")
    assert main(["config"]) == 1
    line = next(
        x for x in capsys.readouterr().out.splitlines() if x.startswith(settings.FETCH_ALLOW_NETWORKS.name)
    )
    assert "invalid: FACECAST_FETCH_ALLOW_NETWORKS='10.0.0.0/8,intranet' 'intranet' is not a network" in line

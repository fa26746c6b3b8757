"""Secrets: API keys (long-lived, one per client app) and session tokens (short-lived, one per session),
how they are stored (hashed), and where the server keeps its data by default."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from facecast import settings

API_KEY_PREFIX = "fck_"
SESSION_TOKEN_PREFIX = "fst_"
KEY_PREFIX_LEN = 12  # "fck_" + 8 random chars: enough to tell keys apart in a listing, useless to an attacker


def new_api_key() -> str:
    """A new API key secret: "fck_" + 40 URL-safe characters (240 random bits)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(30)


def new_session_token() -> str:
    """A new session token: "fst_" + 43 URL-safe characters (256 random bits)."""
    return SESSION_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The form in which a secret is stored and looked up: SHA-256, hex.

    A fast unsalted hash is right here, unlike for passwords: these secrets carry 240+ random bits, so
    there is nothing to brute-force, and a deterministic hash lets the store find a key by an index lookup.
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def key_prefix(secret: str) -> str:
    """The first characters of a secret, kept in clear so that listings can show which key is which."""
    return secret[:KEY_PREFIX_LEN]


def parse_bearer(header: str | None) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` header; None if absent or another scheme."""
    if header is None:
        return None
    scheme, _, credential = header.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or " " in credential:
        return None
    return credential


def default_data_dir() -> Path:
    """$FACECAST_DATA_DIR, else $XDG_DATA_HOME/facecast, else ~/.local/share/facecast."""
    explicit = settings.DATA_DIR.get()
    if explicit is not None:
        return explicit
    xdg = os.environ.get("XDG_DATA_HOME")
    # The XDG spec says to ignore a relative XDG_DATA_HOME.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "facecast"
    return Path.home() / ".local" / "share" / "facecast"

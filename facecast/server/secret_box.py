"""Encryption at rest for the secrets clients store (`/v1/secrets`): Fernet (AES-128-CBC + HMAC-SHA256)
under one server key.

The key comes from FACECAST_SECRETS_KEY (a Fernet key: 32 url-safe base64 bytes, made by
`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`), else from
`<data dir>/secrets.key`, made on first use with mode 0600. Servers sharing a database must share the
key. Plain values live only in memory, for the moment a session needs them; never returned or logged."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from facecast import settings

SECRETS_KEY_ENV = settings.SECRETS_KEY.name
SECRETS_KEY_FILE = "secrets.key"


class SecretBoxError(RuntimeError):
    """The server key is malformed, or a stored secret was encrypted under another key."""


class SecretBox:
    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError as exc:
            raise SecretBoxError(
                f"{SECRETS_KEY_ENV} (or {SECRETS_KEY_FILE}) is not a Fernet key: 32 url-safe base64-encoded "
                f"bytes ({exc})"
            ) from None

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> SecretBox:
        """The key from the environment, else the data dir's key file (created if missing)."""
        from_env = settings.SECRETS_KEY.get()
        if from_env:
            return cls(from_env.encode())
        path = Path(data_dir) / SECRETS_KEY_FILE
        try:
            return cls(path.read_bytes().strip())
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key()
        try:
            # O_EXCL: of servers starting together on one data dir, one writes the key, the others read it.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(path.read_bytes().strip())
        with os.fdopen(fd, "wb") as f:
            f.write(key + b"\n")
        return cls(key)

    def seal(self, value: str) -> str:
        return self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def open(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise SecretBoxError(
                f"a stored secret cannot be decrypted with this server's key: was {SECRETS_KEY_ENV} or "
                f"{SECRETS_KEY_FILE} changed? Store the secret again (POST /v1/secrets)"
            ) from None

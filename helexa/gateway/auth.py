"""API keys: SHA-256 digests in config (or a file, or plain keys in an environment variable).

Clients send a key as ``Authorization: Bearer <key>`` or ``x-api-key: <key>``. With no
keys configured the gateway is open (and says so at start when it listens beyond
loopback). Admin routes need an admin key; an admin key also works everywhere else.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from helexa.errors import ApiError
from helexa.settings import AuthSection

log = logging.getLogger("helexa.gateway.auth")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _normal(value: str) -> str:
    value = value.strip().lower()
    return value.removeprefix("sha256:")


class Keys:
    def __init__(self, settings: AuthSection, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.users = {_normal(d) for d in settings.keys}
        self.admins = {_normal(d) for d in settings.admin_keys}
        if settings.keys_file:
            for line in Path(settings.keys_file).read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line.startswith("admin:"):
                    self.admins.add(_normal(line[6:]))
                elif line:
                    self.users.add(_normal(line))
        for name, target in ((settings.keys_env, self.users), (settings.admin_keys_env, self.admins)):
            if name:
                target.update(digest(k.strip()) for k in env.get(name, "").split(",") if k.strip())

    @property
    def enabled(self) -> bool:
        return bool(self.users or self.admins)

    @staticmethod
    def presented(headers: list[tuple[bytes, bytes]]) -> str | None:
        for name, value in headers:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                return value[7:].decode("latin-1").strip()
            if name == b"x-api-key":
                return value.decode("latin-1").strip()
        return None

    def check(self, headers: list[tuple[bytes, bytes]], admin: bool = False) -> None:
        if not self.enabled:
            return
        key = self.presented(headers)
        if not key:
            raise ApiError(
                401,
                "an API key is required: send it as 'Authorization: Bearer <key>' or 'x-api-key'",
                code="missing_api_key",
            )
        hashed = digest(key)
        if hashed in self.admins:
            return
        if hashed not in self.users:
            raise ApiError(401, "the API key is not valid", code="invalid_api_key")
        if admin:
            raise ApiError(403, "this route needs an admin key", code="admin_key_required")

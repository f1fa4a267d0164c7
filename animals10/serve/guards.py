"""What stands before the model: an optional API key, and an admission limit that sheds overload.

Serve has no HTTP authentication of its own (Ray's token covers the control plane only), so the
replica checks `Authorization: Bearer <key>` itself, in constant time; the key comes from a file or
an environment variable, never from a command line or config file, and is never logged or echoed.
The admission limit answers requests over it at once with 503 and Retry-After, in JSON, instead of
letting them queue without end.
"""

from __future__ import annotations

import contextlib
import hmac
import os
from pathlib import Path

from animals10.errors import SettingsError
from animals10.serve.config import API_KEY_ENV, RETRY_AFTER_S
from animals10.serve.requests import RequestError

MIN_KEY_LENGTH = 16


def read_api_key(key_file: str | None = None, env_var: str | None = None) -> str | None:
    """The key from `key_file` (its first line), else from the variable `env_var` (default
    ANIMALS10_API_KEY); None: no key, the API is open."""
    env_var = env_var or API_KEY_ENV
    if key_file:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise SettingsError(f"The API key file '{key_file}' cannot be read ({type(error).__name__}).") from None
        source = f"The API key file '{key_file}'"
    else:
        key = os.environ.get(env_var, "").strip()
        if not key:
            return None
        source = f"The API key in ${env_var}"
    if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
        raise SettingsError(
            f"{source} must be one word of at least {MIN_KEY_LENGTH} characters (e.g. openssl rand -hex 32)."
        )
    return key


class ApiKey:
    """Checks a request's bearer token against the key, in constant time. No key: every request passes."""

    def __init__(self, key: str | None):
        self._key = key.encode() if key else None

    @property
    def required(self) -> bool:
        return self._key is not None

    def check(self, authorization: str | None) -> None:
        if self._key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(given, self._key):
            what = "a wrong API key" if given else "no API key"
            raise RequestError(
                401,
                f"The request has {what}; send the header 'Authorization: Bearer <key>'.",
                headers={"WWW-Authenticate": 'Bearer realm="animals10"'},
            )


class Admission:
    """At most `limit` requests in progress in this replica; one more is refused at once."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_progress = 0

    @contextlib.contextmanager
    def admit(self):
        if self.in_progress >= self.limit:
            raise RequestError(
                503,
                f"The server is at capacity ({self.limit} requests in progress); retry in {RETRY_AFTER_S} s.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1

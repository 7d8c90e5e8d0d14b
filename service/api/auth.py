"""Optional bearer-token authentication and per-key limits, as one pure ASGI middleware.

With no keys configured (the default) nothing changes. With keys (DDPM_API_KEYS, comma-separated, and/or
DDPM_API_KEYS_FILE, one per line, '#' comments), every path except the configured public ones
(DDPM_PUBLIC_PATHS, default /healthz, /readyz, /metrics) needs `Authorization: Bearer <key>`:
- A missing or wrong key answers 401 with `WWW-Authenticate: Bearer realm="ddpm-serve"` (RFC 6750), before
  routing, so even an unknown path reveals nothing. The token is compared with every configured key
  with hmac.compare_digest, always all of them, so the time taken says nothing about which key (or how
  much of one) matched.
- Keys are never logged or used as labels: a key is known by its id, the first 8 hex digits of its
  SHA-256 (`key_id`), in logs and in `ddpm_auth_*` metrics (bounded: one per configured key).
- Per key, on POST /generate only (the route that spends the accelerator): at most
  DDPM_KEY_MAX_CONCURRENCY requests in flight and DDPM_KEY_RATE_PER_S requests per second (a token
  bucket of DDPM_KEY_BURST); beyond either, 429 with Retry-After. A streamed request holds its place
  until its stream ends.

Why ASGI middleware and not a FastAPI dependency: a dependency runs after routing and body parsing, so
an unauthenticated client could still probe routes and make the server parse its bodies; the middleware
answers before any of that. The gateway forwards nothing from the request headers to its backends (the
Triton path sends only the generation's own fields), so keys never leave the gateway.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REALM = "ddpm-serve"
LIMITED_PATH = "/generate"


def key_id(key: str) -> str:
    """What logs and metrics call a key: never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    tokens: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


# The playground's static files (service.api.routes.playground): no data in them, and the page must load
# before it can ask for a key, so they answer without one. Its API calls carry the key like any client's.
PAGE_PATHS = frozenset({"/", "/playground/playground.js", "/playground/playground.css"})


@dataclass(frozen=True)
class AuthSettings:
    keys: tuple[str, ...]
    public_paths: frozenset[str]
    max_concurrency: int | None = None
    rate_per_s: float | None = None
    burst: int = 1


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()


class KeyLimits:
    """Per-key in-flight counts and token buckets (thread-safe: the event loop is the only caller, but
    the lock keeps the invariant obvious)."""

    def __init__(self, settings: AuthSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}

    def acquire(self, kid: str) -> Refusal | None:
        s = self.settings
        with self._lock:
            if s.max_concurrency is not None and self._in_flight.get(kid, 0) >= s.max_concurrency:
                return Refusal(
                    429,
                    "key_concurrency_limit",
                    f"this key already has {s.max_concurrency} requests in flight (the per-key limit); "
                    "retry when one has finished",
                    (("Retry-After", "1"),),
                )
            if s.rate_per_s is not None:
                bucket = self._buckets.setdefault(kid, TokenBucket(s.rate_per_s, max(1, s.burst)))
                wait = bucket.take(self.clock())
                if wait > 0:
                    return Refusal(
                        429,
                        "key_rate_limit",
                        f"this key may send {s.rate_per_s:g} requests per second (burst {s.burst}); "
                        f"retry after {wait:.1f} s",
                        (("Retry-After", str(max(1, math.ceil(wait)))),),
                    )
            self._in_flight[kid] = self._in_flight.get(kid, 0) + 1
        return None

    def release(self, kid: str) -> None:
        with self._lock:
            self._in_flight[kid] = max(0, self._in_flight.get(kid, 0) - 1)

    def in_flight(self, kid: str) -> int:
        with self._lock:
            return self._in_flight.get(kid, 0)


class BearerAuth:
    """The middleware (see the module docstring). `on_refused(code, key_id or None)` feeds metrics."""

    def __init__(
        self,
        app: ASGIApp,
        settings: AuthSettings,
        on_refused: Callable[[str, str | None], None] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.limits = KeyLimits(settings)
        self.on_refused = on_refused
        self._keys = [(key.encode(), key_id(key)) for key in settings.keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path in self.settings.public_paths or path in PAGE_PATHS:
            await self.app(scope, receive, send)
            return
        kid = self.match(_bearer_token(scope))
        if kid is None:
            given = _bearer_token(scope) is not None
            await self._refuse(send, _unauthorized(given), None)
            return
        limited = scope["path"] == LIMITED_PATH and scope["method"] == "POST"
        if limited:
            refusal = self.limits.acquire(kid)
            if refusal is not None:
                await self._refuse(send, refusal, kid)
                return
        try:
            await self.app(scope, receive, send)
        finally:
            if limited:
                self.limits.release(kid)

    def match(self, token: bytes | None) -> str | None:
        """The id of the key `token` is, comparing with every key (constant time per key)."""
        if token is None:
            return None
        found = None
        for key, kid in self._keys:
            if hmac.compare_digest(token, key):
                found = kid
        return found

    async def _refuse(self, send: Send, refusal: Refusal, kid: str | None) -> None:
        if self.on_refused is not None:
            self.on_refused(refusal.code, kid)
        body = json.dumps(
            {"error": {"code": refusal.code, "message": refusal.message, "field": None}}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(name.lower().encode(), value.encode()) for name, value in refusal.headers]
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


def _unauthorized(token_given: bool) -> Refusal:
    if token_given:
        challenge = f'Bearer realm="{REALM}", error="invalid_token"'
        message = "the bearer token is not a valid API key"
    else:
        challenge = f'Bearer realm="{REALM}"'
        message = "this server needs an API key: send Authorization: Bearer <key>"
    return Refusal(401, "unauthorized", message, (("WWW-Authenticate", challenge),))


def read_keys(keys: Iterable[str], keys_file: str | None) -> tuple[str, ...]:
    """Keys from the setting and the file (one per line; blank lines and '#' comments skipped)."""
    found = [key.strip() for key in keys if key.strip()]
    if keys_file is not None:
        with open(keys_file, encoding="utf-8") as handle:
            for line in handle:
                text = line.split("#", 1)[0].strip()
                if text:
                    found.append(text)
    return tuple(dict.fromkeys(found))

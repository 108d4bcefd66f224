"""API tokens: created once, shown once, stored as a SHA-256 hash; and the per-token rate limit.

A token is 32 random bytes (256 bits), so a plain SHA-256 is enough to store it: there is
nothing to brute-force, unlike a password, and verifying costs one hash and one indexed lookup.
Scopes are ordered: `read` < `submit` < `admin`; a token allows its scope and those below.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from appliance.errors import InvalidRequest
from appliance.settings import Settings
from appliance.store.accounts import ApiToken

SCOPES: tuple[str, ...] = ("read", "submit", "admin")
PREFIX = "apl_"
# Shown in listings so a user can tell tokens apart without the secret.
_DISPLAY_CHARS = 8


def scope_allows(have: str, need: str) -> bool:
    """Whether a token of scope `have` may do what needs `need`."""
    return SCOPES.index(have) >= SCOPES.index(need)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    scope: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @classmethod
    def from_row(cls, row: ApiToken) -> TokenInfo:
        return cls(
            id=row.id,
            name=row.name,
            scope=row.scope,
            prefix=row.prefix,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )


class TokenStore:
    """Tokens in the job store's database (table `api_tokens`)."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenStore:
        from appliance.store.db import init_db, session_factory

        return cls(session_factory(init_db(settings)))

    def create(self, name: str, scope: str = "read") -> tuple[TokenInfo, str]:
        """A new token; the plain secret is returned here and never again."""
        name = name.strip()
        if not name or len(name) > 100 or not name.isprintable():
            raise InvalidRequest("token name must be 1-100 printable characters")
        if scope not in SCOPES:
            raise InvalidRequest(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
        secret = PREFIX + secrets.token_urlsafe(32)
        with self._sessions.begin() as session:
            if session.scalar(
                select(ApiToken.id).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
            ):
                raise InvalidRequest(f"an active token named {name!r} already exists")
            row = ApiToken(
                name=name,
                scope=scope,
                prefix=secret[: len(PREFIX) + _DISPLAY_CHARS],
                token_hash=hash_token(secret),
                created_at=_now(),
            )
            session.add(row)
            session.flush()
            info = TokenInfo.from_row(row)
        return info, secret

    def list(self, include_revoked: bool = False) -> list[TokenInfo]:
        with self._sessions() as session:
            query = select(ApiToken).order_by(ApiToken.id)
            if not include_revoked:
                query = query.where(ApiToken.revoked_at.is_(None))
            return [TokenInfo.from_row(row) for row in session.scalars(query)]

    def revoke(self, name_or_prefix: str) -> int:
        """Revoke the active tokens with this name or display prefix; how many were revoked."""
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(ApiToken).where(
                    ApiToken.revoked_at.is_(None),
                    (ApiToken.name == name_or_prefix) | (ApiToken.prefix == name_or_prefix),
                )
            ).all()
            for row in rows:
                row.revoked_at = _now()
            return len(rows)

    def verify(self, secret: str) -> TokenInfo | None:
        """The active token with this secret, or None. Records when it was last used."""
        if not secret.startswith(PREFIX) or len(secret) > 200:
            return None
        digest = hash_token(secret)
        with self._sessions.begin() as session:
            row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
            # The lookup is by hash (an index); compare again in constant time for good measure.
            if row is None or row.revoked_at is not None:
                return None
            if not hmac.compare_digest(row.token_hash, digest):  # pragma: no cover
                return None
            row.last_used_at = _now()
            return TokenInfo.from_row(row)


class RateLimiter:
    """Fixed one-minute windows per key in Redis, shared by every web process and box.

    A fixed window lets a client burst up to twice the limit across a window edge; that is
    fine for protecting the intake, and costs one round trip (INCR + EXPIRE pipelined).
    """

    def __init__(
        self, redis: object, per_minute: int, namespace: str = "appliance:ratelimit"
    ) -> None:
        self.redis = redis
        self.per_minute = per_minute
        self.namespace = namespace

    def hit(self, key: str, now: float | None = None) -> int | None:
        """Count one request; None if allowed, else the seconds until the window resets."""
        if self.per_minute <= 0:
            return None
        now = time.time() if now is None else now
        window = int(now // 60)
        redis_key = f"{self.namespace}:{key}:{window}"
        pipe = self.redis.pipeline()  # type: ignore[attr-defined]
        pipe.incr(redis_key)
        pipe.expire(redis_key, 120)
        count, _ = pipe.execute()
        if int(count) <= self.per_minute:
            return None
        return max(1, int((window + 1) * 60 - now + 0.999))


def _now() -> datetime:
    return datetime.now(UTC)

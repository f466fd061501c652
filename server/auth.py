"""Token authentication: a DB query per connect (baseline) or a TTL cache in front of it."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from .db import Database, User, hash_token

if TYPE_CHECKING:
    from .metrics import Metrics
    from .settings import Settings

log = logging.getLogger("server.auth")


class AuthError(Exception):
    """Refused authentication; ``reason`` is what the client is told."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Authenticator:
    """Validate ``{"token": "..."}`` auth payloads.

    With ``cache_ttl_s`` set, validated tokens are kept until the earlier of the TTL and the
    token's own expiry; with a Redis client they are kept there, shared between nodes, under
    ``key_prefix`` (the deployment's namespace: deployments sharing one Redis db never share
    entries). When Redis fails, the lookup falls back to the database: the connect still works,
    counted as ``errors{kind="redis_unavailable"}`` and ``redis_errors{op="token_cache"}``.
    """

    def __init__(
        self,
        db: Database,
        cache_ttl_s: float | None = None,
        redis=None,
        key_prefix: str = "caplab:token:",
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.cache_ttl_s = cache_ttl_s
        self.redis = redis
        self.key_prefix = key_prefix
        self.metrics = metrics
        self.cache: dict[str, tuple[User, float]] = {}
        self.hits = 0
        self.misses = 0
        self.redis_failing = False

    @classmethod
    def from_settings(cls, s: Settings, db: Database, metrics: Metrics | None = None) -> Authenticator:
        """The node's authenticator: the cache in Redis when ``redis_url`` is set, under its namespace."""
        redis = None
        if s.redis_url and s.toggles.token_cache:
            import redis.asyncio as aioredis

            from .fanout import redis_options

            redis = aioredis.from_url(s.redis_url, **redis_options())
        ttl = s.token_cache_ttl_s if s.toggles.token_cache else None
        return cls(db, ttl, redis, key_prefix=f"{s.redis_channel}:token:", metrics=metrics)

    async def authenticate(self, auth: object) -> User:
        if not isinstance(auth, dict) or not isinstance(auth.get("token"), str) or not auth["token"]:
            raise AuthError("auth_missing", 'missing token: send the auth payload {"token": "..."}')
        token = auth["token"]
        now = time.time()
        redis_ok = True
        if self.cache_ttl_s is not None:
            try:
                user = await self._cached(token, now)
            except Exception as exc:  # Redis unreachable, timed out or refusing: ask the database
                user, redis_ok = None, False
                self._redis_failed(exc)
            if user is not None:
                self.hits += 1
                return user
            self.misses += 1
        user = self.db.user_for_token(token)
        if user is None:
            raise AuthError("auth_invalid", "invalid token")
        if user.expires_at <= now:
            raise AuthError("auth_expired", "token expired")
        if self.cache_ttl_s is not None and redis_ok:
            try:
                await self._store(token, user, min(now + self.cache_ttl_s, user.expires_at))
            except Exception as exc:
                self._redis_failed(exc)
        return user

    def _redis_failed(self, exc: Exception) -> None:
        if self.metrics is not None:
            self.metrics.redis_errors.labels(op="token_cache").inc()
            self.metrics.errors.labels(kind="redis_unavailable").inc()
        if not self.redis_failing:
            log.warning("token cache in Redis failed, asking the database: %s: %s", type(exc).__name__, exc)
        self.redis_failing = True

    def _key(self, token: str) -> str:
        return self.key_prefix + hash_token(token)

    async def _cached(self, token: str, now: float) -> User | None:
        if self.redis is not None:
            raw = await self.redis.get(self._key(token))
            if self.redis_failing:
                log.warning("token cache in Redis works again")
                self.redis_failing = False
            if raw is None:
                return None
            try:
                user = User(**json.loads(raw))
            except (ValueError, TypeError):  # an entry this version cannot read: a miss
                return None
            return user if user.expires_at > now else None
        entry = self.cache.get(token)
        if entry is None:
            return None
        user, until = entry
        if until <= now:
            del self.cache[token]
            return None
        return user

    async def _store(self, token: str, user: User, until: float) -> None:
        if self.redis is not None:
            ttl_ms = max(1, int((until - time.time()) * 1000))
            await self.redis.set(self._key(token), json.dumps(asdict(user)), px=ttl_ms)
        else:
            self.cache[token] = (user, until)

    def sweep(self, now: float | None = None) -> int:
        """Drop expired cache entries; return how many."""
        now = time.time() if now is None else now
        dead = [t for t, (_, until) in self.cache.items() if until <= now]
        for t in dead:
            del self.cache[t]
        return len(dead)

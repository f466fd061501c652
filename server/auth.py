"""Token authentication: a DB query per connect (baseline) or a TTL cache in front of it."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from .db import Database, User, hash_token


class AuthError(Exception):
    """Refused authentication; ``reason`` is what the client is told."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Authenticator:
    """Validate ``{"token": "..."}`` auth payloads.

    With ``cache_ttl_s`` set, validated tokens are kept until the earlier of the TTL and the
    token's own expiry; with a Redis client they are kept there, shared between nodes.
    """

    def __init__(self, db: Database, cache_ttl_s: float | None = None, redis=None) -> None:
        self.db = db
        self.cache_ttl_s = cache_ttl_s
        self.redis = redis
        self.cache: dict[str, tuple[User, float]] = {}
        self.hits = 0
        self.misses = 0

    async def authenticate(self, auth: object) -> User:
        if not isinstance(auth, dict) or not isinstance(auth.get("token"), str) or not auth["token"]:
            raise AuthError("auth_missing", 'missing token: send the auth payload {"token": "..."}')
        token = auth["token"]
        now = time.time()
        if self.cache_ttl_s is not None:
            user = await self._cached(token, now)
            if user is not None:
                self.hits += 1
                return user
            self.misses += 1
        user = self.db.user_for_token(token)
        if user is None:
            raise AuthError("auth_invalid", "invalid token")
        if user.expires_at <= now:
            raise AuthError("auth_expired", "token expired")
        if self.cache_ttl_s is not None:
            await self._store(token, user, min(now + self.cache_ttl_s, user.expires_at))
        return user

    async def _cached(self, token: str, now: float) -> User | None:
        if self.redis is not None:
            raw = await self.redis.get("caplab:token:" + hash_token(token))
            if raw is None:
                return None
            user = User(**json.loads(raw))
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
            await self.redis.set("caplab:token:" + hash_token(token), json.dumps(asdict(user)), px=ttl_ms)
        else:
            self.cache[token] = (user, until)

    def sweep(self, now: float | None = None) -> int:
        """Drop expired cache entries; return how many."""
        now = time.time() if now is None else now
        dead = [t for t, (_, until) in self.cache.items() if until <= now]
        for t in dead:
            del self.cache[t]
        return len(dead)

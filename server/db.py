"""Embedded SQLite tenancy store: companies, users, tokens; versioned migrations.

Tokens are stored as SHA-256 hashes; the plain token is only ever printed once, at creation.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass

MIGRATIONS: list[str] = [
    # v1: tenancy
    """
    CREATE TABLE companies (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        company_id INTEGER NOT NULL REFERENCES companies(id),
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        token_expires_at REAL NOT NULL
    );
    CREATE INDEX users_company ON users(company_id);
    """,
    # v2: the mobile fields of the seed guide's migration
    """
    ALTER TABLE users ADD COLUMN mobile_number TEXT;
    ALTER TABLE users ADD COLUMN mobile_verified INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN device_platform TEXT;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class User:
    id: int
    company: int
    name: str
    expires_at: float


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Database:
    """A small synchronous store; each lookup is one counted query."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.queries = 0
        self.migrate()

    def version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> int:
        """Apply pending migrations in order; return the schema version."""
        current = self.version()
        if current > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: schema v{current} is newer than this server (v{SCHEMA_VERSION})")
        for number, sql in enumerate(MIGRATIONS[current:], start=current + 1):
            self.conn.executescript(f"BEGIN; {sql}; PRAGMA user_version = {number}; COMMIT;")
        return self.version()

    def create_users(self, companies: int, users_per_company: int, ttl_s: float = 30 * 86400) -> list[dict]:
        """Create companies and users; return one record per user with its plain token."""
        out = []
        expires = time.time() + ttl_s
        self.conn.execute("BEGIN")
        try:
            start = self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM companies").fetchone()[0]
            for c in range(start + 1, start + companies + 1):
                self.conn.execute("INSERT INTO companies (id, name) VALUES (?, ?)", (c, f"company-{c}"))
                for u in range(users_per_company):
                    token = secrets.token_urlsafe(24)
                    cur = self.conn.execute(
                        "INSERT INTO users (company_id, name, token_hash, token_expires_at, device_platform)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (c, f"user-{c}-{u}", hash_token(token), expires, "web"),
                    )
                    out.append({"company": c, "user": cur.lastrowid, "token": token})
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return out

    def user_for_token(self, token: str) -> User | None:
        """One query: the user holding this token, expired or not (the caller checks expiry)."""
        self.queries += 1
        row = self.conn.execute(
            "SELECT id, company_id, name, token_expires_at FROM users WHERE token_hash = ?",
            (hash_token(token),),
        ).fetchone()
        return User(*row) if row else None

    def companies(self) -> int:
        self.queries += 1
        return self.conn.execute("SELECT COUNT(*) FROM companies").fetchone()[0]

    def close(self) -> None:
        self.conn.close()

"""Versioned schema migrations, one list per dialect, applied in order at start.

Timestamps are unix seconds (BIGINT); ids are opaque text where they leave the broker. Every
migration runs in its own transaction, under an exclusive lock, so replicas starting together
apply it once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def _schema_v1(pk: str) -> tuple[str, ...]:
    return (
        f"""CREATE TABLE users (
            id {pk},
            user_uid TEXT NOT NULL UNIQUE,
            client_id TEXT NOT NULL,
            identity_type TEXT NOT NULL,
            identity_value TEXT NOT NULL,
            omni_account TEXT NOT NULL,
            pumpx_omni_account TEXT NOT NULL,
            totp_secret TEXT,
            created_at BIGINT NOT NULL,
            last_login_at BIGINT,
            UNIQUE (client_id, identity_type, identity_value)
        )""",
        "CREATE INDEX users_omni_account ON users (omni_account)",
        "CREATE INDEX users_pumpx_omni_account ON users (pumpx_omni_account)",
        f"""CREATE TABLE wallets (
            id {pk},
            user_id BIGINT NOT NULL REFERENCES users (id),
            wallet_index INTEGER NOT NULL,
            created_at BIGINT NOT NULL,
            UNIQUE (user_id, wallet_index)
        )""",
        """CREATE TABLE tee_tokens (
            omni_account TEXT NOT NULL,
            token_type TEXT NOT NULL,
            client_id TEXT NOT NULL,
            token TEXT NOT NULL,
            token_sha256 TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (omni_account, token_type)
        )""",
        """CREATE TABLE grants (
            grant_id TEXT PRIMARY KEY,
            master_omni_account TEXT NOT NULL,
            master_wallet TEXT NOT NULL,
            agent_wallet TEXT NOT NULL,
            scope TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            revoked_at BIGINT
        )""",
        "CREATE INDEX grants_pair ON grants (master_wallet, agent_wallet)",
        "CREATE INDEX grants_master ON grants (master_omni_account)",
        f"""CREATE TABLE audit_log (
            id {pk},
            occurred_at BIGINT NOT NULL,
            event TEXT NOT NULL,
            outcome TEXT NOT NULL,
            client_id TEXT,
            omni_account TEXT,
            bearer_sha256 TEXT,
            remote_addr TEXT,
            detail TEXT
        )""",
        "CREATE INDEX audit_log_occurred_at ON audit_log (occurred_at)",
        "CREATE INDEX audit_log_omni_account ON audit_log (omni_account)",
    )


# v2: the next wallet slot lives on the user row, so taking it is one row update; PostgreSQL
# then serialises concurrent `add_wallet`s on the row lock instead of racing on MAX().
_NEXT_WALLET_SLOT = (
    "ALTER TABLE users ADD COLUMN next_wallet_index INTEGER NOT NULL DEFAULT 0",
    "UPDATE users SET next_wallet_index = "
    "(SELECT COALESCE(MAX(wallet_index) + 1, 0) FROM wallets WHERE wallets.user_id = users.id)",
)
# v3: a stored bearer is a credential for whoever reads the database; only its SHA-256 is kept.
_NO_STORED_BEARERS = ("ALTER TABLE tee_tokens DROP COLUMN token",)
_V1 = "users, wallets, tee_tokens, grants, audit_log"

SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, _V1, _schema_v1("INTEGER PRIMARY KEY AUTOINCREMENT")),
    Migration(2, "users.next_wallet_index", _NEXT_WALLET_SLOT),
    Migration(3, "tee_tokens without the bearer", _NO_STORED_BEARERS),
)

POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, _V1, _schema_v1("BIGSERIAL PRIMARY KEY")),
    Migration(2, "users.next_wallet_index", _NEXT_WALLET_SLOT),
    Migration(3, "tee_tokens without the bearer", _NO_STORED_BEARERS),
)

SCHEMA_MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)"""

LATEST_SCHEMA_VERSION = SQLITE_MIGRATIONS[-1].version
assert POSTGRES_MIGRATIONS[-1].version == LATEST_SCHEMA_VERSION, "both dialects carry every migration"

"""Storage operations of login, sessions and bearer validation (tables of migration 6).

Every rule that must hold across replicas is decided by one statement in the database: a login
nonce is consumed by one conditional UPDATE (two replicas finishing the same login: one wins), a
session is revoked by one UPDATE, and the verifier reads one row by primary key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentkeys_kit.broker.storage.base import Operation, Query
from agentkeys_kit.broker.storage.records import AuditEvent, UserRecord
from agentkeys_kit.broker.storage.store import _USER_COLUMNS, _audit, _upsert_user, new_user_uid

#: Tables whose rows are useless once ``expires_at`` has passed, purged by `purge_expired`.
#: A login nonce is kept `NONCE_KEEP_SECONDS` past its expiry, so a late replay is still told
#: "already used" rather than "unknown" (either is refused).
EXPIRING_TABLES: tuple[tuple[str, int], ...] = (
    ("login_nonces", 3600),
    ("broker_sessions", 0),
    ("tee_access_tokens", 0),
    # e-mail codes, rate-limit buckets and Google sign-in requests (`storage/login_state.py`)
    ("email_codes", 0),
    ("rate_limit_buckets", 0),
    ("oauth_requests", 0),
)


@dataclass(frozen=True, slots=True)
class SessionRow:
    jti: str
    omni_account: str
    identity_type: str
    identity_value: str
    wallet: str | None
    method: str
    issued_at: int
    expires_at: int
    revoked_at: int | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SessionRow:
        return cls(**{name: row[name] for name in cls.__slots__})


_SESSION_COLUMNS = "jti, omni_account, identity_type, identity_value, wallet, method, issued_at, expires_at, revoked_at"


@dataclass(frozen=True, slots=True)
class RecordedAccessToken:
    """A TEE access token post_heima_login recorded, and the user it logged in."""

    omni_account: str
    client_id: str
    expires_at: int
    revoked_at: int | None
    user: UserRecord | None


@dataclass(frozen=True, slots=True)
class LoginNonce:
    request_id: str
    method: str
    address: str
    chain_id: int
    nonce: str
    message: str
    issued_at: int
    expires_at: int
    consumed_at: int | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> LoginNonce:
        return cls(**{name: row[name] for name in cls.__slots__})


# --------------------------------------------------------------------------- sessions


def open_session(
    *,
    session: SessionRow,
    client_id: str,
    pumpx_omni_for: Callable[[str], str],
    audit: AuditEvent,
    consume: Callable[[], Operation[bool]] | None = None,
) -> Operation[UserRecord | None]:
    """A login proved `session`'s identity: upsert the user row exactly as `post_heima_login`
    would (same key, same OmniAccount, same Pumpx account), record the session, write the audit
    row; one transaction. `consume` (a login nonce, an e-mail code) runs first in the same
    transaction: when it answers False (already used) nothing is written and None is returned, so
    a proof is used up exactly when a session is made from it."""
    if consume is not None and not (yield from consume()):
        return None
    uid = new_user_uid()
    row = yield _upsert_user(
        uid,
        client_id,
        session.identity_type,
        session.identity_value,
        session.omni_account,
        pumpx_omni_for(uid),
        session.issued_at,
    )
    yield Query.run(
        f"INSERT INTO broker_sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        session.jti,
        session.omni_account,
        session.identity_type,
        session.identity_value,
        session.wallet,
        session.method,
        session.issued_at,
        session.expires_at,
    )
    yield _audit(audit)
    return UserRecord.from_row(row)


def find_session(jti: str) -> Operation[SessionRow | None]:
    row = yield Query.only_statement(f"SELECT {_SESSION_COLUMNS} FROM broker_sessions WHERE jti = ?", jti)
    return None if row is None else SessionRow.from_row(row)


def revoke_session(*, jti: str, audit: AuditEvent) -> Operation[bool]:
    """Revoke now (one UPDATE); False if it was already revoked or is unknown."""
    count = yield Query.run(
        "UPDATE broker_sessions SET revoked_at = ? WHERE jti = ? AND revoked_at IS NULL", audit.occurred_at, jti
    )
    yield _audit(audit)
    return bool(count)


# --------------------------------------------------------------------------- recorded TEE tokens


def find_access_token(token_sha256: str) -> Operation[RecordedAccessToken | None]:
    """The recorded token with this SHA-256 and the user its OmniAccount names, in one read."""
    user_columns = ", ".join(f"u.{name} AS u_{name}" for name in _USER_COLUMNS.split(", "))
    row = yield Query.only_statement(
        f"SELECT t.omni_account, t.client_id, t.expires_at, t.revoked_at, {user_columns} "
        "FROM tee_access_tokens t LEFT JOIN users u ON u.omni_account = t.omni_account AND u.client_id = t.client_id "
        "WHERE t.token_sha256 = ? ORDER BY u.id LIMIT 1",
        token_sha256,
    )
    if row is None:
        return None
    user = None
    if row["u_id"] is not None:
        user = UserRecord.from_row({name: row[f"u_{name}"] for name in _USER_COLUMNS.split(", ")})
    return RecordedAccessToken(row["omni_account"], row["client_id"], row["expires_at"], row["revoked_at"], user)


def revoke_access_token(*, token_sha256: str, audit: AuditEvent) -> Operation[bool]:
    """Logout with a TEE access token: the broker stops accepting it (the worker still would)."""
    count = yield Query.run(
        "UPDATE tee_access_tokens SET revoked_at = ? WHERE token_sha256 = ? AND revoked_at IS NULL",
        audit.occurred_at,
        token_sha256,
    )
    yield _audit(audit)
    return bool(count)


# --------------------------------------------------------------------------- login nonces


def start_login(nonce: LoginNonce) -> Operation[None]:
    yield Query.run_alone(
        "INSERT INTO login_nonces (request_id, method, address, chain_id, nonce, message, issued_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        nonce.request_id,
        nonce.method,
        nonce.address,
        nonce.chain_id,
        nonce.nonce,
        nonce.message,
        nonce.issued_at,
        nonce.expires_at,
    )


def find_login(request_id: str) -> Operation[LoginNonce | None]:
    row = yield Query.only_statement(
        "SELECT request_id, method, address, chain_id, nonce, message, issued_at, expires_at, consumed_at "
        "FROM login_nonces WHERE request_id = ?",
        request_id,
    )
    return None if row is None else LoginNonce.from_row(row)


def consume_login(request_id: str, now: int) -> Operation[bool]:
    """Use the nonce: True for the one caller that consumed it, False for every other (replay)."""
    count = yield Query.run(
        "UPDATE login_nonces SET consumed_at = ? WHERE request_id = ? AND consumed_at IS NULL", now, request_id
    )
    return bool(count)


# --------------------------------------------------------------------------- housekeeping


def purge_expired(now: int) -> Operation[dict[str, int]]:
    """Delete the rows of `EXPIRING_TABLES` whose expiry has passed; returns the count per table."""
    counts = {}
    for table, keep in EXPIRING_TABLES:
        counts[table] = yield Query.run(f"DELETE FROM {table} WHERE expires_at < ?", now - keep)
    return counts

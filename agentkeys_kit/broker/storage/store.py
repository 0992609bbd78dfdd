"""`BrokerStore`: the broker's storage operations, each one transaction on either database."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from agentkeys_kit.broker.storage.base import Operation, Query, UniqueViolation
from agentkeys_kit.broker.storage.records import AuditEvent, GrantRecord, UserRecord, WalletRecord

_USER_COLUMNS = (
    "id, user_uid, client_id, identity_type, identity_value, omni_account, pumpx_omni_account, "
    "totp_secret, created_at, last_login_at"
)
_GRANT_COLUMNS = (
    "grant_id, master_omni_account, master_wallet, agent_wallet, scope, created_at, expires_at, revoked_at, "
    "superseded_by, max_uses, uses"
)
#: the grant a pair is bound by: open (neither revoked nor superseded); at most one per pair, by the
#: partial unique index grants_one_open_per_pair (migration 5), whose predicate this repeats.
_OPEN = "revoked_at IS NULL AND superseded_by IS NULL"


def new_user_uid() -> str:
    return "usr_" + secrets.token_hex(12)


def new_grant_id() -> str:
    return "grn_" + secrets.token_hex(12)


_UPSERT_TOKEN = (
    "INSERT INTO tee_tokens (omni_account, token_type, client_id, token_sha256, expires_at, "
    "updated_at) VALUES (?, 'access', ?, ?, ?, ?) ON CONFLICT (omni_account, token_type) DO UPDATE "
    "SET client_id = excluded.client_id, token_sha256 = excluded.token_sha256, "
    "expires_at = excluded.expires_at, updated_at = excluded.updated_at"
)
#: every recorded access token, one row each (migration 6), what the bearer verifier looks up
_RECORD_ACCESS_TOKEN = (
    "INSERT INTO tee_access_tokens (token_sha256, omni_account, client_id, expires_at, recorded_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (token_sha256) DO NOTHING"
)
_INSERT_AUDIT = (
    "INSERT INTO audit_log (occurred_at, event, outcome, client_id, omni_account, bearer_sha256, "
    "remote_addr, detail, repeat_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _audit(event: AuditEvent) -> Query:
    return Query.run(
        _INSERT_AUDIT,
        event.occurred_at,
        event.event,
        event.outcome,
        event.client_id,
        event.omni_account,
        event.bearer_sha256,
        event.remote_addr,
        event.detail,
        event.repeat_count,
    )


def _upsert_user(
    uid: str,
    client_id: str,
    identity_type: str,
    identity_value: str,
    omni_account: str,
    pumpx_omni: str,
    now: int,
) -> Query:
    """Insert the user or touch its login time: the race-free way to keep one row per identity.

    On conflict the stored row, with its own uid and Pumpx account, comes back unchanged."""
    return Query.one(
        "INSERT INTO users (user_uid, client_id, identity_type, identity_value, omni_account, "
        "pumpx_omni_account, created_at, last_login_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (client_id, identity_type, identity_value) DO UPDATE SET "
        "last_login_at = excluded.last_login_at "
        f"RETURNING {_USER_COLUMNS}",
        uid,
        client_id,
        identity_type,
        identity_value,
        omni_account,
        pumpx_omni,
        now,
        now,
    )


def record_login(
    *,
    dialect: str,
    client_id: str,
    identity_type: str,
    identity_value: str,
    omni_account: str,
    pumpx_omni_for: Callable[[str], str],
    token_sha256: str,
    token_expires_at: int,
    audit: AuditEvent,
) -> Operation[UserRecord]:
    """`post_heima_login`: upsert the user, record the access token (its SHA-256 and expiry: a
    stored bearer would be a credential for anyone who reads the database) as the latest of its
    OmniAccount and among the tokens the bearer verifier accepts, write the audit row.

    On PostgreSQL the four writes are one statement (data-modifying CTEs), atomic by itself and
    one round trip; SQLite runs them as four statements in one transaction."""
    now = audit.occurred_at
    uid = new_user_uid()
    user = _upsert_user(uid, client_id, identity_type, identity_value, omni_account, pumpx_omni_for(uid), now)
    token_args = (omni_account, client_id, token_sha256, token_expires_at, now)
    recorded_args = (token_sha256, omni_account, client_id, token_expires_at, now)
    audit_query = _audit(audit)
    if dialect == "postgresql":
        row = yield Query.only_statement(
            f"WITH u AS ({user.sql}), t AS ({_UPSERT_TOKEN}), r AS ({_RECORD_ACCESS_TOKEN}), "
            f"a AS ({_INSERT_AUDIT}) SELECT * FROM u",
            *user.args,
            *token_args,
            *recorded_args,
            *audit_query.args,
        )
    else:
        row = yield user
        yield Query.run(_UPSERT_TOKEN, *token_args)
        yield Query.run(_RECORD_ACCESS_TOKEN, *recorded_args)
        yield audit_query
    return UserRecord.from_row(row)


def ensure_email_user(
    *,
    client_id: str,
    email: str,
    omni_account: str,
    pumpx_omni_for: Callable[[str], str],
    audit: AuditEvent,
) -> Operation[tuple[UserRecord, bool]]:
    """`get_account_user_id`: the e-mail user, created if new; returns (user, created)."""
    existing = yield Query.one(
        f"SELECT {_USER_COLUMNS} FROM users WHERE client_id = ? AND identity_type = 'email' AND identity_value = ?",
        client_id,
        email,
    )
    created = existing is None
    if created:
        uid = new_user_uid()
        row = yield Query.one(
            "INSERT INTO users (user_uid, client_id, identity_type, identity_value, omni_account, "
            "pumpx_omni_account, created_at) VALUES (?, ?, 'email', ?, ?, ?, ?) "
            "ON CONFLICT (client_id, identity_type, identity_value) DO NOTHING "
            f"RETURNING {_USER_COLUMNS}",
            uid,
            client_id,
            email,
            omni_account,
            pumpx_omni_for(uid),
            audit.occurred_at,
        )
        if row is None:  # a concurrent request created it first
            created = False
            row = yield Query.one(
                f"SELECT {_USER_COLUMNS} FROM users WHERE client_id = ? AND identity_type = 'email' "
                "AND identity_value = ?",
                client_id,
                email,
            )
    else:
        row = existing
    yield _audit(replace(audit, detail="created" if created else "existing"))
    return UserRecord.from_row(row), created


def find_user_by_account(omni_account: str) -> Operation[UserRecord | None]:
    """The user a TEE token's ``sub`` names: its own OmniAccount or its Pumpx-identity account."""
    row = yield Query.one(
        f"SELECT {_USER_COLUMNS} FROM users WHERE omni_account = ? OR pumpx_omni_account = ? ORDER BY id LIMIT 1",
        omni_account,
        omni_account,
    )
    return None if row is None else UserRecord.from_row(row)


def find_user_by_uid(user_uid: str) -> Operation[UserRecord | None]:
    row = yield Query.one(f"SELECT {_USER_COLUMNS} FROM users WHERE user_uid = ?", user_uid)
    return None if row is None else UserRecord.from_row(row)


def add_wallet(*, user: UserRecord, audit: AuditEvent) -> Operation[WalletRecord]:
    """`add_wallet`: the user's next TEE wallet slot (0, 1, 2, …), taken with one row update."""
    slot = yield Query.one(
        "UPDATE users SET next_wallet_index = next_wallet_index + 1 WHERE id = ? "
        "RETURNING next_wallet_index - 1 AS slot",
        user.id,
    )
    yield Query.run(
        "INSERT INTO wallets (user_id, wallet_index, created_at) VALUES (?, ?, ?)",
        user.id,
        slot["slot"],
        audit.occurred_at,
    )
    yield _audit(audit)
    return WalletRecord(user.user_uid, int(slot["slot"]), audit.occurred_at)


def list_wallets(user_id: int) -> Operation[list[int]]:
    rows = yield Query.all("SELECT wallet_index FROM wallets WHERE user_id = ? ORDER BY wallet_index", user_id)
    return [int(row["wallet_index"]) for row in rows]


def write_audit(audit: AuditEvent) -> Operation[None]:
    yield _audit(audit)


def write_audits(audits: list[AuditEvent]) -> Operation[None]:
    """Several audit rows in one transaction (one commit, one fsync)."""
    for audit in audits:
        yield _audit(audit)


def set_totp_secret(user_uid: str, secret: str | None) -> Operation[bool]:
    count = yield Query.run("UPDATE users SET totp_secret = ? WHERE user_uid = ?", secret, user_uid)
    return bool(count)


# --------------------------------------------------------------------------- grants


def is_bound(*, main_address: str, agent_address: str, now: int, audit: AuditEvent) -> Operation[bool]:
    """`check_hyper_agent_address`: an open, unexpired grant from this master to this agent."""
    row = yield Query.one(
        f"SELECT grant_id FROM grants WHERE master_wallet = ? AND agent_wallet = ? AND {_OPEN} AND expires_at > ? "
        "LIMIT 1",
        main_address.lower(),
        agent_address.lower(),
        now,
    )
    yield _audit(audit)
    return row is not None


def create_grant(
    *,
    master_omni_account: str,
    master_wallet: str,
    agent_wallet: str,
    scope: str,
    expires_at: int,
    audit: AuditEvent,
    max_uses: int | None = None,
) -> Operation[GrantRecord | None]:
    """A new grant, or ``None`` when the pair already has an active one (one active grant per pair
    keeps "revoke" meaning "unbound").

    The unique index decides, so concurrent creates on any number of replicas make one grant: an
    insert that meets an open grant of the pair does nothing (on PostgreSQL it first waits for the
    other transaction to end). An open grant that has expired is closed first (superseded by the
    new one); if that update matched, the pair has no other open grant, so the insert cannot
    conflict: should it, the operation is rerun rather than commit a link to a grant never made."""
    grant_id = new_grant_id()
    master, agent = master_wallet.lower(), agent_wallet.lower()
    closed = yield Query.run(
        f"UPDATE grants SET superseded_by = ? WHERE master_wallet = ? AND agent_wallet = ? AND {_OPEN} "
        "AND expires_at <= ?",
        grant_id,
        master,
        agent,
        audit.occurred_at,
    )
    row = yield Query.one(
        f"INSERT INTO grants ({_GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, 0) "
        f"ON CONFLICT (master_wallet, agent_wallet) WHERE {_OPEN} DO NOTHING RETURNING {_GRANT_COLUMNS}",
        grant_id,
        master_omni_account,
        master,
        agent,
        scope,
        audit.occurred_at,
        expires_at,
        max_uses,
    )
    if row is None:
        if closed:
            raise UniqueViolation("an open grant appeared after the expired one was closed")
        return None
    yield _audit(audit)
    return GrantRecord.from_row(row)


def revoke_grant(*, grant_id: str, master_omni_account: str | None, audit: AuditEvent) -> Operation[str]:
    """Revoke now; returns ``revoked``, ``already_revoked`` or ``not_found`` (another master's
    grant is ``not_found`` so ownership is not leaked). `master_omni_account=None`: operator.

    One conditional UPDATE decides, so two concurrent revokes cannot both succeed. A revoke
    unbinds the pair: revoking a superseded grant also revokes the pair's open grant. Locks are
    taken in one order, the named grant first and the pair's open grant second, so concurrent
    revokes and creates of a pair cannot deadlock."""
    row = yield Query.one(f"SELECT {_GRANT_COLUMNS} FROM grants WHERE grant_id = ?", grant_id)
    if row is None or (master_omni_account is not None and row["master_omni_account"] != master_omni_account):
        return "not_found"
    revoked = yield Query.run(
        "UPDATE grants SET revoked_at = ? WHERE grant_id = ? AND revoked_at IS NULL", audit.occurred_at, grant_id
    )
    if not revoked:
        return "already_revoked"
    yield Query.run(
        f"UPDATE grants SET revoked_at = ? WHERE master_wallet = ? AND agent_wallet = ? AND {_OPEN}",
        audit.occurred_at,
        row["master_wallet"],
        row["agent_wallet"],
    )
    yield _audit(audit)
    return "revoked"


def find_open_grant(master_wallet: str, agent_wallet: str) -> Operation[GrantRecord | None]:
    """The pair's open grant (there is at most one), expired or not."""
    row = yield Query.one(
        f"SELECT {_GRANT_COLUMNS} FROM grants WHERE master_wallet = ? AND agent_wallet = ? AND {_OPEN}",
        master_wallet.lower(),
        agent_wallet.lower(),
    )
    return None if row is None else GrantRecord.from_row(row)


def list_grants(master_omni_account: str | None) -> Operation[list[GrantRecord]]:
    if master_omni_account is None:
        rows = yield Query.all(f"SELECT {_GRANT_COLUMNS} FROM grants ORDER BY created_at, grant_id")
    else:
        rows = yield Query.all(
            f"SELECT {_GRANT_COLUMNS} FROM grants WHERE master_omni_account = ? ORDER BY created_at, grant_id",
            master_omni_account,
        )
    return [GrantRecord.from_row(row) for row in rows]


def audit_rows(limit: int = 1000) -> Operation[list[dict[str, Any]]]:
    rows = yield Query.all(
        "SELECT id, occurred_at, event, outcome, client_id, omni_account, bearer_sha256, remote_addr, detail, "
        "repeat_count FROM audit_log ORDER BY id DESC LIMIT ?",
        limit,
    )
    return list(rows)


def count_users() -> Operation[int]:
    row = yield Query.one("SELECT COUNT(*) AS n FROM users")
    return int(row["n"])


def find_user_by_identity(identity_type: str, identity_value: str) -> Operation[UserRecord | None]:
    row = yield Query.one(
        f"SELECT {_USER_COLUMNS} FROM users WHERE identity_type = ? AND identity_value = ? ORDER BY id LIMIT 1",
        identity_type,
        identity_value,
    )
    return None if row is None else UserRecord.from_row(row)

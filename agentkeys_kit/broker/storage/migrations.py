"""Versioned schema migrations, one list per dialect, applied in order at start.

Timestamps are unix seconds (BIGINT); ids are opaque text where they leave the broker. Migrations
run under an exclusive lock (PostgreSQL: an advisory lock taken before the schema is created;
SQLite: the write lock), so replicas starting together apply each one once.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentkeys_kit.broker.storage.base import StorageError


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    #: the migration removes secrets, which must then be unreadable in the database files too,
    #: not only to SQL. PostgreSQL: its statements rewrite the table. SQLite: the driver runs
    #: VACUUM after it commits (VACUUM cannot run inside a transaction) and truncates the WAL.
    scrubs: bool = False


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

# v4: v3's DROP COLUMN hides the bearers from SQL but leaves them in the table file (PostgreSQL
# marks the column dropped; SQLite rewrites the rows and leaves the old bytes in free space).
# PostgreSQL: CLUSTER writes the table into a new file, copying live rows with dropped columns set
# to NULL (`reform_and_rewrite_tuple`, src/backend/access/heap/heapam_handler.c), and truncates the
# old file at commit; unlike VACUUM FULL it runs inside the migration's transaction.
_SCRUB_TOKENS_POSTGRES = (
    "CLUSTER tee_tokens USING tee_tokens_pkey",
    "ALTER TABLE tee_tokens SET WITHOUT CLUSTER",
)

# v5: at most one open grant per (master, agent) pair, held by the database itself (a partial
# unique index), whatever the concurrency and however many replicas. A grant stays "open"
# (revoked_at and superseded_by NULL) past its expiry, since an index cannot use now(): creating a
# grant for a pair whose open grant has expired closes that one first, recording the new grant's id
# in its superseded_by (its status stays "expired"; revoked_at stays NULL, nobody revoked it).
# Pairs that already hold several open grants (the race this index closes) keep the one with the
# latest expiry (then the earliest created, then the smallest id): a pair was bound while any of
# its open grants was unexpired, so keeping the latest expiry changes no isBound answer, now or
# later; the others are superseded by it.
_KEPT_OPEN_GRANT = (
    "(SELECT k.grant_id FROM grants k WHERE k.master_wallet = grants.master_wallet "
    "AND k.agent_wallet = grants.agent_wallet AND k.revoked_at IS NULL "
    "ORDER BY k.expires_at DESC, k.created_at, k.grant_id LIMIT 1)"
)
_ONE_OPEN_GRANT_PER_PAIR = (
    "ALTER TABLE grants ADD COLUMN superseded_by TEXT",
    f"UPDATE grants SET superseded_by = {_KEPT_OPEN_GRANT} "  # noqa: S608 - constant SQL
    f"WHERE revoked_at IS NULL AND grant_id <> {_KEPT_OPEN_GRANT}",
    "CREATE UNIQUE INDEX grants_one_open_per_pair ON grants (master_wallet, agent_wallet) "
    "WHERE revoked_at IS NULL AND superseded_by IS NULL",
    # refused requests beyond a per-source budget are written as one row per kind and window,
    # repeat_count telling how many refusals it stands for (`broker/audit.py`).
    "ALTER TABLE audit_log ADD COLUMN repeat_count INTEGER NOT NULL DEFAULT 1",
)
# v6: login state that every replica shares (`broker/login/`, `broker/sessions.py`, `broker/bearer.py`):
# * login_nonces: a local-backend login started and not yet finished (the SIWE message issued, its
#   nonce single use: consumed_at is set by one conditional UPDATE);
# * broker_sessions: every session the broker issued (its jti), revoked_at set by logout; a session
#   token whose row is missing or revoked is refused;
# * tee_access_tokens: every TEE access token post_heima_login recorded (its SHA-256 only), one row
#   per token so a user logged in on two machines keeps both; tee_tokens keeps only the latest.
# Expired rows of the three are purged (`store.purge_expired`).
_LOGIN_STATE = (
    """CREATE TABLE login_nonces (
        request_id TEXT PRIMARY KEY,
        method TEXT NOT NULL,
        address TEXT NOT NULL,
        chain_id BIGINT NOT NULL,
        nonce TEXT NOT NULL UNIQUE,
        message TEXT NOT NULL,
        issued_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        consumed_at BIGINT
    )""",
    "CREATE INDEX login_nonces_expires_at ON login_nonces (expires_at)",
    """CREATE TABLE broker_sessions (
        jti TEXT PRIMARY KEY,
        omni_account TEXT NOT NULL,
        identity_type TEXT NOT NULL,
        identity_value TEXT NOT NULL,
        wallet TEXT,
        method TEXT NOT NULL,
        issued_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        revoked_at BIGINT
    )""",
    "CREATE INDEX broker_sessions_expires_at ON broker_sessions (expires_at)",
    "CREATE INDEX broker_sessions_omni_account ON broker_sessions (omni_account)",
    """CREATE TABLE tee_access_tokens (
        token_sha256 TEXT PRIMARY KEY,
        omni_account TEXT NOT NULL,
        client_id TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        recorded_at BIGINT NOT NULL,
        revoked_at BIGINT
    )""",
    "CREATE INDEX tee_access_tokens_expires_at ON tee_access_tokens (expires_at)",
    "INSERT INTO tee_access_tokens (token_sha256, omni_account, client_id, expires_at, recorded_at) "
    "SELECT token_sha256, omni_account, client_id, expires_at, updated_at FROM tee_tokens WHERE token_type = 'access'",
)
_V6 = "login_nonces, broker_sessions, tee_access_tokens (login state shared by replicas)"
_V4 = "tee_tokens rewritten without a trace of the bearers v3 dropped"

# v10 (issue 8, the credential surface): the tamper-evident audit chain, the agents' single-use
# request ids, and grants with a use budget.
# - mint_log: the spec's `mint_log` columns (§1.6; the bearer only as its SHA-256) plus the event,
#   the OmniAccount, and the chain: each row carries the SHA-256 of the previous row (prev_hash)
#   and its own (row_hash, over every other column), so an edited or deleted row shows
#   (`broker/audit_chain.py`). `seq` is assigned by the appender (1, 2, 3, … without gaps).
# - mint_log_head: one row holding the last seq and hash; every append updates it first, which
#   serialises appenders (PostgreSQL: its row lock, any number of replicas) and lets `audit
#   verify` see rows cut off the end.
# - mint_requests: an agent's signed request id, kept until its issued_at can no longer pass the
#   skew check, so a signed mint body is accepted once (V0.1-FOLLOWUPS R1-F5).
# - grants.max_uses (NULL: no limit) and grants.uses, consumed by one conditional UPDATE.
_GENESIS = "0" * 64
_AUDIT_CHAIN = (
    """CREATE TABLE mint_log (
        seq BIGINT PRIMARY KEY,
        minted_at BIGINT NOT NULL,
        event TEXT NOT NULL,
        outcome TEXT NOT NULL,
        requester_token TEXT NOT NULL,
        requester_wallet TEXT NOT NULL,
        omni_account TEXT,
        requested_role TEXT NOT NULL,
        session_duration_seconds INTEGER NOT NULL,
        sts_session_name TEXT NOT NULL,
        outcome_detail TEXT,
        prev_hash TEXT NOT NULL,
        row_hash TEXT NOT NULL
    )""",
    "CREATE INDEX mint_log_minted_at ON mint_log (minted_at)",
    "CREATE INDEX mint_log_requester_wallet ON mint_log (requester_wallet)",
    """CREATE TABLE mint_log_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq BIGINT NOT NULL,
        row_hash TEXT NOT NULL
    )""",
    f"INSERT INTO mint_log_head (id, seq, row_hash) VALUES (1, 0, '{_GENESIS}')",  # noqa: S608 - a constant
    """CREATE TABLE mint_requests (
        signer TEXT NOT NULL,
        request_id TEXT NOT NULL,
        seen_at BIGINT NOT NULL,
        forget_after BIGINT NOT NULL,
        PRIMARY KEY (signer, request_id)
    )""",
    "CREATE INDEX mint_requests_forget_after ON mint_requests (forget_after)",
    "ALTER TABLE grants ADD COLUMN max_uses INTEGER",
    "ALTER TABLE grants ADD COLUMN uses INTEGER NOT NULL DEFAULT 0",
)
_V10 = "mint_log audit chain, mint_requests, grants.max_uses/uses"

_V5 = "one open grant per pair (grants.superseded_by), audit_log.repeat_count"

# v8: e-mail login (`broker/login/email.py`). One pending code per address (a new request replaces
# it), kept only as an HMAC under the broker's code key; `attempts` counts every try, so a sixth
# try after five wrong ones is refused whatever it carries. Rate-limit buckets are fixed windows
# (`bucket` names the limit and a hash of what it limits). Both are shared by every replica, and
# rows past `expires_at` are purged (`storage/login.py` `purge_expired`).
_EMAIL_CODES = (
    """CREATE TABLE email_codes (
        email TEXT PRIMARY KEY,
        code_hmac TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        consumed_at BIGINT
    )""",
    "CREATE INDEX email_codes_expires_at ON email_codes (expires_at)",
    """CREATE TABLE rate_limit_buckets (
        bucket TEXT NOT NULL,
        window_start BIGINT NOT NULL,
        hits INTEGER NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (bucket, window_start)
    )""",
    "CREATE INDEX rate_limit_buckets_expires_at ON rate_limit_buckets (expires_at)",
)
_V8 = "email_codes, rate_limit_buckets"

# v9: Google login (`broker/login/google.py`): one row per authorization request, found by the
# SHA-256 of its `state` (callback) or of its request id (the CLI's poll); the PKCE verifier and the
# nonce wait here for the callback. `status`: pending → verified (the provider proved `subject`) or
# failed (`failure`) → delivered (the session went to the holder of the request id, once).
_OAUTH_REQUESTS = (
    """CREATE TABLE oauth_requests (
        request_sha256 TEXT PRIMARY KEY,
        state_sha256 TEXT NOT NULL UNIQUE,
        provider TEXT NOT NULL,
        nonce TEXT NOT NULL,
        code_verifier TEXT,
        redirect_uri TEXT NOT NULL,
        status TEXT NOT NULL,
        failure TEXT,
        subject TEXT,
        email TEXT,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    )""",
    "CREATE INDEX oauth_requests_expires_at ON oauth_requests (expires_at)",
)
_V9 = "oauth_requests"

# v11: Google login's confirmation code (`broker/login/google.py`): the browser that finished the
# sign-in shows a code, and the session goes only to the terminal that started it and types that
# code (a stranger who started the request and sent its link to a victim never sees the code).
_OAUTH_CONFIRMATION = (
    "ALTER TABLE oauth_requests ADD COLUMN confirm_sha256 TEXT",
    "ALTER TABLE oauth_requests ADD COLUMN confirm_attempts INTEGER NOT NULL DEFAULT 0",
)
_V11 = "oauth_requests confirmation code"

SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, _V1, _schema_v1("INTEGER PRIMARY KEY AUTOINCREMENT")),
    Migration(2, "users.next_wallet_index", _NEXT_WALLET_SLOT),
    Migration(3, "tee_tokens without the bearer", _NO_STORED_BEARERS),
    Migration(4, _V4, (), scrubs=True),
    Migration(5, _V5, _ONE_OPEN_GRANT_PER_PAIR),
    Migration(6, _V6, _LOGIN_STATE),
    Migration(8, _V8, _EMAIL_CODES),
    Migration(9, _V9, _OAUTH_REQUESTS),
    Migration(10, _V10, _AUDIT_CHAIN),
    Migration(11, _V11, _OAUTH_CONFIRMATION),
)

POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, _V1, _schema_v1("BIGSERIAL PRIMARY KEY")),
    Migration(2, "users.next_wallet_index", _NEXT_WALLET_SLOT),
    Migration(3, "tee_tokens without the bearer", _NO_STORED_BEARERS),
    Migration(4, _V4, _SCRUB_TOKENS_POSTGRES, scrubs=True),
    Migration(5, _V5, _ONE_OPEN_GRANT_PER_PAIR),
    Migration(6, _V6, _LOGIN_STATE),
    Migration(8, _V8, _EMAIL_CODES),
    Migration(9, _V9, _OAUTH_REQUESTS),
    Migration(10, _V10, _AUDIT_CHAIN),
    Migration(11, _V11, _OAUTH_CONFIRMATION),
)

SCHEMA_MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)"""

LATEST_SCHEMA_VERSION = SQLITE_MIGRATIONS[-1].version
assert POSTGRES_MIGRATIONS[-1].version == LATEST_SCHEMA_VERSION, "both dialects carry every migration"


def require_migrated(found: int, where: str) -> None:
    """The operator's commands do not migrate: a database behind this release is refused, with
    what to do (a newer one is fine: migrations only add)."""
    if found < LATEST_SCHEMA_VERSION:
        raise StorageError(
            f"{where} is at schema version {found}, this release needs {LATEST_SCHEMA_VERSION}: "
            "start the broker once (it migrates at start), then run this command again"
        )

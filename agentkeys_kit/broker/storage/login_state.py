"""Storage operations of the e-mail and Google logins: pending codes, rate-limit buckets, OAuth
requests (tables of migrations 8 and 9; their expired rows go with `storage.login.purge_expired`).

Everything a replica decides on lives here, in the database, so several broker processes on one
PostgreSQL behave as one broker: each decision is one conditional statement (or one transaction
whose first statement locks the row), never a read followed by an unconditional write.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from agentkeys_kit.broker.storage.base import Operation, Query

#: most tries a code allows (the sixth is refused, whatever it carries)
MAX_CODE_ATTEMPTS = 5


# --------------------------------------------------------------------------- rate limits


def hit_bucket(bucket: str, window: int, now: int) -> Operation[tuple[int, int]]:
    """Count one hit in `bucket`'s fixed window of `window` seconds; returns (hits, window end)."""
    start = now - now % window
    row = yield Query.only_statement(
        "INSERT INTO rate_limit_buckets (bucket, window_start, hits, expires_at) VALUES (?, ?, 1, ?) "
        "ON CONFLICT (bucket, window_start) DO UPDATE SET hits = rate_limit_buckets.hits + 1 RETURNING hits",
        bucket,
        start,
        start + window,
    )
    return int(row["hits"]), start + window


# --------------------------------------------------------------------------- e-mail codes


@dataclass(frozen=True, slots=True)
class Limit:
    """A rate limit to charge: its name (for the refusal), bucket key, hits allowed per window."""

    name: str
    bucket: str
    limit: int
    window: int


def issue_email_code(
    email: str, code_hmac: str, now: int, ttl: int, limits: tuple[Limit, ...]
) -> Operation[tuple[str, int] | None]:
    """Charge each of `limits` in order, then store the address's code, in one transaction (one
    commit, one fsync on SQLite). A limit found exceeded ends it there, with its name and the
    seconds until its window ends, and no code is stored; the hits counted so far are kept."""
    for limit in limits:
        start = now - now % limit.window
        row = yield Query.one(
            "INSERT INTO rate_limit_buckets (bucket, window_start, hits, expires_at) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (bucket, window_start) DO UPDATE SET hits = rate_limit_buckets.hits + 1 RETURNING hits",
            limit.bucket,
            start,
            start + limit.window,
        )
        if int(row["hits"]) > limit.limit:
            return limit.name, max(1, start + limit.window - now)
    yield store_email_code_query(email, code_hmac, now, ttl)
    return None


def store_email_code_query(email: str, code_hmac: str, now: int, ttl: int) -> Query:
    """The address's one pending code: a new one replaces any earlier (and its attempts)."""
    return Query.one(
        "INSERT INTO email_codes (email, code_hmac, created_at, expires_at, attempts, consumed_at) "
        "VALUES (?, ?, ?, ?, 0, NULL) ON CONFLICT (email) DO UPDATE SET code_hmac = excluded.code_hmac, "
        "created_at = excluded.created_at, expires_at = excluded.expires_at, attempts = 0, consumed_at = NULL "
        "RETURNING email",
        email,
        code_hmac,
        now,
        now + ttl,
    )


def forget_email_code(email: str, code_hmac: str) -> Operation[None]:
    """Drop a code whose mail could not be sent (only that code, not a newer one)."""
    yield Query.run("DELETE FROM email_codes WHERE email = ? AND code_hmac = ?", email, code_hmac)


@dataclass(frozen=True, slots=True)
class CodeCheck:
    """What a try at a code found: ``ok``, ``wrong`` (with the tries left), ``expired``,
    ``used``, ``locked`` (no tries left), ``none`` (no code was requested) or ``failed`` (the
    sign-in it belongs to failed)."""

    outcome: str
    attempts_left: int = 0


def try_email_code(email: str, code_hmac: str, now: int) -> Operation[CodeCheck]:
    """One try at `email`'s pending code, in one transaction; a matching code is not spent here but
    by `spend_email_code` in the session's transaction (`complete_login`'s ``consume``).

    The try is counted first, by a conditional update that also takes the row's lock, so
    concurrent tries on any number of replicas never get more than `MAX_CODE_ATTEMPTS` between
    them (a right code's try counts too)."""
    row = yield Query.one(
        "UPDATE email_codes SET attempts = attempts + 1 WHERE email = ? AND consumed_at IS NULL "
        "AND expires_at > ? AND attempts < ? RETURNING code_hmac, attempts",
        email,
        now,
        MAX_CODE_ATTEMPTS,
    )
    if row is None:
        found = yield Query.one("SELECT expires_at, attempts, consumed_at FROM email_codes WHERE email = ?", email)
        if found is None:
            return CodeCheck("none")
        if found["consumed_at"] is not None:
            return CodeCheck("used")
        if int(found["expires_at"]) <= now:
            return CodeCheck("expired")
        return CodeCheck("locked")
    if not _same(row["code_hmac"], code_hmac):
        return CodeCheck("wrong", MAX_CODE_ATTEMPTS - int(row["attempts"]))
    return CodeCheck("ok")


def spend_email_code(email: str, code_hmac: str, now: int) -> Operation[bool]:
    """Use the code up (single use): true for the one transaction, on any replica, that does."""
    count = yield Query.run(
        "UPDATE email_codes SET consumed_at = ? WHERE email = ? AND code_hmac = ? AND consumed_at IS NULL "
        "AND expires_at > ?",
        now,
        email,
        code_hmac,
        now,
    )
    return bool(count)


def _same(stored: Any, presented: str) -> bool:
    return hmac.compare_digest(str(stored).encode("ascii"), presented.encode("ascii"))


# --------------------------------------------------------------------------- OAuth requests


@dataclass(frozen=True, slots=True)
class OAuthRequest:
    request_sha256: str
    provider: str
    nonce: str
    code_verifier: str | None
    redirect_uri: str
    status: str
    failure: str | None
    subject: str | None
    email: str | None
    created_at: int
    expires_at: int
    #: SHA-256 of the confirmation code the browser shows once the provider proved `subject`
    confirm_sha256: str | None = None
    confirm_attempts: int = 0

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> OAuthRequest:
        return cls(**{name: row[name] for name in cls.__slots__})


_OAUTH_COLUMNS = (
    "request_sha256, provider, nonce, code_verifier, redirect_uri, status, failure, subject, email, "
    "created_at, expires_at, confirm_sha256, confirm_attempts"
)


def create_oauth_request(
    *,
    request_sha256: str,
    state_sha256: str,
    provider: str,
    nonce: str,
    code_verifier: str,
    redirect_uri: str,
    now: int,
    ttl: int,
) -> Operation[None]:
    yield Query.run(
        "INSERT INTO oauth_requests (request_sha256, state_sha256, provider, nonce, code_verifier, redirect_uri, "
        "status, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
        request_sha256,
        state_sha256,
        provider,
        nonce,
        code_verifier,
        redirect_uri,
        now,
        now + ttl,
    )


def claim_oauth_state(state_sha256: str, now: int) -> Operation[OAuthRequest | None]:
    """The pending, unexpired request this `state` belongs to, taken for its callback: its status
    becomes ``exchanging`` and its PKCE verifier leaves the database, so a replayed callback (on
    any replica) finds nothing. None for an unknown, expired or already used state."""
    row = yield Query.one(
        f"SELECT {_OAUTH_COLUMNS} FROM oauth_requests WHERE state_sha256 = ? AND status = 'pending' AND expires_at > ?",
        state_sha256,
        now,
    )
    if row is None:
        return None
    taken = yield Query.run(
        "UPDATE oauth_requests SET status = 'exchanging', code_verifier = NULL "
        "WHERE request_sha256 = ? AND status = 'pending'",
        row["request_sha256"],
    )
    return OAuthRequest.from_row(row) if taken else None


def finish_oauth_request(
    request_sha256: str,
    *,
    subject: str | None,
    email: str | None,
    failure: str | None,
    confirm_sha256: str | None = None,
) -> Operation[None]:
    """The callback's verdict: ``verified`` with the provider's subject and the SHA-256 of the
    confirmation code the browser shows, or ``failed``."""
    status = "failed" if failure is not None else "verified"
    yield Query.run(
        "UPDATE oauth_requests SET status = ?, failure = ?, subject = ?, email = ?, confirm_sha256 = ? "
        "WHERE request_sha256 = ? AND status = 'exchanging'",
        status,
        failure,
        subject,
        email,
        confirm_sha256,
        request_sha256,
    )


def try_oauth_confirmation(request_sha256: str, confirm_sha256: str, now: int) -> Operation[CodeCheck]:
    """One try at a verified request's confirmation code (the `CodeCheck` outcomes of the e-mail
    code, ``none`` also for a request whose browser has not come back yet). Counted first, by one
    conditional update, so all replicas together allow `MAX_CODE_ATTEMPTS`; the last wrong try
    fails the request (``confirmation_failed``). A right code is spent by
    `deliver_oauth_request` in the session's transaction."""
    row = yield Query.one(
        "UPDATE oauth_requests SET confirm_attempts = confirm_attempts + 1 WHERE request_sha256 = ? "
        "AND status = 'verified' AND expires_at > ? AND confirm_attempts < ? "
        "RETURNING confirm_sha256, confirm_attempts",
        request_sha256,
        now,
        MAX_CODE_ATTEMPTS,
    )
    if row is None:
        found = yield Query.one(
            "SELECT status, expires_at FROM oauth_requests WHERE request_sha256 = ?", request_sha256
        )
        if found is None or found["status"] in ("pending", "exchanging"):
            return CodeCheck("none")
        if found["status"] == "delivered":
            return CodeCheck("used")
        if found["status"] == "failed":
            return CodeCheck("failed")
        if int(found["expires_at"]) <= now:
            return CodeCheck("expired")
        return CodeCheck("locked")
    if row["confirm_sha256"] is not None and _same(row["confirm_sha256"], confirm_sha256):
        return CodeCheck("ok")
    left = MAX_CODE_ATTEMPTS - int(row["confirm_attempts"])
    if left == 0:
        yield Query.run(
            "UPDATE oauth_requests SET status = 'failed', failure = 'confirmation_failed' WHERE request_sha256 = ? "
            "AND status = 'verified'",
            request_sha256,
        )
        return CodeCheck("locked")
    return CodeCheck("wrong", left)


def fail_oauth_state(state_sha256: str, failure: str, now: int) -> Operation[bool]:
    """The provider answered the callback with an error (the user declined): the request fails."""
    count = yield Query.run(
        "UPDATE oauth_requests SET status = 'failed', failure = ?, code_verifier = NULL "
        "WHERE state_sha256 = ? AND status = 'pending' AND expires_at > ?",
        failure,
        state_sha256,
        now,
    )
    return bool(count)


def find_oauth_request(request_sha256: str) -> Operation[OAuthRequest | None]:
    row = yield Query.one(f"SELECT {_OAUTH_COLUMNS} FROM oauth_requests WHERE request_sha256 = ?", request_sha256)
    return None if row is None else OAuthRequest.from_row(row)


def deliver_oauth_request(request_sha256: str, now: int) -> Operation[bool]:
    """Hand a verified request's identity out once: ``verified`` → ``delivered``, in the session's
    transaction (`complete_login`'s ``consume``); false if an earlier poll took it, or it expired."""
    count = yield Query.run(
        "UPDATE oauth_requests SET status = 'delivered' WHERE request_sha256 = ? AND status = 'verified' "
        "AND expires_at > ?",
        request_sha256,
        now,
    )
    return bool(count)

"""What the broker stores, as plain records."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    user_uid: str
    client_id: str
    identity_type: str
    identity_value: str
    omni_account: str
    pumpx_omni_account: str
    totp_secret: str | None
    created_at: int
    last_login_at: int | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> UserRecord:
        return cls(**{name: row[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class WalletRecord:
    user_uid: str
    wallet_index: int
    created_at: int


@dataclass(frozen=True, slots=True)
class GrantRecord:
    grant_id: str
    master_omni_account: str
    master_wallet: str
    agent_wallet: str
    scope: str
    created_at: int
    expires_at: int
    revoked_at: int | None
    #: the grant that replaced this one (an expired grant is closed by the next grant of its pair)
    superseded_by: str | None
    #: mints the grant allows (None: no limit) and mints made under it (`broker/agent_mint.py`)
    max_uses: int | None = None
    uses: int = 0

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> GrantRecord:
        return cls(**{name: row[name] for name in cls.__slots__})

    def status(self, now: int) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return "exhausted"
        # only a duplicate from before the one-open-grant rule, closed by migration 5
        return "superseded" if self.superseded_by is not None else "active"

    def to_json(self, now: int) -> dict[str, Any]:
        return {**asdict(self), "status": self.status(now)}


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit row. The bearer is only ever stored as its SHA-256. `repeat_count` > 1: the row
    stands for that many refusals of one kind from one source (`broker/audit.py`)."""

    event: str
    outcome: str
    occurred_at: int
    client_id: str | None = None
    omni_account: str | None = None
    bearer_sha256: str | None = None
    remote_addr: str | None = None
    detail: str | None = None
    repeat_count: int = 1

"""The worker's stores, in memory, with the worker's semantics (spec §10).

`VerificationCodeStorage` holds both kinds of code under the OmniAccount (the worker keys by
`blake2_256(account)`, an internal detail): the web3 code is written only when absent and reused
until consumed; the e-mail code is overwritten on every request. `HeimaJwtStorage` keeps tokens by
``(account, "access"|"id")``. No TTL exists for any of them upstream. The OAuth2 state, passkey
challenge, passkey and wildmeta timestamp stores follow below; only passkey challenges expire.
"""

from __future__ import annotations

from dataclasses import dataclass


class VerificationCodeStore:
    def __init__(self) -> None:
        self._codes: dict[bytes, str] = {}

    def get(self, account: bytes) -> str | None:
        return self._codes.get(account)

    def insert(self, account: bytes, code: str) -> None:
        self._codes[account] = code

    def remove(self, account: bytes) -> None:
        self._codes.pop(account, None)

    def __len__(self) -> int:
        return len(self._codes)


class HeimaJwtStore:
    def __init__(self) -> None:
        self._tokens: dict[tuple[bytes, str], str] = {}

    def get(self, account: bytes, token_type: str) -> str | None:
        return self._tokens.get((account, token_type))

    def insert(self, account: bytes, token_type: str, token: str) -> None:
        self._tokens[(account, token_type)] = token

    def __len__(self) -> int:
        return len(self._tokens)


class OAuth2StateVerifierStore:
    """`OAuth2StateVerifierStorage` (`storage/src/oauth2_state_verifier.rs@701b0755`): ``{state,
    nonce}`` under ``blake2_256(SCALE((client_id, uid)))``; a new authorisation overwrites the
    old one, a verification removes it before checking anything."""

    def __init__(self) -> None:
        self._records: dict[bytes, tuple[str, str]] = {}

    def get(self, key: bytes) -> tuple[str, str] | None:
        return self._records.get(key)

    def insert(self, key: bytes, state: str, nonce: str) -> None:
        self._records[key] = (state, nonce)

    def remove(self, key: bytes) -> None:
        self._records.pop(key, None)

    def __len__(self) -> int:
        return len(self._records)


@dataclass(slots=True)
class PasskeyChallengeRecord:
    omni_account: bytes
    created_at: int
    expires_at: int


class ChallengeError(Exception):
    """`PasskeyChallengeError`: ``ChallengeNotFound``, ``InvalidChallenge``, ``ChallengeExpired``."""


class PasskeyChallengeStore:
    """`PasskeyChallengeStorage` (`storage/src/passkey_challenge.rs@5860c8d8`), keyed by the challenge."""

    #: `cleanup_expired24h_challenges`: only challenges expired for more than a day are swept.
    CLEANUP_GRACE_SECONDS = 24 * 3600

    def __init__(self) -> None:
        self._records: dict[str, PasskeyChallengeRecord] = {}

    def store(self, omni_account: bytes, challenge: str, timeout: int, now: int) -> None:
        self._records[challenge] = PasskeyChallengeRecord(omni_account, now, now + timeout)

    def verify_and_consume(self, challenge: str, omni_account: bytes, now: int) -> None:
        """Another account's challenge is refused and kept; an expired one is removed and refused."""
        record = self._records.get(challenge)
        if record is None:
            raise ChallengeError("ChallengeNotFound")
        if record.omni_account != omni_account:
            raise ChallengeError("InvalidChallenge")
        del self._records[challenge]
        if now > record.expires_at:
            raise ChallengeError("ChallengeExpired")
        threshold = now - self.CLEANUP_GRACE_SECONDS
        for key in [key for key, old in self._records.items() if old.expires_at < threshold]:
            del self._records[key]

    def __len__(self) -> int:
        return len(self._records)


@dataclass(slots=True)
class PasskeyRecord:
    credential_id: str
    pubkey: bytes  # SEC1, uncompressed
    created_at: int
    omni_account: bytes
    alias_name: str
    last_used: int


class PasskeyError(Exception):
    """`PasskeyError` of the store: ``DuplicatePasskey``, ``ValidationError``."""


class PasskeyStore:
    """`PasskeyStorage` (`storage/src/passkey.rs@677675c8`): records under ``(account,
    blake2_256(credential_id))`` and an index ``account → [credential_id]`` in insertion order."""

    def __init__(self) -> None:
        self._records: dict[tuple[bytes, str], PasskeyRecord] = {}
        self._index: dict[bytes, list[str]] = {}

    def get(self, omni_account: bytes, credential_id: str) -> PasskeyRecord | None:
        return self._records.get((omni_account, credential_id))

    def exists(self, omni_account: bytes, credential_id: str) -> bool:
        return (omni_account, credential_id) in self._records

    def add(self, omni_account: bytes, credential_id: str, pubkey: bytes, alias: str | None, now: int) -> None:
        if self.exists(omni_account, credential_id):
            raise PasskeyError("DuplicatePasskey")
        alias_name = credential_id if alias is None else alias
        self._records[(omni_account, credential_id)] = PasskeyRecord(
            credential_id, pubkey, now, omni_account, alias_name, now
        )
        credentials = self._index.setdefault(omni_account, [])
        if credential_id not in credentials:
            credentials.append(credential_id)

    def remove(self, omni_account: bytes, credential_id: str) -> None:
        self._records.pop((omni_account, credential_id), None)
        credentials = self._index.get(omni_account, [])
        if credential_id in credentials:
            credentials.remove(credential_id)
        if not credentials:
            self._index.pop(omni_account, None)

    def list(self, omni_account: bytes) -> list[PasskeyRecord]:
        return [record for cid in self._index.get(omni_account, []) if (record := self.get(omni_account, cid))]

    def rename(self, omni_account: bytes, credential_id: str, alias: str) -> None:
        record = self.get(omni_account, credential_id)
        if record is None:
            raise PasskeyError("ValidationError")
        record.alias_name = alias

    def touch(self, omni_account: bytes, credential_id: str, now: int) -> None:
        record = self.get(omni_account, credential_id)
        if record is not None:
            record.last_used = now


class WildmetaTimestampStore:
    """`WildmetaTimestampStorage`: the last `business_json.timestamp` per ``main_address`` string,
    exactly as sent (case-sensitive)."""

    def __init__(self) -> None:
        self._timestamps: dict[str, int] = {}

    def get(self, main_address: str) -> int | None:
        return self._timestamps.get(main_address)

    def insert(self, main_address: str, timestamp: int) -> None:
        self._timestamps[main_address] = timestamp

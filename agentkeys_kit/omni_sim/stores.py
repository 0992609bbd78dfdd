"""The worker's stores, in memory, with the worker's semantics (spec §10).

`VerificationCodeStorage` holds both kinds of code under the OmniAccount (the worker keys by
`blake2_256(account)`, an internal detail): the web3 code is written only when absent and reused
until consumed; the e-mail code is overwritten on every request. `HeimaJwtStorage` keeps tokens by
``(account, "access"|"id")``. No TTL exists for any of them upstream.
"""

from __future__ import annotations


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

"""The Web3 sign-in message (spec §5.1, `heima/authentication/src/web3.rs`).

`omni_getWeb3SignInMessage` returns a `HeimaMessagePayload`; the wallet signs the UTF-8 bytes of
its compact serde JSON, keys in declaration order ``client_id, omni_account, message_code``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

WEB3_MESSAGE_CODE_DIGITS = 8  # `generate_otp(8)`
EMAIL_CODE_DIGITS = 6  # `generate_verification_code`


@dataclass(frozen=True, slots=True)
class HeimaMessagePayload:
    client_id: str
    omni_account: str
    message_code: str

    def to_json(self) -> dict[str, str]:
        return {
            "client_id": self.client_id,
            "omni_account": self.omni_account,
            "message_code": self.message_code,
        }

    def signing_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def generate_otp(digits: int) -> str:
    """Uniform decimal digits, leading zeros allowed (`generate_otp`)."""
    return "".join(secrets.choice("0123456789") for _ in range(digits))

"""Payloads for the ``fuzz`` step: arbitrary JSON and near-miss shapes of the login path.

Written here rather than drawn from hypothesis, which was the generator before: the harness is
runtime code that reviewers install without test extras, and a fuzz step must send the same
payloads for the same ``seed`` on every installation, so that two runs — two workers, two
machines, the two sides of a diff — see identical input. hypothesis is a test runner whose
generation changes between its releases (and it warns against drawing data outside tests); a
seeded `random.Random` (Mersenne Twister: the same sequence for the same integer seed on every
Python) gives that guarantee in some sixty lines. Nothing here shrinks failures: the step reports
each offending payload as sent.
"""

from __future__ import annotations

import random
from typing import Any

MAX_LEAVES = 12
#: integers that trip parsers: 0, ±1, the i32/u32/i64/u64 edges, and beyond 64 bits
_EDGE_INTEGERS = (0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 2**70)
_EDGE_FLOATS = (0.0, -0.0, 0.5, 1e308, -1e308, 5e-324, 1.5e-10)
#: characters of every class the parsers meet: ASCII, controls, NUL, Latin-1, RTL, CJK, emoji
_ALPHABET = "abcXYZ019 _-.@:/\\\"'{}[]\x00\x01\x1f\x7f\u00e9\u00df\u200f\u202e\u4e2d\u6587\U0001f600\ufeff"
FIELD_NAMES = (
    # worker params
    "user_id",
    "user_auth",
    "client_auth",
    "omni_account",
    "user_email",
    "email_code",
    "google_code",
    "invite_code",
    "language",
    # callback bodies
    "userId",
    "clientId",
    "clientAuth",
    "heimaLoginSuccess",
    "email",
    "inviteCode",
    "googleCode",
    "main_address",
    "agent_address",
    "login_type",
)
CLIENT_IDS = ("wildmeta", "agentkeys", "")


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def text(self, limit: int) -> str:
        return "".join(self.rng.choice(_ALPHABET) for _ in range(self.rng.randrange(limit + 1)))

    def scalar(self) -> Any:
        kind = self.rng.randrange(6)
        if kind == 0:
            return None
        if kind == 1:
            return self.rng.random() < 0.5
        if kind == 2:
            edge = self.rng.random() < 0.4
            return self.rng.choice(_EDGE_INTEGERS) if edge else self.rng.randrange(-(2**70), 2**70)
        if kind == 3:
            return self.rng.choice(_EDGE_FLOATS) if self.rng.random() < 0.4 else self.rng.uniform(-1e6, 1e6)
        return self.text(40)

    def value(self, leaves: list[int]) -> Any:
        """Arbitrary JSON of at most `MAX_LEAVES` leaves (`leaves` counts what is left)."""
        if leaves[0] <= 1 or self.rng.random() < 0.55:
            leaves[0] -= 1
            return self.scalar()
        if self.rng.random() < 0.5:
            return [self.value(leaves) for _ in range(self.rng.randrange(5)) if leaves[0] > 0]
        return {self.text(12): self.value(leaves) for _ in range(self.rng.randrange(5)) if leaves[0] > 0}

    def shaped(self) -> dict[str, Any]:
        """An object with some of the login path's field names, each with arbitrary JSON."""
        shaped = {name: self.value([MAX_LEAVES]) for name in FIELD_NAMES if self.rng.random() < 0.2}
        if self.rng.random() < 0.5:
            use_known = self.rng.random() < 0.6
            shaped["client_id"] = self.rng.choice(CLIENT_IDS) if use_known else self.value([MAX_LEAVES])
        return shaped


def generate_payloads(examples: int, seed: int) -> list[Any]:
    """`examples` payloads, half arbitrary JSON and half near-miss shapes; the same `seed` gives the
    same payloads everywhere."""
    generator = _Generator(seed)
    return [
        generator.value([MAX_LEAVES]) if generator.rng.random() < 0.5 else generator.shaped() for _ in range(examples)
    ]


def _nested(depth: int) -> Any:
    value: Any = "x"
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


#: shapes random generation rarely reaches: deep nesting (recursion limits), huge numbers, odd strings
EDGE_PAYLOADS: list[Any] = [
    _nested(64),
    _nested(900),
    {"user_id": _nested(300)},
    [10**400],
    {"client_id": "\u0000" * 8, "user_email": "a@" + "b" * 5000 + ".io"},
]

"""`validate_email` (`rpc-server/src/utils/validation.rs@05ff5857`).

First `email_address::EmailAddress::is_valid` (RFC 5321/5322 syntax as the `email_address` crate
checks it: local part ≤ 64 bytes of dot-atom or quoted string, domain ≤ 254 bytes of labels of
≤ 63 alphanumerics and inner hyphens, or a ``[literal]``; UTF-8 letters allowed per RFC 6531),
then the worker's own rule: the text after the first ``@`` must contain a dot.
"""

from __future__ import annotations

import re
from enum import Enum

_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"')
_LABEL = re.compile(
    r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]{0,61}[A-Za-z0-9\u0080-\U0010ffff])?"
)
_LITERAL = re.compile(r"\[[\x21-\x5a\x5e-\x7e]*\]")

LOCAL_PART_MAX_LENGTH = 64
DOMAIN_MAX_LENGTH = 254
SUB_DOMAIN_MAX_LENGTH = 63


class EmailVerdict(Enum):
    VALID = "valid"
    INVALID = "invalid"
    NO_TLD = "no_tld"


def is_valid_email_address(email: str) -> bool:
    if "@" not in email:
        return False
    local, domain = email.rsplit("@", 1)
    if not local or not domain:
        return False
    if len(local.encode("utf-8")) > LOCAL_PART_MAX_LENGTH or len(domain.encode("utf-8")) > DOMAIN_MAX_LENGTH:
        return False
    if not (_DOT_ATOM.fullmatch(local) or _QUOTED.fullmatch(local)):
        return False
    if _LITERAL.fullmatch(domain):
        return True
    labels = domain.split(".")
    return all(
        label and len(label.encode("utf-8")) <= SUB_DOMAIN_MAX_LENGTH and _LABEL.fullmatch(label) for label in labels
    )


def validate_email(email: str) -> EmailVerdict:
    if not is_valid_email_address(email):
        return EmailVerdict.INVALID
    at = email.find("@")
    if at >= 0 and "." not in email[at + 1 :]:
        return EmailVerdict.NO_TLD
    return EmailVerdict.VALID

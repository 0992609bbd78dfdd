"""The JSON of `UserId`, `UserAuth` and `ClientAuth`, and `to_omni_auth`.

All three are serde adjacently tagged enums with snake_case tags (`primitives/src/auth.rs@4a07c15e`,
spec §3). Note the tag of `UserAuth::OAuth2` is ``"o_auth2"`` (serde's snake_case puts an
underscore before every capital after the first), not ``"oauth2"``.

Signature encodings (spec §3.2): EVM ``0x``-optional hex of 65 bytes; Bitcoin bare hex of 65 bytes
(``0x`` is refused); Solana and Substrate signatures are sp-core types, hex with optional ``0x``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agentkeys_kit.protocol.hexcodec import HexError, decode_bare_hex, decode_hex, hex_encode
from agentkeys_kit.protocol.identity import Identity, IdentityError, IdentityKind
from agentkeys_kit.protocol.serde_rules import (
    Field,
    SerdeError,
    parse_adjacently_tagged,
    parse_struct,
    string,
    u32,
)
from agentkeys_kit.protocol.signatures import SIGNATURE_LENGTHS, SignatureScheme, Web3Signature

# --------------------------------------------------------------------------------------------
# UserId
# --------------------------------------------------------------------------------------------

_USER_ID_TAGS = {kind.value: kind for kind in IdentityKind}


@dataclass(frozen=True, slots=True)
class UserId:
    """`UserId`: the identity kind and its string value, as sent (not yet decoded)."""

    kind: IdentityKind
    value: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.kind.value, "value": self.value}

    def to_identity(self) -> Identity:
        """`TryFrom<UserId> for Identity`; raises `IdentityError` on bad hex/base58/length."""
        return Identity.from_user_id(self.kind, self.value)

    def omni_account(self, client_id: str) -> bytes:
        return self.to_identity().omni_account(client_id)


def parse_user_id(value: Any) -> UserId:
    tag, content, has_content = parse_adjacently_tagged(value, "UserId")
    kind = _USER_ID_TAGS.get(tag)
    if kind is None:
        raise SerdeError(f"unknown variant `{tag}` of UserId")
    if not has_content:
        raise SerdeError("missing field `value` in UserId")
    return UserId(kind, string(content))


# --------------------------------------------------------------------------------------------
# UserAuth
# --------------------------------------------------------------------------------------------


class UserAuthKind(StrEnum):
    EMAIL = "email"
    AUTH_TOKEN = "auth_token"
    SUBSTRATE = "substrate"
    EVM = "evm"
    BITCOIN = "bitcoin"
    SOLANA = "solana"
    O_AUTH2 = "o_auth2"
    PASSKEY = "passkey"


@dataclass(frozen=True, slots=True)
class UserAuth:
    """`UserAuth`: `value` is a code or JWT string, a `Web3Signature`, or the raw OAuth2/passkey
    object (already validated against its struct)."""

    kind: UserAuthKind
    value: Any

    @property
    def signature(self) -> Web3Signature:
        assert isinstance(self.value, Web3Signature)
        return self.value


def _fixed_signature(scheme: SignatureScheme, raw_hex: Any, *, bare: bool = False) -> Web3Signature:
    text = string(raw_hex)
    try:
        raw = decode_bare_hex(text) if bare else decode_hex(text)
    except HexError as exc:
        raise SerdeError(str(exc)) from exc
    if len(raw) != SIGNATURE_LENGTHS[scheme]:
        raise SerdeError(f"expected {SIGNATURE_LENGTHS[scheme]} bytes of {scheme} signature, got {len(raw)}")
    return Web3Signature(scheme, raw)


_SUBSTRATE_SCHEMES = {
    "ed25519": SignatureScheme.ED25519,
    "sr25519": SignatureScheme.SR25519,
    "ecdsa": SignatureScheme.ECDSA,
}

OAUTH2_DATA_FIELDS = (
    Field("provider", lambda v: _oauth2_provider(v)),
    Field("code", string),
    Field("state", string),
    Field("redirect_uri", string, optional=True),
    Field("uid", string),
    Field("id_token", string),
)

PASSKEY_DATA_FIELDS = (
    Field("user_id", parse_user_id),
    Field("client_id", string),
    Field("credential_id", string),
    Field("signature", string),
    Field("auth_data", string),
    Field("client_data_json", string),
)


def _oauth2_provider(value: Any) -> str:
    # `OAuth2Provider` variants are not renamed: "Google" / "Apple", case-sensitive.
    text = string(value)
    if text not in ("Google", "Apple"):
        raise SerdeError(f"unknown variant `{text}`, expected `Google` or `Apple`")
    return text


def parse_user_auth(value: Any) -> UserAuth:
    tag, content, has_content = parse_adjacently_tagged(value, "UserAuth")
    try:
        kind = UserAuthKind(tag)
    except ValueError:
        raise SerdeError(f"unknown variant `{tag}` of UserAuth") from None
    if not has_content:
        raise SerdeError("missing field `value` in UserAuth")
    parsed: Any
    if kind in (UserAuthKind.EMAIL, UserAuthKind.AUTH_TOKEN):
        parsed = string(content)
    elif kind is UserAuthKind.EVM:
        parsed = _fixed_signature(SignatureScheme.ETHEREUM, content)
    elif kind is UserAuthKind.BITCOIN:
        parsed = _fixed_signature(SignatureScheme.BITCOIN, content, bare=True)
    elif kind is UserAuthKind.SOLANA:
        parsed = _fixed_signature(SignatureScheme.ED25519, content)
    elif kind is UserAuthKind.SUBSTRATE:
        sub_tag, sub_content, sub_has = parse_adjacently_tagged(content, "SubstrateSignature")
        scheme = _SUBSTRATE_SCHEMES.get(sub_tag)
        if scheme is None or not sub_has:
            raise SerdeError(f"invalid SubstrateSignature variant `{sub_tag}`")
        parsed = _fixed_signature(scheme, sub_content)
    elif kind is UserAuthKind.O_AUTH2:
        parsed = parse_struct(content, OAUTH2_DATA_FIELDS, "OAuth2Data")
    else:
        parsed = parse_struct(content, PASSKEY_DATA_FIELDS, "PasskeyData")
    return UserAuth(kind, parsed)


# --------------------------------------------------------------------------------------------
# ClientAuth
# --------------------------------------------------------------------------------------------

#: Struct-variant fields, in declaration order (serialisation order too).
CLIENT_AUTH_VARIANTS: dict[str, tuple[Field, ...]] = {
    "wildmeta": (
        Field("google_code", string, optional=True),
        Field("invite_code", string, optional=True),
    ),
    "wildmeta_hl": (
        Field("agent_address", string),
        Field("business_json", string),
        Field("main_address", string),
        Field("signature", string),
        Field("login_type", u32),
    ),
    "wildmeta_backend": (Field("signature", string),),
}

#: The `agentkeys-patch` profile adds this variant, mirroring `wildmeta_backend` (DESIGN.md).
AGENTKEYS_BACKEND_VARIANT: dict[str, tuple[Field, ...]] = {
    "agentkeys_backend": (Field("signature", string),),
}


@dataclass(frozen=True, slots=True)
class ClientAuth:
    kind: str
    fields: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """serde output: ``{"type": tag, "value": {fields in declaration order, None as null}}``."""
        return {"type": self.kind, "value": dict(self.fields)}


def parse_client_auth(value: Any, variants: dict[str, tuple[Field, ...]] = CLIENT_AUTH_VARIANTS) -> ClientAuth:
    tag, content, has_content = parse_adjacently_tagged(value, "ClientAuth")
    fields = variants.get(tag)
    if fields is None:
        raise SerdeError(f"unknown variant `{tag}` of ClientAuth")
    if not has_content:
        raise SerdeError("missing field `value` in ClientAuth")
    return ClientAuth(tag, parse_struct(content, fields, f"ClientAuth::{tag}"))


# --------------------------------------------------------------------------------------------
# to_omni_auth
# --------------------------------------------------------------------------------------------


class OmniAuthError(ValueError):
    """`to_omni_auth` refused the pairing. `omni_userLogin` answers a bare -32700; the passkey
    methods show the message (`str(error)`, the worker's `&'static str`) in ``data.reason``."""


@dataclass(frozen=True, slots=True)
class Web3Auth:
    client_id: str
    identity: Identity
    signature: Web3Signature


@dataclass(frozen=True, slots=True)
class EmailAuth:
    client_id: str
    email: str
    code: str


@dataclass(frozen=True, slots=True)
class AuthTokenAuth:
    token: str


@dataclass(frozen=True, slots=True)
class OAuth2Auth:
    client_id: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PasskeyAuth:
    data: dict[str, Any]


OmniAuth = Web3Auth | EmailAuth | AuthTokenAuth | OAuth2Auth | PasskeyAuth

_WEB3_PAIRING = {
    UserAuthKind.SUBSTRATE: IdentityKind.SUBSTRATE,
    UserAuthKind.EVM: IdentityKind.EVM,
    UserAuthKind.SOLANA: IdentityKind.SOLANA,
    UserAuthKind.BITCOIN: IdentityKind.BITCOIN,
}
#: `to_omni_auth`'s own messages for a web3 signature paired with another identity kind.
_WEB3_MISMATCH = {
    IdentityKind.SUBSTRATE: "User ID must be a Substrate identity for Substrate authentication",
    IdentityKind.EVM: "User ID must be an EVM identity for EVM authentication",
    IdentityKind.SOLANA: "User ID must be a Solana identity for Solana authentication",
    IdentityKind.BITCOIN: "User ID must be a Bitcoin identity for Bitcoin authentication",
}


def to_omni_auth(user_auth: UserAuth, user_id: UserId, client_id: str) -> OmniAuth:
    """`to_omni_auth` (`primitives/src/auth.rs@4a07c15e`)."""
    if user_auth.kind is UserAuthKind.EMAIL:
        if user_id.kind is not IdentityKind.EMAIL:
            raise OmniAuthError("User ID must be an email for Email authentication")
        return EmailAuth(client_id, user_id.value, user_auth.value)
    expected = _WEB3_PAIRING.get(user_auth.kind)
    if expected is not None:
        try:
            identity = user_id.to_identity()
        except IdentityError as exc:
            raise OmniAuthError("Invalid user ID format") from exc
        if identity.kind is not expected:
            raise OmniAuthError(_WEB3_MISMATCH[expected])
        return Web3Auth(client_id, identity, user_auth.signature)
    if user_auth.kind is UserAuthKind.AUTH_TOKEN:
        return AuthTokenAuth(user_auth.value)
    if user_auth.kind is UserAuthKind.O_AUTH2:
        return OAuth2Auth(client_id, user_auth.value)
    return PasskeyAuth(user_auth.value)


def user_auth_to_json(user_auth: UserAuth) -> dict[str, Any]:
    """Serialise a `UserAuth` the way a client sends it (used by the harness and tests)."""
    value = user_auth.value
    if isinstance(value, Web3Signature):
        if value.scheme is SignatureScheme.BITCOIN:
            content: Any = value.raw.hex()
        elif value.scheme is SignatureScheme.ETHEREUM:
            content = hex_encode(value.raw)
        elif user_auth.kind is UserAuthKind.SUBSTRATE:
            content = {"type": value.scheme.value, "value": value.raw.hex()}
        else:
            content = value.raw.hex()
        return {"type": user_auth.kind.value, "value": content}
    return {"type": user_auth.kind.value, "value": value}

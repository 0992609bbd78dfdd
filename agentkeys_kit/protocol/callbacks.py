"""The worker → backend callbacks (pumpx API, and the agentkeys API of the patch): paths,
bodies, the ``{code, message, data}`` envelope and how the worker decodes replies.

Spec §1b and §8. Facts pinned here:

* paths are joined to the base URL with WHATWG `Url::join` (RFC 3986 reference resolution): a
  base without a trailing slash loses its last segment (``http://h/pumpx`` + ``v3/x`` ⇒
  ``http://h/v3/x``), keep the slash to keep the prefix; the wildmeta path is absolute;
* `post_heima_login` body is camelCase ``{userId, clientId, clientAuth, heimaLoginSuccess}`` but
  its reply data is snake_case ``{"user_id": …}``; `get_account_user_id` and `user_connect`
  replies are camelCase;
* the envelope needs all three of ``code`` (u32), ``message`` (string) and ``data`` (the
  endpoint's struct; ``null`` does not decode, not even for `add_wallet`'s empty struct);
* success is ``code == 10000``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

from agentkeys_kit.protocol.serde_rules import Field, SerdeError, boolean, parse_struct, string, u32

SUCCESS_CODE = 10000

POST_HEIMA_LOGIN_PATH = "v3/account/post_heima_login"
ADD_WALLET_PATH = "v3/account/add_wallet"
GET_ACCOUNT_USER_ID_PATH = "v3/account/get_account_user_id"
USER_CONNECT_PATH = "v3/account/user_connect"
VERIFY_GOOGLE_CODE_PATH = "v3/account/verify_google_code"
CHECK_HYPER_AGENT_ADDRESS_PATH = "/v1/account/check_hyper_agent_address"
#: The agentkeys patch calls the same endpoint on the agentkeys API, *relative* to its base URL,
#: so a base path (``http://broker/agentkeys/``) is kept as it is for the v3 callbacks.
AGENTKEYS_CHECK_HYPER_AGENT_ADDRESS_PATH = "v1/account/check_hyper_agent_address"

DEFAULT_LANGUAGE = "en"  # reqwest default header `X-Language: en`


def join_url(base: str, path: str) -> str:
    """`Url::join(path)`: RFC 3986 resolution, so the trailing-slash rule of the worker holds."""
    return urljoin(base, path)


_FORM_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-._")


def form_urlencode(pairs: list[tuple[str, str]]) -> str:
    """`serde_urlencoded` (reqwest's `.query()` and `.form()`), i.e. `form_urlencoded::byte_serialize`:
    ASCII letters, digits and ``*-._`` stay, a space is ``+``, every other UTF-8 byte is ``%XX``
    (upper case). Python's `quote_plus` differs (it keeps ``~``), hence this short function."""

    def encode(text: str) -> str:
        out = []
        for byte in text.encode("utf-8"):
            if byte in _FORM_SAFE:
                out.append(chr(byte))
            elif byte == 0x20:
                out.append("+")
            else:
                out.append(f"%{byte:02X}")
        return "".join(out)

    return "&".join(f"{encode(name)}={encode(value)}" for name, value in pairs)


def check_hyper_agent_address_body(main_address: str, agent_address: str, login_type: int) -> dict[str, Any]:
    """`HyperliquidLinkRequest` (`wildmeta-api/src/methods/verify_hyperliquid_link.rs@20a922b2`):
    snake_case, in this order, ``login_type`` as ``i32`` (a u32 above 2³¹−1 wraps)."""
    wrapped = login_type - (1 << 32) if login_type >= 1 << 31 else login_type
    return {"main_address": main_address, "agent_address": agent_address, "login_type": wrapped}


def post_heima_login_body(
    user_id: dict[str, Any], client_id: str, client_auth: dict[str, Any] | None
) -> dict[str, Any]:
    """`PostHeimaLoginBody`, `#[serde(rename_all = "camelCase")]`, fields in declaration order."""
    return {
        "userId": user_id,
        "clientId": client_id,
        "clientAuth": client_auth,
        "heimaLoginSuccess": True,
    }


def user_connect_body(email: str, invite_code: str | None, google_code: str, user_id: str) -> dict[str, Any]:
    """`UserConnectBody` (camelCase): ``{email, inviteCode, googleCode, userId}``."""
    return {"email": email, "inviteCode": invite_code, "googleCode": google_code, "userId": user_id}


def envelope(data: Any, code: int = SUCCESS_CODE, message: str = "OK") -> dict[str, Any]:
    """A backend reply as dexs-backend (and the worker's mock server) writes it."""
    return {"code": code, "message": message, "data": data}


@dataclass(frozen=True, slots=True)
class ApiResponse:
    """A decoded `ApiResponse<T>`; `data` already validated against the endpoint's struct."""

    code: int
    message: str
    data: dict[str, Any]
    raw: Any

    @property
    def ok(self) -> bool:
        return self.code == SUCCESS_CODE


POST_HEIMA_LOGIN_DATA = (Field("user_id", string, optional=True),)
ADD_WALLET_DATA: tuple[Field, ...] = ()
GET_ACCOUNT_USER_ID_DATA = (Field("userId", string, optional=True),)
USER_CONNECT_DATA = (
    Field("userId", string, optional=True),
    Field("googleAuthCheck", boolean, optional=True),
)
#: `HyperliquidLinkResponseData` (camelCase): ``isBound`` is required.
CHECK_HYPER_AGENT_ADDRESS_DATA = (Field("isBound", boolean),)


def decode_api_response(body: Any, data_fields: tuple[Field, ...], struct: str) -> ApiResponse:
    """`serde_json::from_slice::<ApiResponse<T>>`; `SerdeError` where the worker fails to decode."""
    fields = parse_struct(
        body,
        (
            Field("code", u32),
            Field("message", string),
            Field("data", lambda v: parse_struct(v, data_fields, struct)),
        ),
        "ApiResponse",
    )
    return ApiResponse(code=fields["code"], message=fields["message"], data=fields["data"], raw=body)


__all__ = [
    "ADD_WALLET_DATA",
    "ADD_WALLET_PATH",
    "AGENTKEYS_CHECK_HYPER_AGENT_ADDRESS_PATH",
    "CHECK_HYPER_AGENT_ADDRESS_DATA",
    "CHECK_HYPER_AGENT_ADDRESS_PATH",
    "DEFAULT_LANGUAGE",
    "GET_ACCOUNT_USER_ID_DATA",
    "GET_ACCOUNT_USER_ID_PATH",
    "POST_HEIMA_LOGIN_DATA",
    "POST_HEIMA_LOGIN_PATH",
    "SUCCESS_CODE",
    "USER_CONNECT_DATA",
    "USER_CONNECT_PATH",
    "ApiResponse",
    "SerdeError",
    "check_hyper_agent_address_body",
    "decode_api_response",
    "envelope",
    "form_urlencode",
    "join_url",
    "post_heima_login_body",
    "user_connect_body",
]

"""JSON-RPC error objects exactly as the omni-executor emits them, per error-code era.

Three producers exist in the worker (spec heima-protocol.md §2.4):

1. jsonrpsee `ErrorCode::X.into()`: ``{"code", "message"}`` and **no** ``data``
   (`ServerError(c)` keeps the code but says "Server error");
2. `DetailedError::to_rpc_error()`: ``data`` is always present, an object whose keys come in the
   order ``backend_response, field, expected, received, reason, suggestion`` and are left out when
   unset (`rpc-server/src/detailed_error.rs`, newest revision);
3. era-A `PumpxRpcError` (`methods/omni/common.rs@11408256`): ``-32603 "Internal error"`` with
   ``data.backend_response``.

Two eras are modelled. `current` is the newest worker the index holds (era B, the `oe_*` crates:
`validation.rs@c7751f89`, `detailed_error.rs@4a07c15e`, `error_code.rs` without
`INVALID_EMAIL_FORMAT_CODE`, `user_login.rs@fe493ade`); `legacy` is the era-A snapshot `05ff5857`
(`check_omni_api_response`, `POST_HEIMA_LOGIN_FAILED_CODE`, `request_jwt` with its own messages,
the -32107 e-mail objects, the era-A error-code table). Where era A had no counterpart, or its
text was not read, the legacy catalogue falls back to the current behaviour, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from agentkeys_kit.protocol.rust_fmt import debug_list, to_i32

# jsonrpsee `ErrorCode` (types/src/error.rs) and its canonical messages.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# jsonrpsee `OVERSIZED_REQUEST_CODE`: the HTTP server answers 413 with this object.
OVERSIZED_REQUEST = -32007

JSONRPSEE_MESSAGES: dict[int, str] = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
}

# `rpc-server/src/error_code.rs` (newest small table, index id 65825643255; era-A values noted
# where they differ).
INVALID_BACKEND_RESPONSE_CODE = -32000
INVALID_USEROP_CODE = -32001  # era A: -32201
INVALID_RPC_EXTENSION = -32002
AUTH_VERIFICATION_FAILED_CODE = -32003  # stable across every revision
INVALID_EMAIL_FORMAT_CODE = -32107
SIGNER_SERVICE_ERROR_CODE = -32160
PUMPX_SERVICE_ERROR_CODE = -32161
EMAIL_SERVICE_ERROR_CODE = -32162
STORAGE_SERVICE_ERROR_CODE = -32163
EXTERNAL_API_ERROR_CODE = -32164
WILDMETA_SERVICE_ERROR_CODE = -32165  # era A: +32165 (sic)
# Era A (`error_code.rs@167389b4`).
PUMPX_API_GOOGLE_CODE_VERIFICATION_FAILED_CODE = -32031
POST_HEIMA_LOGIN_FAILED_CODE = -32041
LEGACY_INVALID_USEROP_CODE = -32201
LEGACY_WILDMETA_SERVICE_ERROR_CODE = 32165

PARAMS_PARSE_REASON = "Invalid JSON format or missing required fields"


class _NoData:
    """Marker for an error object without a ``data`` member (distinct from ``data: null``)."""

    _instance: ClassVar[_NoData | None] = None

    def __new__(cls) -> _NoData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_DATA"


NO_DATA: Any = _NoData()


class RpcError(Exception):
    """A JSON-RPC error object; raise it from a method to answer with exactly this object."""

    def __init__(self, code: int, message: str, data: Any = NO_DATA) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not NO_DATA:
            obj["data"] = self.data
        return obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RpcError) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"RpcError({self.to_json()!r})"


def jsonrpsee_error(code: int) -> RpcError:
    """`ErrorCode::X.into()`: canonical message, no data; unknown codes are `ServerError`."""
    return RpcError(code, JSONRPSEE_MESSAGES.get(code, "Server error"))


def server_error(code: int) -> RpcError:
    """`ErrorCode::ServerError(code).into()`: message "Server error", no data."""
    return RpcError(code, "Server error")


_DETAIL_ORDER = ("backend_response", "field", "expected", "received", "reason", "suggestion")


@dataclass(slots=True)
class DetailedError:
    """`DetailedError` builder; `to_rpc_error` always carries a ``data`` object (maybe ``{}``)."""

    code: int
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def with_backend_response(self, code: int, message: str) -> DetailedError:
        self.details["backend_response"] = {"code": code, "message": message}
        return self

    def with_field(self, value: str) -> DetailedError:
        self.details["field"] = value
        return self

    def with_expected(self, value: str) -> DetailedError:
        self.details["expected"] = value
        return self

    def with_received(self, value: str) -> DetailedError:
        self.details["received"] = value
        return self

    def with_reason(self, value: str) -> DetailedError:
        self.details["reason"] = value
        return self

    def with_suggestion(self, value: str) -> DetailedError:
        self.details["suggestion"] = value
        return self

    def to_rpc_error(self) -> RpcError:
        data = {key: self.details[key] for key in _DETAIL_ORDER if key in self.details}
        return RpcError(self.code, self.message, data)


# `DetailedError` helpers of the newest worker (`rpc-server/src/detailed_error.rs@4a07c15e`).


def parse_error(reason: str) -> RpcError:
    """`DetailedError::parse_error(reason)`: -32700 "Parse error" with ``data.reason``."""
    return DetailedError(PARSE_ERROR, "Parse error").with_reason(reason).to_rpc_error()


def internal_error(reason: str) -> RpcError:
    """`DetailedError::internal_error(reason)`: -32603 "Internal error" with ``data.reason``."""
    return DetailedError(INTERNAL_ERROR, "Internal error").with_reason(reason).to_rpc_error()


def invalid_params(field: str, reason: str) -> RpcError:
    """`DetailedError::invalid_params(field, reason)`: -32602 with ``data.field`` and ``reason``."""
    return DetailedError(INVALID_PARAMS, "Invalid params").with_field(field).with_reason(reason).to_rpc_error()


#: `SUPPORTED_EVM_CHAINS` (`rpc-server/src/config/chains.rs@16e35466`), in declaration order.
SUPPORTED_EVM_CHAINS: tuple[int, ...] = (
    1, 11155111, 42161, 421614, 10, 11155420, 137, 80001, 8453, 84532, 31337, 56, 97, 999, 998,
)  # fmt: skip


def invalid_chain_id(chain_id: int) -> RpcError:
    """`DetailedError::invalid_chain_id`: -32602, field ``chain_id``, the supported list in Debug."""
    return invalid_params(
        "chain_id", f"invalid chain_id: {chain_id}, expected one of {debug_list(SUPPORTED_EVM_CHAINS)}"
    )


def auth_verification_failed(message: str) -> DetailedError:
    """`DetailedError::new(AUTH_VERIFICATION_FAILED_CODE, message)`: the caller adds the details."""
    return DetailedError(AUTH_VERIFICATION_FAILED_CODE, message)


class ErrorEra(StrEnum):
    CURRENT = "current"
    LEGACY = "legacy"


class ErrorCatalog:
    """Every error the simulated login path can answer with, for the `current` era.

    One method per situation, named after it; each docstring names the Rust line it mirrors.
    """

    era: ClassVar[ErrorEra] = ErrorEra.CURRENT

    # --- transport / framing (jsonrpsee; identical in both eras) -------------------------------
    def parse_error(self) -> RpcError:
        """Body is not JSON (or not an object/array): jsonrpsee `ErrorCode::ParseError`."""
        return jsonrpsee_error(PARSE_ERROR)

    def invalid_request(self) -> RpcError:
        """JSON with an `id` but not a valid request object: `ErrorCode::InvalidRequest`."""
        return jsonrpsee_error(INVALID_REQUEST)

    def method_not_found(self) -> RpcError:
        return jsonrpsee_error(METHOD_NOT_FOUND)

    def oversized_request(self, limit: int) -> RpcError:
        """jsonrpsee HTTP `too_large`: 413 with -32007 "Request is too big"."""
        return RpcError(OVERSIZED_REQUEST, "Request is too big", f"Exceeded max limit of {limit}")

    # --- protected-method middleware (`middlewares/rpc_middleware.rs`) -------------------------
    def missing_authorization(self) -> RpcError:
        """No Authorization header: `ErrorObject::borrowed(-32603, "Internal error", None)`."""
        return RpcError(INTERNAL_ERROR, "Internal error")

    def authentication_failed(self) -> RpcError:
        """Token refused: `AUTH_VERIFICATION_FAILED_CODE, "Authentication failed"`, no data."""
        return RpcError(AUTH_VERIFICATION_FAILED_CODE, "Authentication failed")

    # --- params ------------------------------------------------------------------------------
    def params_parse(self) -> RpcError:
        """`parse_rpc_params` failure (`utils/validation.rs@05ff5857`)."""
        return DetailedError(PARSE_ERROR, "Parse error").with_reason(PARAMS_PARSE_REASON).to_rpc_error()

    def plain_parse_error(self) -> RpcError:
        """`ErrorCode::ParseError` (bad `user_id`/`user_auth` pairing, bad hex in `user_id`)."""
        return jsonrpsee_error(PARSE_ERROR)

    def plain_invalid_params(self) -> RpcError:
        """`ErrorCode::InvalidParams` (unsupported client in `omni_userLogin`, bad account)."""
        return jsonrpsee_error(INVALID_PARAMS)

    # --- omni_requestEmailVerificationCode ---------------------------------------------------
    def invalid_email(self, email: str) -> RpcError:
        """`validate_email`: `email_address::is_valid` failed (`utils/validation.rs@c7751f89:81-92`)."""
        return invalid_params("email", f"invalid email address: {email}")

    def email_without_tld(self, email: str) -> RpcError:
        """`validate_email`: the domain part has no dot (`utils/validation.rs@c7751f89:94-102`)."""
        return invalid_params("email", f"expect TLD in email address: {email}")

    def mailer_not_configured(self, client_id: str) -> RpcError:
        """`get_mailer_for_client` failed: EXTERNAL_API_ERROR_CODE."""
        return (
            DetailedError(EXTERNAL_API_ERROR_CODE, "Failed to initialize email service")
            .with_field("client_id")
            .with_received(client_id)
            .with_reason(f"Error: No mailer configuration found for client '{client_id}'")
            .to_rpc_error()
        )

    def email_send_failed(self, email: str) -> RpcError:
        return (
            DetailedError(EMAIL_SERVICE_ERROR_CODE, "Email service error")
            .with_field("email")
            .with_received(email)
            .with_suggestion("Failed to send verification email. Please try again later.")
            .to_rpc_error()
        )

    # --- omni_userLogin ----------------------------------------------------------------------
    def login_verification_failed(self) -> RpcError:
        """`verify_auth` failed: `ServerError(AUTH_VERIFICATION_FAILED_CODE)`."""
        return server_error(AUTH_VERIFICATION_FAILED_CODE)

    def backend_transport(self, op: str, reason: str) -> RpcError:
        """`DetailedError::pumpx_service_error(op, format!("{:?}", e))`."""
        return (
            DetailedError(PUMPX_SERVICE_ERROR_CODE, f"Pumpx service error in {op}").with_reason(reason).to_rpc_error()
        )

    def backend_code(self, op: str, code: int, message: str) -> RpcError:
        """`check_backend_response`: `code != 10000` ⇒ -32000 "Invalid backend response"; the
        envelope's u32 code is written ``response.code as i32`` (`detailed_error.rs@4a07c15e`)."""
        return (
            DetailedError(INVALID_BACKEND_RESPONSE_CODE, "Invalid backend response")
            .with_field(op)
            .with_backend_response(to_i32(code), message)
            .to_rpc_error()
        )

    def post_heima_login_transport(self, reason: str) -> RpcError:
        return self.backend_transport("post_heima_login", reason)

    def post_heima_login_code(self, code: int, message: str) -> RpcError:
        return self.backend_code("post_heima_login", code, message)

    # --- omni_requestJwt ---------------------------------------------------------------------
    def request_jwt_verification_failed(self) -> RpcError:
        return (
            DetailedError(AUTH_VERIFICATION_FAILED_CODE, "Authentication verification failed")
            .with_suggestion("Please check your authentication credentials")
            .to_rpc_error()
        )

    def get_account_user_id_transport(self, reason: str) -> RpcError:
        return self.backend_transport("get_account_user_id", reason)

    def empty_user_id(self) -> RpcError:
        """`res.data.user_id.ok_or_internal("Empty data.user_id")`."""
        return DetailedError(INTERNAL_ERROR, "Internal error").with_reason("Empty data.user_id").to_rpc_error()

    def user_connect_transport(self, reason: str) -> RpcError:
        return self.backend_transport("user_connect", reason)

    def user_connect_code(self, code: int, message: str) -> RpcError:
        return self.backend_code("user_connect", code, message)

    def google_auth_check_failed(self) -> RpcError:
        return (
            DetailedError(INTERNAL_ERROR, "Internal error")
            .with_reason("Failed to verify google auth within RequestJwt")
            .to_rpc_error()
        )

    #: `current` checks the envelope code before `googleAuthCheck`; era A did it the other way
    #: round, after storing the tokens.
    user_connect_code_checked_first: ClassVar[bool] = True

    # --- omni_addWallet ----------------------------------------------------------------------
    def access_token_not_stored(self) -> RpcError:
        """`storage_service_error("get access token")`: data is ``{}``."""
        return DetailedError(STORAGE_SERVICE_ERROR_CODE, "Storage service error in get access token").to_rpc_error()

    def add_wallet_transport(self, reason: str) -> RpcError:
        return self.backend_transport("add_wallet", reason)

    def add_wallet_code(self, code: int, message: str) -> RpcError:
        return self.backend_code("add_wallet", code, message)

    # --- omni_submitUserOpWithAuth -----------------------------------------------------------
    def wildmeta_service_error(self, op: str) -> RpcError:
        """`DetailedError::wildmeta_service_error(op)`: data ``{}``."""
        return DetailedError(WILDMETA_SERVICE_ERROR_CODE, f"Wildmeta service error in {op}").to_rpc_error()

    def invalid_user_op(self, reason: str) -> RpcError:
        """`DetailedError::invalid_user_op(reason)`: "Invalid UserOp" with the reason as ``received``."""
        return DetailedError(INVALID_USEROP_CODE, "Invalid UserOp").with_received(reason).to_rpc_error()

    #: the worker's user-op errors that use INVALID_USEROP_CODE directly (`validate_hyperevm_core_writer`)
    invalid_userop_code: ClassVar[int] = INVALID_USEROP_CODE

    #: `omni_getOmniAccount` is registered (era A only: `methods/omni/get_omni_account.rs@beb343ae`)
    has_get_omni_account: ClassVar[bool] = False


class LegacyErrorCatalog(ErrorCatalog):
    """Era A (`user_login.rs@05ff5857`, `request_jwt.rs@05ff5857`, `common.rs@11408256`)."""

    era: ClassVar[ErrorEra] = ErrorEra.LEGACY

    @staticmethod
    def _pumpx_rpc_error(code: int, message: str) -> RpcError:
        """`PumpxRpcError::from_api_response`: -32603 with `data.backend_response`."""
        return RpcError(
            INTERNAL_ERROR,
            "Internal error",
            {"backend_response": {"code": code, "message": message}},
        )

    def post_heima_login_transport(self, reason: str) -> RpcError:
        """`ServerError(POST_HEIMA_LOGIN_FAILED_CODE)`: the reqwest error is only logged."""
        return server_error(POST_HEIMA_LOGIN_FAILED_CODE)

    def post_heima_login_code(self, code: int, message: str) -> RpcError:
        return self._pumpx_rpc_error(code, message)

    def get_account_user_id_transport(self, reason: str) -> RpcError:
        return (
            DetailedError(INTERNAL_ERROR, "Failed to get account user ID")
            .with_suggestion("Please try again")
            .to_rpc_error()
        )

    def empty_user_id(self) -> RpcError:
        return (
            DetailedError(INTERNAL_ERROR, "Failed to get account user ID")
            .with_reason("User ID not found in response")
            .to_rpc_error()
        )

    def user_connect_transport(self, reason: str) -> RpcError:
        return (
            DetailedError(INTERNAL_ERROR, "Failed to connect user").with_suggestion("Please try again").to_rpc_error()
        )

    def user_connect_code(self, code: int, message: str) -> RpcError:
        return self._pumpx_rpc_error(code, message)

    def google_auth_check_failed(self) -> RpcError:
        return (
            DetailedError(PUMPX_API_GOOGLE_CODE_VERIFICATION_FAILED_CODE, "Google code verification failed")
            .with_suggestion("Please check your Google verification code and try again")
            .to_rpc_error()
        )

    user_connect_code_checked_first: ClassVar[bool] = False

    # omni_addWallet had params in era A (`add_wallet.rs@05b23806`); the no-params method only
    # exists in the current era, so its transport errors keep the current objects, but a
    # non-10000 envelope maps through `check_omni_api_response` as everywhere else in era A.
    def add_wallet_code(self, code: int, message: str) -> RpcError:
        return self._pumpx_rpc_error(code, message)

    # `utils/validation.rs@2afa2455`: the era-A objects with -32107 and expected/suggestion texts.
    def invalid_email(self, email: str) -> RpcError:
        return (
            DetailedError(INVALID_EMAIL_FORMAT_CODE, "Invalid email format")
            .with_field("email")
            .with_received(email)
            .with_expected("Valid email address (e.g., user@example.com)")
            .with_suggestion("Please provide a valid email address")
            .to_rpc_error()
        )

    def email_without_tld(self, email: str) -> RpcError:
        return (
            DetailedError(INVALID_EMAIL_FORMAT_CODE, "Invalid email format")
            .with_field("email")
            .with_received(email)
            .with_expected("Email address with a valid domain (e.g., user@example.com)")
            .with_suggestion("Email domain must include a top-level domain (TLD)")
            .to_rpc_error()
        )

    # The era-A `error_code.rs` table (index id 65732582473): WILDMETA +32165, INVALID_USEROP -32201.
    def wildmeta_service_error(self, op: str) -> RpcError:
        return DetailedError(LEGACY_WILDMETA_SERVICE_ERROR_CODE, f"Wildmeta service error in {op}").to_rpc_error()

    def invalid_user_op(self, reason: str) -> RpcError:
        return DetailedError(LEGACY_INVALID_USEROP_CODE, "Invalid UserOp").with_received(reason).to_rpc_error()

    invalid_userop_code: ClassVar[int] = LEGACY_INVALID_USEROP_CODE
    has_get_omni_account: ClassVar[bool] = True


def catalog_for(era: ErrorEra | str) -> ErrorCatalog:
    return LegacyErrorCatalog() if ErrorEra(era) is ErrorEra.LEGACY else ErrorCatalog()

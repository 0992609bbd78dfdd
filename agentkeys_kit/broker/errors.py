"""The broker's replies: the worker's ``{code, message, data}`` envelope, success ``10000``.

Refusals are HTTP 4xx with the same envelope and a broker code that names the rule (the worker
treats any non-2xx as a transport failure, so the code is for people and logs):

| code | HTTP | `data.error` | meaning |
|---|---|---|---|
| 40000 | 400 | `malformed_body` | body or query is not what the worker sends (also: not strict JSON, see `http`) |
| 40001 | 400 | `malformed_request` | the HTTP parser refused the message; `data.reason` names its rule |
| 40100 | 401 | `missing_bearer` | no ``Authorization: Bearer`` on a callback that needs one |
| 40101 | 401 | `invalid_token` | token refused (signature, alg, exp, aud, typ, sub; non-ASCII `Authorization`) |
| 40101 | 401 | `invalid_token` | bearer refused (`bearer.py`: also unrecorded TEE token, unknown kid, revoked) |
| 40102 | 401 | `login_refused` | a login proof was refused (signature, expired or unknown login, nonce already used) |
| 40110 | 401 | `wrong_code` | e-mail login (`login/email.py`): the code is wrong (`data.attempts_left`) |
| 40111–40114 | 401 | `code_expired` … | … `code_used`, `no_code` (none requested), `too_many_attempts` (5 used) |
| 40010 | 400 | `unknown_state` | a Google callback whose `state` is unknown, expired or used (`login/google.py`) |
| 40115, 40116 | 401 | `request_expired`, `google_login_failed` (`reason`) | Google sign-in request expired or failed |
| 40117 | 401 | `wrong_confirmation_code` | Google sign-in: not the code the browser shows (`data.attempts_left`) |
| 40300 | 403 | `identity_mismatch` | token ``sub``/``aud`` is not the identity the body names |
| 40301 | 403 | `network_refused` | credential-less callback from outside `BROKER_CALLBACK_ALLOW_CIDRS` |
| 40302 | 403 | `client_not_accepted` | ``clientId`` not in `BROKER_ACCEPTED_CLIENT_IDS` |
| 40303 | 403 | `not_a_wallet_identity` | grants need a master that logged in with an EVM wallet |
| 40400 | 404 | `unknown_user` / `unknown_grant` / `not_found` | nothing stored under that id / no such path |
| 40401 | 404 | `unknown_request` | no such Google sign-in request (or its session was handed out) |
| 40500 | 405 | `method_not_allowed` | the path exists for another method |
| 40800 | 408 | `request_timeout` | headers or body too slow (`BROKER_HEADER_`/`BODY_TIMEOUT_SECONDS`) |
| 40900 | 409 | `already_revoked` | the grant was revoked before |
| 40901 | 409 | `grant_exists` | the master already has an active grant for that agent |
| 40903 | 409 | `not_signed_in_yet` | Google sign-in confirmed before the browser came back from Google |
| 41300 | 413 | `body_too_large` | body above 64 KiB |
| 41500 | 415 | `unsupported_content_encoding` | a `Content-Encoding` but `identity` (the worker never compresses) |
| 42900 | 429 | `rate_limited` | a login rate limit (`data.limit`, `data.retry_after_seconds`, `Retry-After`) |
| 50000 | 500 | `internal_error` | a bug in the broker (its traceback goes to the log, not to the caller) |
| 50200, 50201 | 502 | `mail_not_sent`, `provider_unavailable` | the SMTP relay or the OpenID provider failed |
| 50300 | 503 | `storage_unavailable` | the database failed; nothing was written |
| 50301 | 503 | `too_many_connections` | every connection up to `BROKER_MAX_CONNECTIONS` is busy; retry |

Every error the broker sends is this envelope, the HTTP parser's own refusals included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

SUCCESS = 10000


class BrokerError(Exception):
    def __init__(self, status: int, code: int, error: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.error = error
        self.message = message
        self.details = details
        #: close the connection after this reply (a body left unread, too large or too slow)
        self.close_connection = False

    def envelope(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "data": {"error": self.error, **self.details}}

    def response(self) -> web.Response:
        response = web.json_response(self.envelope(), status=self.status)
        # What the access log and the metrics report; a plain value, not the exception (whose
        # traceback would keep the request and its body alive).
        response[REFUSAL] = Refusal(self.error, self.details.get("reason"))
        if self.close_connection:
            response.force_close()
        return response


@dataclass(frozen=True, slots=True)
class Refusal:
    """The refusal a response carries (`REFUSAL`): its `data.error` and `data.reason`."""

    error: str
    reason: Any = None


REFUSAL = web.ResponseKey("broker_refusal", Refusal)


def ok(data: Any) -> web.Response:
    return web.json_response({"code": SUCCESS, "message": "OK", "data": data})


def malformed(message: str) -> BrokerError:
    return BrokerError(400, 40000, "malformed_body", message)


def missing_bearer() -> BrokerError:
    return BrokerError(401, 40100, "missing_bearer", "Authorization: Bearer <TEE access token> is required")


def invalid_token(reason: str) -> BrokerError:
    return BrokerError(401, 40101, "invalid_token", "the TEE token was refused", reason=reason)


def invalid_bearer(reason: str) -> BrokerError:
    """A protected endpoint refused the bearer (a TEE access token or a broker session)."""
    return BrokerError(401, 40101, "invalid_token", "the bearer token was refused", reason=reason)


def login_refused(reason: str) -> BrokerError:
    return BrokerError(401, 40102, "login_refused", "the login was refused", reason=reason)


def identity_mismatch(reason: str) -> BrokerError:
    return BrokerError(403, 40300, "identity_mismatch", "the token does not prove this identity", reason=reason)


def network_refused(remote: str | None, what: str = "callbacks are") -> BrokerError:
    return BrokerError(403, 40301, "network_refused", f"{what} not served to {remote or 'this peer'}")


def client_not_accepted(client_id: str) -> BrokerError:
    return BrokerError(403, 40302, "client_not_accepted", f"client id {client_id!r} is not served here")


def not_a_wallet_identity() -> BrokerError:
    return BrokerError(
        403, 40303, "not_a_wallet_identity", "grants are made by a master that logged in with an EVM wallet"
    )


def unknown_user() -> BrokerError:
    return BrokerError(404, 40400, "unknown_user", "no user is stored for this identity")


def unknown_grant() -> BrokerError:
    return BrokerError(404, 40400, "unknown_grant", "no such grant for this master")


def already_revoked() -> BrokerError:
    return BrokerError(409, 40900, "already_revoked", "the grant is already revoked")


def grant_exists() -> BrokerError:
    return BrokerError(409, 40901, "grant_exists", "this master already has an active grant for that agent")


def body_too_large(limit: int) -> BrokerError:
    return BrokerError(413, 41300, "body_too_large", f"the body exceeds {limit} bytes")


def storage_unavailable() -> BrokerError:
    return BrokerError(503, 50300, "storage_unavailable", "the database is unavailable; nothing was written")


def malformed_request(reason: str) -> BrokerError:
    return BrokerError(400, 40001, "malformed_request", "the request is not valid HTTP/1.1", reason=reason)


def authorization_not_ascii() -> BrokerError:
    return invalid_token("the Authorization header is not visible ASCII")


def request_timeout(part: str, seconds: float) -> BrokerError:
    return BrokerError(408, 40800, "request_timeout", f"the request {part} did not arrive within {seconds:g} s")


def unsupported_content_encoding() -> BrokerError:
    return BrokerError(
        415, 41500, "unsupported_content_encoding", "send the body uncompressed (Content-Encoding: identity)"
    )


def http_status(status: int, reason: str) -> BrokerError:
    """An error aiohttp's router or server raised (404 for an unknown path, 405, …), as an envelope."""
    return BrokerError(status, status * 100, reason.lower().replace(" ", "_"), reason)


def internal_error() -> BrokerError:
    return BrokerError(500, 50000, "internal_error", "internal error")


def too_many_connections(limit: int) -> BrokerError:
    return BrokerError(503, 50301, "too_many_connections", f"all {limit} connections are busy; retry shortly")

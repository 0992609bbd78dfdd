"""The request layer every broker endpoint stands on: read what a request carries, strictly, and
answer every error in the envelope.

Use these in a handler, never `request.json()`, `request.read()`, `request.query` or
`request.headers["Authorization"]` directly:

* `read_body` — the whole body, at most `MAX_BODY` bytes, within `BROKER_BODY_TIMEOUT_SECONDS`,
  uncompressed (any `Content-Encoding` but ``identity`` is 415);
* `json_body` — `read_body` parsed as strict JSON (`protocol.json_rules`: UTF-8 only, no repeated
  key, no lone surrogate, no U+0000, no NaN): 400 ``malformed_body`` otherwise;
* `require_fields` — a JSON object with these fields of these types;
* `query_param` — one query parameter decoded as the worker's reqwest/serde_urlencoded writes it
  (form-urlencoded, ``+`` is a space, strict UTF-8, one occurrence): 400 otherwise;
* `authorization_header` — the ``Authorization`` value, refused unless visible ASCII and single;
* `note_omni_account` — tell the access log whose request this is, once a token proved it;
* `client_address` — the client's address: the TCP peer, or behind a proxy of
  `BROKER_TRUSTED_PROXY_CIDRS` the address its ``X-Forwarded-For`` names (rate limits, audit, log).

`install` (called by `app.create_app`) adds `envelope_middleware`: a `BrokerError` becomes its
envelope, aiohttp's 404/405 become envelopes, a `StorageError` is a 503 with one log line, and
anything else is a 500 envelope whose traceback goes to the log only. Errors raised by aiohttp's
HTTP parser before any handler runs are turned into envelopes by `broker.server`, which also
holds the connection limits; `broker.observability` writes the access log and the metrics.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from agentkeys_kit.broker import errors
from agentkeys_kit.broker.config import IpNetwork
from agentkeys_kit.broker.errors import BrokerError
from agentkeys_kit.broker.observability import CLIENT_ADDRESS, OMNI_ACCOUNT, route_of
from agentkeys_kit.broker.state import STATE
from agentkeys_kit.broker.storage import StorageError
from agentkeys_kit.protocol import json_rules

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
_CHUNK = 16 * 1024
#: RFC 9110 §11.4: credentials are a scheme and token68 / auth-params, all visible ASCII plus space.
_VISIBLE_ASCII = re.compile(r"[\x20-\x7e]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestSettings:
    """What the request helpers need from the configuration (set by `install`)."""

    def __init__(self, body_timeout: float) -> None:
        self.body_timeout = body_timeout


SETTINGS = web.AppKey("broker_request_settings", RequestSettings)


def install(app: web.Application, *, body_timeout: float) -> None:
    app[SETTINGS] = RequestSettings(body_timeout)
    app.middlewares.append(envelope_middleware)


# --------------------------------------------------------------------------- body


async def read_body(request: web.Request, limit: int = MAX_BODY) -> bytes:
    """The whole body (however it is split on the wire or chunked), at most `limit` bytes, within
    the body timeout. Over the limit or too slow, the connection is closed after the reply."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise errors.unsupported_content_encoding()
    if request.content_length is not None and request.content_length > limit:
        raise _closing(errors.body_too_large(limit))
    timeout = _body_timeout(request)
    _mark_reading_body(request, True)
    try:
        async with asyncio.timeout(timeout):
            return await _read_bounded(request, limit)
    except TimeoutError:
        raise _closing(errors.request_timeout("body", timeout)) from None
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        # Bad chunked framing or a body cut short: say which rule, never the bytes.
        raise _closing(errors.malformed_request(type(exc).__name__)) from None
    except ConnectionError:
        raise _closing(errors.malformed_request("the connection closed before the body was complete")) from None
    finally:
        _mark_reading_body(request, False)


async def _read_bounded(request: web.Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.content.iter_chunked(_CHUNK):
        if len(body) + len(chunk) > limit:
            raise _closing(errors.body_too_large(limit))
        body += chunk
    return bytes(body)


def _body_timeout(request: web.Request) -> float:
    settings = request.app.get(SETTINGS)
    return settings.body_timeout if settings is not None else 10.0


def _mark_reading_body(request: web.Request, reading: bool) -> None:
    """Tell the connection guard (`broker.server`) that this connection waits on its client."""
    protocol = request.protocol
    if hasattr(protocol, "reading_body"):
        protocol.reading_body = reading


def _closing(error: BrokerError) -> BrokerError:
    error.close_connection = True
    return error


async def json_body(request: web.Request) -> Any:
    """The body as strict JSON (see `protocol.json_rules`); 400 ``malformed_body`` otherwise."""
    raw = await read_body(request)
    try:
        return json_rules.loads(raw)
    except json_rules.JsonRefused as exc:
        raise errors.malformed(f"the body is not strict JSON: {exc}") from None


def require_fields(body: Any, fields: dict[str, type | tuple[type, ...]], name: str) -> dict[str, Any]:
    """`body` is an object with each of `fields` of its type(s) (``bool`` is not an ``int``)."""
    if not isinstance(body, dict):
        raise errors.malformed(f"{name} must be a JSON object")
    for key, kinds in fields.items():
        if key not in body:
            raise errors.malformed(f"{name}: missing field {key!r}")
        value = body[key]
        if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            raise errors.malformed(f"{name}: field {key!r} has the wrong type")
        if not isinstance(value, kinds):
            raise errors.malformed(f"{name}: field {key!r} has the wrong type")
    return body


# --------------------------------------------------------------------------- query and headers


def query_param(request: web.Request, name: str) -> str:
    """The one value of query parameter `name`, decoded as application/x-www-form-urlencoded
    exactly as the worker writes it (reqwest → serde_urlencoded → form_urlencoded: every byte but
    ``A-Za-z0-9*-._`` is ``%XX``, a space is ``+``; `heima-login-surface.md` §0 #7).

    Nothing is normalised: a ``%`` not followed by two hex digits, bytes that are not UTF-8, a
    U+0000 or the parameter given twice is refused (aiohttp's `request.query` would turn every
    invalid sequence into U+FFFD, so different inputs would name the same value). A raw ``+`` is
    a space, as the form encoding says; the worker sends a ``+`` of the value as ``%2B``."""
    values = [value for key, value in _query_pairs(request.rel_url.raw_query_string) if key == name]
    if len(values) != 1:
        raise errors.malformed(f"query parameter {name} must be given exactly once")
    return values[0]


def _query_pairs(raw: str) -> list[tuple[str, str]]:
    pairs = []
    for part in raw.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((_form_decode(key), _form_decode(value)))
    return pairs


def _form_decode(text: str) -> str:
    if _BAD_PERCENT.search(text):
        raise errors.malformed("the query has a % that is not followed by two hex digits")
    try:
        decoded = unquote_to_bytes(text.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        raise errors.malformed("the query is not UTF-8 once percent-decoded") from None
    if "\x00" in decoded:
        raise errors.malformed("the query contains U+0000")
    return decoded


def authorization_header(request: web.Request) -> str | None:
    """The ``Authorization`` value, or None. Refused (401 ``invalid_token``) when it is sent twice
    or holds anything but visible ASCII: the worker's `HeaderValue::to_str` treats such a header
    as absent (`heima-login-surface.md` §0 #4), and a surrogate-escaped byte once reached the
    bearer hash as a 500."""
    values = request.headers.getall("Authorization", [])
    if not values:
        return None
    if len(values) > 1:
        raise errors.invalid_token("more than one Authorization header")
    if not _VISIBLE_ASCII.fullmatch(values[0]):
        raise errors.authorization_not_ascii()
    return values[0]


_PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def require_peer_in(request: web.Request, networks: tuple[IpNetwork, ...], what: str) -> None:
    """403 ``network_refused`` ("`what` not served to …") unless the TCP peer is in `networks` and
    no proxy header is present: behind a reverse proxy every client would look like the proxy, and
    `BROKER_TRUSTED_PROXY_CIDRS` is about counting clients, never about letting them in here."""
    remote = request.remote
    if any(header in request.headers for header in _PROXY_HEADERS):
        raise errors.network_refused(f"{remote} (through a proxy)", what)
    address = _address(remote)
    if address is None or not any(address in network for network in networks):
        raise errors.network_refused(remote, what)


def forwarded_client(peer: str | None, forwarded_for: list[str], trusted: tuple[IpNetwork, ...]) -> str | None:
    """The client behind `peer`: `peer` itself unless it is a trusted proxy; then, walking
    ``X-Forwarded-For`` from the right (each proxy appends the address it was called from), the
    first address that is not a trusted proxy. Only hops a trusted proxy wrote are believed: the
    walk stops at the first untrusted address, and at anything that is not an address (the last
    trusted hop is then the client, as far as anyone can tell)."""
    if not _is_trusted(_address(peer), trusted):
        return peer
    client = peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        client = str(address)
        if not _is_trusted(address, trusted):
            break
    return client


def _is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, trusted: tuple[IpNetwork, ...]) -> bool:
    return address is not None and any(address in network for network in trusted)


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address (an IPv4-mapped IPv6 address as its IPv4 address), or None."""
    try:
        address = ipaddress.ip_address(text or "")
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(request: web.Request) -> str | None:
    """Whom rate limits, refusal budgets, audit rows and the access log count this request to
    (`forwarded_client` with `BROKER_TRUSTED_PROXY_CIDRS`; found once per request)."""
    known = request.get(CLIENT_ADDRESS)
    if known is None:
        state = request.app.get(STATE)
        trusted = state.config.trusted_proxy_cidrs if state is not None else ()
        known = forwarded_client(request.remote, request.headers.getall("X-Forwarded-For", []), trusted) or ""
        request[CLIENT_ADDRESS] = known
    return known or None


def note_omni_account(request: web.Request, omni_account: str) -> None:
    """Record whose request this is (the ``sub`` of a verified token) for the access log."""
    request[OMNI_ACCOUNT] = omni_account


# --------------------------------------------------------------------------- the envelope for every error


@web.middleware
async def envelope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error a handler or the router raises leaves as the envelope."""
    try:
        authorization_header(request)  # a malformed credential is refused before any handler sees it
        client_address(request)  # for the access log, whatever the handler does
        return await handler(request)
    except BrokerError as error:
        return error.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = errors.http_status(exc.status, exc.reason).response()
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except StorageError as exc:
        # One line, no traceback: during an outage every request would otherwise log 60 lines.
        log.warning("database error on %s %s: %s", request.method, route_of(request), type(exc).__name__)
        return errors.storage_unavailable().response()
    except Exception:
        log.exception("unexpected failure on %s %s", request.method, route_of(request))
        return errors.internal_error().response()

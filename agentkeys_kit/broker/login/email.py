"""E-mail login (`local` backend): a 6-digit code sent over SMTP, then traded for a session.

* ``POST /v1/auth/email/request {email}`` → ``{sent: true, expires_in_seconds: 600}``: the address
  is validated as the worker validates it (`protocol.email_rules`) and keyed as its OmniAccount
  hashes it (lowercased, at most 64 bytes); a fresh code replaces any pending one.
* ``POST /v1/auth/email/verify {email, code}`` → the session (`broker.login.complete_login`,
  identity type ``email``).

Rules: the code is stored only as an HMAC-SHA256 under the broker's code key
(`BROKER_EMAIL_CODE_KEY_PATH`; a 6-digit code's plain SHA-256 would be reversed in a second by
anyone who reads the database), lives 10 minutes, is spent by its first correct try, and allows 5
tries in all (the sixth is refused even if right). Requests are limited per address (per hour) and
per client address (per minute) in database buckets shared by every replica; the client address
is checked first, so one client cannot spend the budget of addresses it does not own beyond its
own limit. Refusals: 400 ``malformed_body`` (not an e-mail address, not 6 digits), 401
``wrong_code`` (with ``attempts_left``), ``code_expired``, ``code_used``, ``no_code``,
``too_many_attempts``, 429 ``rate_limited`` (``Retry-After``), 502 ``mail_not_sent``.

Mailers: ``smtp`` (aiosmtplib; ``smtps://`` is TLS from the first byte, ``smtp://`` requires
STARTTLS except to a loopback relay, where it is used when offered) and ``console`` for development,
which writes each code to a 0600 file in `BROKER_MAIL_CONSOLE_DIR` (named by the percent-encoded
lowercased address) and logs only where it went, never the code.

Written here rather than taken from a library: the code store and its limits are the broker's own
rules over its own tables; mail composition and transport are the standard library's
`email.message` and aiosmtplib.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import aiosmtplib
from aiohttp import web

from agentkeys_kit.broker import errors
from agentkeys_kit.broker.callbacks import canonical_email
from agentkeys_kit.broker.config import BrokerConfigError, EmailLoginSettings
from agentkeys_kit.broker.errors import BrokerError
from agentkeys_kit.broker.http import json_body, require_fields
from agentkeys_kit.broker.login import complete_login
from agentkeys_kit.broker.login.limits import bucket_name, client_source, login_endpoint, rate_limited
from agentkeys_kit.broker.state import STATE, BrokerState
from agentkeys_kit.broker.storage import login_state
from agentkeys_kit.protocol.email_rules import EmailVerdict, validate_email

log = logging.getLogger(__name__)

REQUEST_PATH = "/v1/auth/email/request"
VERIFY_PATH = "/v1/auth/email/verify"
CODE_TTL = 600  # seconds
CODE_DIGITS = 6
KEY_BYTES = 32
SMTP_TIMEOUT = 10.0  # seconds for the whole conversation with the relay
_CODE = re.compile(r"[0-9]{6}")
_HOUR, _MINUTE = 3600, 60


# --------------------------------------------------------------------------- errors


def _refused(error: str, message: str, **details: object) -> BrokerError:
    codes = {
        "wrong_code": 40110,
        "code_expired": 40111,
        "code_used": 40112,
        "no_code": 40113,
        "too_many_attempts": 40114,
    }
    return BrokerError(401, codes[error], error, message, **details)


def mail_not_sent() -> BrokerError:
    return BrokerError(502, 50200, "mail_not_sent", "the verification mail could not be sent; try again later")


_CHECK_ERRORS = {
    "expired": ("code_expired", "the code has expired; request a new one"),
    "used": ("code_used", "the code was already used; request a new one"),
    "none": ("no_code", "no code was requested for this address; request one first"),
    "locked": ("too_many_attempts", "too many wrong codes; request a new one"),
}


# --------------------------------------------------------------------------- the code key


def load_code_key(path: Path) -> bytes:
    """The HMAC key codes are stored under: created (32 random bytes, 0600) if missing; refused if
    group or others may read it, or if it is shorter than 32 bytes."""
    path = path.expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another replica created it first
            pass
        else:
            with os.fdopen(fd, "wb") as file:
                file.write(secrets.token_bytes(KEY_BYTES))
            log.info("created the e-mail code key %s", path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BrokerConfigError(f"BROKER_EMAIL_CODE_KEY_PATH {path} is readable by others: chmod 600 it")
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise BrokerConfigError(f"BROKER_EMAIL_CODE_KEY_PATH {path} holds fewer than {KEY_BYTES} bytes")
    return key


def code_hmac(key: bytes, email: str, code: str) -> str:
    message = b"agentkeys-email-code\x00" + email.encode("utf-8") + b"\x00" + code.encode("ascii")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def new_code() -> str:
    return str(secrets.randbelow(10**CODE_DIGITS)).zfill(CODE_DIGITS)


# --------------------------------------------------------------------------- mailers


class MailError(Exception):
    """The mail was not handed over (the reason names no secret)."""


def compose(settings: EmailLoginSettings, to: str, code: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = settings.subject
    message["Message-ID"] = make_msgid(domain="agentkeys.local")
    message.set_content(
        f"Your AgentKeys verification code is {code}\n\n"
        "It works once, for ten minutes. If you did not ask to sign in, ignore this mail.\n"
    )
    return message


class SmtpMailer:
    def __init__(self, settings: EmailLoginSettings) -> None:
        assert settings.smtp_url is not None
        url = urlsplit(settings.smtp_url)
        self.settings = settings
        self.host = url.hostname or "localhost"
        self.tls = url.scheme == "smtps"
        self.port = url.port or (465 if self.tls else 587)
        self.username = unquote(url.username) if url.username else None
        self.password = unquote(url.password) if url.password else None
        loopback = self.host in ("127.0.0.1", "::1", "localhost")
        # STARTTLS: none inside TLS; required to a remote relay (a code must not cross a network
        # in clear); used when offered on loopback (a local relay or a test sink).
        self.start_tls: bool | None = False if self.tls else None if loopback else True

    def describe(self) -> str:
        return f"smtp {self.settings.smtp_description()}"

    async def send(self, to: str, code: str) -> None:
        try:
            await aiosmtplib.send(
                compose(self.settings, to, code),
                hostname=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                use_tls=self.tls,
                start_tls=self.start_tls,
                timeout=SMTP_TIMEOUT,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise MailError(type(exc).__name__) from None


class ConsoleMailer:
    """Development only: each code goes to a 0600 file, never to the log."""

    def __init__(self, settings: EmailLoginSettings) -> None:
        assert settings.console_dir is not None
        self.directory = settings.console_dir
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory.chmod(0o700)

    def describe(self) -> str:
        return f"console (codes written to {self.directory}, never logged)"

    @staticmethod
    def file_name(email: str) -> str:
        return quote(email.lower(), safe="@._-+")

    async def send(self, to: str, code: str) -> None:
        path = self.directory / self.file_name(to)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(code + "\n")
        log.warning("console mailer: a code for an address was written to %s (development only)", path)


Mailer = SmtpMailer | ConsoleMailer


def make_mailer(settings: EmailLoginSettings) -> Mailer:
    return SmtpMailer(settings) if settings.mailer == "smtp" else ConsoleMailer(settings)


class EmailLogin:
    def __init__(self, settings: EmailLoginSettings, key: bytes, mailer: Mailer) -> None:
        self.settings = settings
        self.key = key
        self.mailer = mailer


EMAIL_LOGIN = web.AppKey("broker_email_login", EmailLogin)


# --------------------------------------------------------------------------- endpoints


def checked_email(value: str) -> str:
    """The address as the worker accepts it, keyed as its OmniAccount hashes it."""
    verdict = validate_email(value)
    if verdict is EmailVerdict.INVALID:
        raise errors.malformed("email is not a valid e-mail address")
    if verdict is EmailVerdict.NO_TLD:
        raise errors.malformed("email must have a dot in its domain")
    return canonical_email(value)


@login_endpoint("email_request")
async def request_code(request: web.Request, state: BrokerState) -> web.Response:
    body = require_fields(await json_body(request), {"email": str}, "EmailCodeRequest")
    email = checked_email(body["email"])
    login = request.app[EMAIL_LOGIN]
    settings = login.settings
    limits = (  # the client's limit first: a client cannot spend an address's budget beyond its own
        login_state.Limit(
            "client address", bucket_name("email-ip", client_source(request)), settings.per_ip_minutely, _MINUTE
        ),
        login_state.Limit("e-mail address", bucket_name("email-addr", email), settings.per_email_hourly, _HOUR),
    )
    code = new_code()
    digest = code_hmac(login.key, email, code)
    exceeded = await state.db.run(login_state.issue_email_code, email, digest, state.now(), CODE_TTL, limits)
    if exceeded is not None:
        raise rate_limited(*exceeded)
    try:
        await login.mailer.send(body["email"], code)
    except MailError as exc:
        log.warning("verification mail not sent: %s", exc)
        await state.db.run(login_state.forget_email_code, email, digest)
        raise mail_not_sent() from None
    return errors.ok({"sent": True, "expires_in_seconds": CODE_TTL})


@login_endpoint("email_verify")
async def verify_code(request: web.Request, state: BrokerState) -> web.Response:
    body = require_fields(await json_body(request), {"email": str, "code": str}, "EmailCodeVerify")
    email = checked_email(body["email"])
    if not _CODE.fullmatch(body["code"]):
        raise errors.malformed("code must be 6 digits")
    login = request.app[EMAIL_LOGIN]
    digest, now = code_hmac(login.key, email, body["code"]), state.now()
    check: login_state.CodeCheck = await state.db.run(login_state.try_email_code, email, digest, now)
    if check.outcome == "wrong":
        raise _refused("wrong_code", "the code is wrong", attempts_left=check.attempts_left)
    if check.outcome != "ok":
        raise _refused(*_CHECK_ERRORS[check.outcome])
    # the code is spent in the session's transaction: a session is never made without it, and of
    # two right tries at once on any replicas one gets the session, the other 401 login_refused
    return await complete_login(
        state,
        request,
        identity_type="email",
        identity_value=email,
        method="email",
        consume=lambda: login_state.spend_email_code(email, digest, now),
    )


def add_routes(app: web.Application) -> None:
    """Serve the e-mail login (`broker.login.add_login_routes` calls this when a mailer is
    configured); the code key and the mailer are opened once, at start."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        settings = app[STATE].config.email_login
        assert settings is not None, "e-mail login is served only with a mailer"
        mailer = make_mailer(settings)
        app[EMAIL_LOGIN] = EmailLogin(settings, load_code_key(settings.code_key_path), mailer)
        log.info(
            "e-mail login: mailer %s, from %s, at most %d codes per address per hour and %d per client per minute",
            mailer.describe(),
            settings.mail_from,
            settings.per_email_hourly,
            settings.per_ip_minutely,
        )
        yield

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post(REQUEST_PATH, request_code)
    app.router.add_post(VERIFY_PATH, verify_code)

"""Mailers for `omni_requestEmailVerificationCode`.

The worker has two mailers (`core/src/verify/web2/email/mailer/mod.rs@701b0755`, built by the
mailer factory from `OE_MAILER_TYPE_<CLIENT>`):

* `sendgrid` posts the message to SendGrid's v3 mail-send API with the sendgrid crate (0.24): one
  ``POST`` of compact JSON ``{from:{email,name}, subject, personalizations:[{to:[{email}]}],
  content:[{type:"text/html", value}]}`` with ``Authorization: Bearer <OE_MAILER_API_KEY_<CLIENT>>``,
  ``Content-Type: application/json`` and ``User-Agent: sendgrid-rs``, to
  ``https://api.sendgrid.com/v3/mail/send`` or to the full URL in `OE_MAILER_API_HOST_<CLIENT>`
  (`Sender::set_host`); any non-2xx answer is a failure. The simulator's `SendGridMailer` does the
  same, so a SendGrid stand-in (the conformance harness serves one) receives what the worker sends.
  The body is a small HTML page with the code in the paragraph the worker's own code extractor looks
  for (``<p style="font-size: 16px; font-weight: 600;">CODE</p>``), not the worker's full template.
* `console` logs the code. The simulator keeps every message in an outbox (served at
  `/_sim/outbox`) instead: verification codes are secrets, and the log of a shared CI run is not
  the place for them.

`smtp` is the simulator's own (aiosmtplib to a real SMTP server such as aiosmtpd).

Subject per `request_email_verification_code.rs@05ff5857`: the Wildmeta template when the client id
lowercases to ``wildmeta``, the generic one otherwise.
"""

from __future__ import annotations

import html
import json
import logging
import time
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import aiosmtplib

from agentkeys_kit.omni_sim.config import MailerConfig, MailerType

log = logging.getLogger(__name__)

WILDMETA_SUBJECT = "Email Verification - Wildmeta"
GENERIC_SUBJECT = "Verify your email"


class MailerError(RuntimeError):
    """The mailer could not hand the message over."""


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    client_id: str
    to: str
    subject: str
    code: str
    body: str
    sent_at: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compose(client_id: str, to: str, code: str) -> OutgoingMail:
    wildmeta = client_id.lower() == "wildmeta"
    subject = WILDMETA_SUBJECT if wildmeta else GENERIC_SUBJECT
    body = f"Your verification code is: {code}\n"
    return OutgoingMail(client_id, to, subject, code, body, int(time.time()))


class Mailer(Protocol):
    async def send(self, mail: OutgoingMail) -> None: ...


class Outbox:
    """Every message any mailer accepted, in order (console and smtp alike)."""

    def __init__(self, limit: int = 10_000) -> None:
        self._mails: list[OutgoingMail] = []
        self._limit = limit

    def append(self, mail: OutgoingMail) -> None:
        self._mails.append(mail)
        if len(self._mails) > self._limit:
            del self._mails[: len(self._mails) - self._limit]

    def list(self, to: str | None = None) -> list[OutgoingMail]:
        return [m for m in self._mails if to is None or m.to.lower() == to.lower()]

    def clear(self) -> None:
        self._mails.clear()


class ConsoleMailer:
    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def send(self, mail: OutgoingMail) -> None:
        self._outbox.append(mail)
        log.info(
            "console mailer: verification e-mail for client %s queued in /_sim/outbox",
            mail.client_id,
        )


class SmtpMailer:
    def __init__(self, config: MailerConfig, outbox: Outbox, timeout: float = 10.0) -> None:
        assert config.smtp_url is not None
        url = urlsplit(config.smtp_url)
        if url.scheme not in ("smtp", "smtps") or not url.hostname:
            raise ValueError(f"bad SMTP URL {config.smtp_url!r}: expected smtp://host:port")
        self._host = url.hostname
        self._port = url.port or (465 if url.scheme == "smtps" else 25)
        self._tls = url.scheme == "smtps"
        self._config = config
        self._outbox = outbox
        self._timeout = timeout

    async def send(self, mail: OutgoingMail) -> None:
        message = EmailMessage()
        message["From"] = f"{self._config.from_name} <{self._config.from_email}>"
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message.set_content(mail.body)
        try:
            await aiosmtplib.send(
                message,
                hostname=self._host,
                port=self._port,
                use_tls=self._tls,
                start_tls=False,
                timeout=self._timeout,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise MailerError(f"SMTP delivery to {self._host}:{self._port} failed: {exc}") from exc
        self._outbox.append(mail)


SENDGRID_CONTENT_TYPE = "text/html"  # `send_verification_email`: content_type "text/html"
SENDGRID_USER_AGENT = "sendgrid-rs"


def html_body(code: str) -> str:
    """The HTML the SendGrid mailer sends: the code in the paragraph the worker's extractor finds."""
    return (
        "<!DOCTYPE html><html><body><p>Your verification code is:</p>"
        f'<p style="font-size: 16px; font-weight: 600;">{html.escape(code)}</p></body></html>'
    )


def sendgrid_message(config: MailerConfig, mail: OutgoingMail) -> bytes:
    """The request body, as sendgrid 0.24 serialises `Message` (serde field order, compact JSON)."""
    message = {
        "from": {"email": config.from_email, "name": config.from_name},
        "subject": mail.subject,
        "personalizations": [{"to": [{"email": mail.to}]}],
        "content": [{"type": SENDGRID_CONTENT_TYPE, "value": html_body(mail.code)}],
    }
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


class SendGridMailer:
    def __init__(self, config: MailerConfig, outbox: Outbox, session: aiohttp.ClientSession, timeout: float) -> None:
        self._config = config
        self._outbox = outbox
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)  # the worker's client has none

    async def send(self, mail: OutgoingMail) -> None:
        url = self._config.sendgrid_url
        headers = {
            "Authorization": f"Bearer {self._config.api_key}",
            "Content-Type": "application/json",
            "User-Agent": SENDGRID_USER_AGENT,
        }
        try:
            async with self._session.post(
                url, data=sendgrid_message(self._config, mail), headers=headers, timeout=self._timeout
            ) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise MailerError(f"SendGrid API at {url} unreachable: {exc!r}") from exc
        if not 200 <= status < 300:  # `error_for_status_ref`: any 4xx/5xx is RequestNotSuccessful
            raise MailerError(f"SendGrid API at {url} answered HTTP {status}")
        self._outbox.append(mail)


def build_mailer(
    config: MailerConfig, outbox: Outbox, session: aiohttp.ClientSession | None = None, timeout: float = 30.0
) -> Mailer:
    if config.type is MailerType.SMTP:
        return SmtpMailer(config, outbox)
    if config.type is MailerType.SENDGRID:
        if session is None:
            raise MailerError("the SendGrid mailer needs an HTTP session")
        return SendGridMailer(config, outbox, session, timeout)
    return ConsoleMailer(outbox)

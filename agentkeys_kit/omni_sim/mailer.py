"""Mailers for `omni_requestEmailVerificationCode`.

`console` keeps every message in an outbox (served at `/_sim/outbox`) instead of printing the code
to the log as the worker's console mailer does: verification codes are secrets, and the log of a
shared CI run is not the place for them. `smtp` sends a real message with aiosmtplib (the worker
uses SendGrid's HTTP API; SMTP is how a test sink such as aiosmtpd receives it).

Subject per `request_email_verification_code.rs@05ff5857`: the Wildmeta template when the client id
lowercases to ``wildmeta``, the generic one otherwise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import urlsplit

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


def build_mailer(config: MailerConfig, outbox: Outbox) -> Mailer:
    if config.type is MailerType.SMTP:
        return SmtpMailer(config, outbox)
    return ConsoleMailer(outbox)

"""Where the worker's verification mails arrive: one mailbox, two ways in.

* `SendGridStandIn` speaks SendGrid's v3 mail-send API (``POST /v3/mail/send``, JSON, answered
  ``202 Accepted`` with an empty body as SendGrid does). The real worker's `sendgrid` mailer posts
  there when `OE_MAILER_API_HOST_<CLIENT>` is its URL (`Sender::set_host`, sendgrid 0.24; see
  `omni_sim.mailer`), so this is how e-mail cases run against a real worker.
* `SmtpSink` (aiosmtpd) receives the simulator's own `smtp` mailer.

Both put a `ReceivedMail` in the shared `Mailbox`, with the code found as the worker's console
mailer finds it: the ``font-weight: 600`` paragraph of its template first, any 6-digit number next
(`core/src/verify/web2/email/mailer/mod.rs@701b0755` `extract_verification_code`).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller

from agentkeys_kit.conformance.receiver import Interceptor, intercepting
from agentkeys_kit.omni_sim.server import ServedApp

_CODE_PARAGRAPH = re.compile(r"<p[^>]*font-weight:\s*600[^>]*>(\d{6})</p>")
_CODE = re.compile(r"\b(\d{6})\b")
SENDGRID_PATH = "/v3/mail/send"


def find_code(body: str) -> str | None:
    found = _CODE_PARAGRAPH.search(body) or _CODE.search(body)
    return found.group(1) if found else None


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    to: list[str]
    subject: str
    body: str
    at: float
    via: str = "smtp"  # "smtp" or "sendgrid"
    sender: str = ""

    @property
    def code(self) -> str | None:
        return find_code(self.body)

    def to_json(self) -> dict[str, Any]:
        return {
            "to": self.to,
            "subject": self.subject,
            "body": self.body,
            "code": self.code,
            "via": self.via,
            "from": self.sender,
            "at": self.at,
        }


class Mailbox:
    """Every mail received, in arrival order; thread-safe (the SMTP sink runs on its own thread)."""

    def __init__(self) -> None:
        self._mails: list[ReceivedMail] = []
        self._lock = threading.Lock()

    def add(self, mail: ReceivedMail) -> None:
        with self._lock:
            self._mails.append(mail)

    def mails(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self._mails)

    def clear(self) -> None:
        with self._lock:
            self._mails.clear()

    async def wait_for(self, to: str, after: int, within: float) -> ReceivedMail | None:
        """The first mail to `to` beyond the first `after` mails, waiting up to `within` s."""
        deadline = time.monotonic() + within
        while True:
            for mail in self.mails()[after:]:
                if any(r.lower() == to.lower() for r in mail.to):
                    return mail
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.02)


class _SmtpHandler:
    def __init__(self, mailbox: Mailbox) -> None:
        self._mailbox = mailbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message: Message = message_from_bytes(envelope.content)
        payload = message.get_payload(decode=True)
        body = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else str(message.get_payload())
        to = [str(r) for r in envelope.rcpt_tos]
        subject = str(message.get("Subject", ""))
        self._mailbox.add(ReceivedMail(to, subject, body, time.time(), "smtp", str(message.get("From", ""))))
        return "250 OK"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SmtpSink:
    """An SMTP server (aiosmtpd, on its own thread) for the simulator's `smtp` mailer."""

    def __init__(self, mailbox: Mailbox, host: str = "127.0.0.1", port: int = 0, advertise: str | None = None) -> None:
        self.host = host
        self.port = port
        self.advertise = advertise or host
        self._controller: Controller | None = None
        self._mailbox = mailbox

    @property
    def url(self) -> str:
        return f"smtp://{self.advertise}:{self.port}"

    def start(self) -> None:
        if self.port == 0:  # aiosmtpd's start-up probe connects to the port it was given: pick one first
            self.port = _free_port(self.host)
        controller = Controller(_SmtpHandler(self._mailbox), hostname=self.host, port=self.port)
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


class SendGridStandIn:
    """SendGrid's v3 mail-send endpoint: accepts what the worker's sendgrid mailer posts."""

    def __init__(self, mailbox: Mailbox, host: str = "127.0.0.1", port: int = 0, advertise: str | None = None) -> None:
        self._mailbox = mailbox
        self._served = ServedApp(host, port)
        self.advertise = advertise or host
        #: requests refused as malformed, with the reason (a worker that posts something else)
        self.refused: list[str] = []
        #: set by the parties: the receiver may answer a mail as a step scripted (`receiver.intercept`)
        self.interceptor: Interceptor | None = None

    @property
    def port(self) -> int:
        return self._served.port

    @property
    def url(self) -> str:
        """What `OE_MAILER_API_HOST_<CLIENT>` must be: the full URL the worker posts to."""
        return f"http://{self.advertise}:{self.port}{SENDGRID_PATH}"

    async def start(self) -> None:
        middleware = intercepting(self, "sendgrid", "mail_send", SENDGRID_PATH)
        app = web.Application(client_max_size=1024 * 1024, middlewares=[middleware])
        app.router.add_post(SENDGRID_PATH, self._send)
        await self._served.start(app)

    async def close(self) -> None:
        await self._served.close()

    async def _send(self, request: web.Request) -> web.Response:
        try:
            message = json.loads(await request.read())
            to = [str(entry["email"]) for entry in message["personalizations"][0]["to"]]
            subject = str(message["subject"])
            body = "\n".join(str(part["value"]) for part in message["content"])
            sender = str(message.get("from", {}).get("email", ""))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            missing = f"no field {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else str(exc)
            reason = f"not a SendGrid v3 mail-send body: {missing or type(exc).__name__}"
            self.refused.append(reason)
            return web.json_response({"errors": [{"message": reason, "field": None}]}, status=400)
        self._mailbox.add(ReceivedMail(to, subject, body, time.time(), "sendgrid", sender))
        return web.Response(status=202)

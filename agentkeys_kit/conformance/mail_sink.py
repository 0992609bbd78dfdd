"""An SMTP sink (aiosmtpd) that the worker's mailer delivers verification codes to."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

_CODE = re.compile(r"\b(\d{6})\b")


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    to: list[str]
    subject: str
    body: str
    at: float

    @property
    def code(self) -> str | None:
        found = _CODE.search(self.body)
        return found.group(1) if found else None

    def to_json(self) -> dict[str, Any]:
        return {"to": self.to, "subject": self.subject, "body": self.body, "code": self.code, "at": self.at}


class _Handler:
    def __init__(self, sink: MailSink) -> None:
        self._sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message: Message = message_from_bytes(envelope.content)
        payload = message.get_payload(decode=True)
        body = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else str(message.get_payload())
        self._sink.add(
            ReceivedMail([str(r) for r in envelope.rcpt_tos], str(message.get("Subject", "")), body, time.time())
        )
        return "250 OK"


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class MailSink:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = _free_port(host)
        self._mails: list[ReceivedMail] = []
        self._lock = threading.Lock()
        self._controller = Controller(_Handler(self), hostname=host, port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

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

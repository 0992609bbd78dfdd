"""The parties the worker talks to, played by the harness, on addresses a worker can be configured with.

* the callback receiver (``/pumpx/``, ``/agentkeys/`` and the wildmeta API at its root);
* the SendGrid stand-in and the SMTP sink, both delivering into one mailbox;
* the fake Google OpenID provider.

Against the in-process simulator every party takes a free port. Against a worker someone else
runs they listen on fixed ports (`DEFAULT_PORTS`, or the target file, or ``--port-base``), so the
worker is configured once — with the lines `worker_env` gives — and every later run and both sides
of a diff reuse that configuration. `listen` is the address the parties bind; `advertise` is the
host the worker uses to reach them (a worker in a container reaches the host by another name).
"""

from __future__ import annotations

from dataclasses import dataclass

from agentkeys_kit.conformance.fake_google import FakeGoogle
from agentkeys_kit.conformance.mail_sink import Mailbox, SendGridStandIn, SmtpSink
from agentkeys_kit.conformance.receiver import CallbackReceiver

#: fixed ports when a target file or flag gives none (a worker under test is configured with them)
DEFAULT_PORTS = {"receiver": 8701, "sendgrid": 8702, "smtp": 8703, "google": 8704}
#: the clients whose mail the harness reads; the worker configures mailers per client id
MAIL_CLIENTS = ("WILDMETA", "AGENTKEYS")
#: not a secret: the stand-in accepts any key, the worker only needs one to send
STAND_IN_API_KEY = "conformance-stand-in"
MAILERS = ("sendgrid", "smtp", "console", "none")
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # noqa: S104 - recognised, never chosen


class PartiesError(ValueError):
    """Addresses the parties cannot use."""


@dataclass(frozen=True, slots=True)
class PartyAddresses:
    listen: str = "127.0.0.1"
    advertise: str | None = None
    receiver_port: int = 0
    sendgrid_port: int = 0
    smtp_port: int = 0
    google_port: int = 0

    @classmethod
    def fixed(
        cls, listen: str = "127.0.0.1", advertise: str | None = None, port_base: int | None = None
    ) -> PartyAddresses:
        """The fixed addresses a real worker is configured with: `DEFAULT_PORTS`, or four from `port_base`."""
        ports = list(DEFAULT_PORTS.values()) if port_base is None else [port_base + i for i in range(4)]
        return cls(listen, advertise, *ports)

    @property
    def host_for_worker(self) -> str:
        if self.advertise:
            return self.advertise
        if self.listen in _WILDCARD_HOSTS:
            raise PartiesError(
                f"the parties listen on {self.listen!r}: give --advertise HOST, the address the worker uses"
            )
        return self.listen

    def check(self) -> None:
        ports = [self.receiver_port, self.sendgrid_port, self.smtp_port, self.google_port]
        for port in ports:
            if not 0 <= port <= 65535:
                raise PartiesError(f"port {port} is out of range")
        fixed = [port for port in ports if port]
        if len(fixed) != len(set(fixed)):
            raise PartiesError(f"two parties were given the same port: {ports}")
        self.host_for_worker  # noqa: B018 - raises when the worker could not reach a wildcard listener


class Parties:
    """Start and stop every party; say what a worker must be configured with to reach them."""

    def __init__(self, addresses: PartyAddresses | None = None) -> None:
        self.addresses = addresses or PartyAddresses()
        self.addresses.check()
        host, advertise = self.addresses.listen, self.addresses.host_for_worker
        self.receiver = CallbackReceiver(host, self.addresses.receiver_port, advertise)
        self.mailbox = Mailbox()
        self.sendgrid = SendGridStandIn(self.mailbox, host, self.addresses.sendgrid_port, advertise)
        self.smtp = SmtpSink(self.mailbox, host, self.addresses.smtp_port, advertise)
        self.google = FakeGoogle(host=host, port=self.addresses.google_port)
        self._started: list[str] = []

    async def start(self) -> None:
        try:
            await self.receiver.start()
            self._started.append("receiver")
            await self.sendgrid.start()
            self._started.append("sendgrid")
            self.smtp.start()
            self._started.append("smtp")
            await self.google.start()
            self._started.append("google")
        except OSError as exc:
            await self.close()
            raise PartiesError(f"cannot listen on {self.addresses.listen}: {exc.strerror or exc}") from None
        if self.addresses.advertise:
            self.google.issuer_override = f"http://{self.addresses.advertise}:{self.google.port}"
        for client in ("wildmeta", "agentkeys"):
            self.google.register_client(
                f"{client}-conformance", f"{client}-secret", [self.receiver.url + "oauth2/callback"]
            )

    async def close(self) -> None:
        if "google" in self._started:
            await self.google.close()
        if "smtp" in self._started:
            self.smtp.stop()
        if "sendgrid" in self._started:
            await self.sendgrid.close()
        if "receiver" in self._started:
            await self.receiver.close()
        self._started.clear()

    def served(self) -> dict[str, str]:
        """Every party and the URL the worker reaches it at."""
        return {
            "callback receiver": self.receiver.url,
            "SendGrid stand-in": self.sendgrid.url,
            "SMTP sink (simulator only)": self.smtp.url,
            "fake Google": self.google.url,
        }

    def worker_env(self, mailer: str) -> dict[str, str]:
        """The `OE_*` variables a worker needs to call these parties, for the declared `mailer`."""
        env = {
            "OE_PUMPX_API_BASE_URL": self.receiver.api_url("pumpx"),
            "OE_AGENTKEYS_API_BASE_URL": self.receiver.api_url("agentkeys"),
            "OE_WILDMETA_API_URL": self.receiver.url,
        }
        for client in MAIL_CLIENTS:
            if mailer == "sendgrid":
                env[f"OE_MAILER_TYPE_{client}"] = "sendgrid"
                env[f"OE_MAILER_API_HOST_{client}"] = self.sendgrid.url
                env[f"OE_MAILER_API_KEY_{client}"] = STAND_IN_API_KEY
            elif mailer == "smtp":
                env[f"OE_MAILER_TYPE_{client}"] = "smtp"
                env[f"OE_MAILER_SMTP_URL_{client}"] = self.smtp.url
        return env

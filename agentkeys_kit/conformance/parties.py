"""The parties the worker talks to, played by the harness, on addresses a worker can be configured with.

* the callback receiver (``/pumpx/``, ``/agentkeys/`` and the wildmeta API at its root);
* the SendGrid stand-in and the SMTP sink, both delivering into one mailbox;
* the fake Google OpenID provider, with an OAuth2 client registered for each worker client.

`worker_env` also gives the worker the OAuth2 client of each client id (``OE_GOOGLE_CLIENT_ID_<CLIENT>``
and its secret, Apple's likewise, as the worker reads them) and the public half of the harness's
backend test key (``OE_<CLIENT>_BACKEND_ECDSA_PUBKEY``). The provider's own endpoints are compiled
into a real worker; only omni-sim reads them from ``OE_SIM_<PROVIDER>_AUTHORIZE_URL`` /
``OE_SIM_<PROVIDER>_TOKEN_URL``, which `worker_env` adds when the worker is declared to use the
harness's provider (``oauth2_provider``).

Against the in-process simulator every party takes a free port. Against a worker someone else
runs they listen on fixed ports (`DEFAULT_PORTS`, or the target file, or ``--port-base``), so the
worker is configured once — with the lines `worker_env` gives — and every later run and both sides
of a diff reuse that configuration. `listen` is the address the parties bind; `advertise` is the
host the worker uses to reach them (a worker in a container reaches the host by another name).
"""

from __future__ import annotations

from dataclasses import dataclass

from agentkeys_kit.conformance.expr import backend_test_pubkey_hex
from agentkeys_kit.conformance.fake_google import AUTHORIZATION_PATH, TOKEN_PATH, FakeGoogle
from agentkeys_kit.conformance.mail_sink import Mailbox, SendGridStandIn, SmtpSink
from agentkeys_kit.conformance.receiver import CallbackReceiver

#: fixed ports when a target file or flag gives none (a worker under test is configured with them)
DEFAULT_PORTS = {"receiver": 8701, "sendgrid": 8702, "smtp": 8703, "google": 8704}
#: the clients whose mail the harness reads; the worker configures mailers per client id
MAIL_CLIENTS = ("WILDMETA", "AGENTKEYS")
#: not a secret: the stand-in accepts any key, the worker only needs one to send
STAND_IN_API_KEY = "conformance-stand-in"
MAILERS = ("sendgrid", "smtp", "console", "none")
#: the OAuth2 client (id, secret) each worker client has at the fake Google; not secrets: test values
OAUTH2_CLIENTS = {
    "wildmeta": ("wildmeta-conformance", "wildmeta-secret"),
    "agentkeys": ("agentkeys-conformance", "agentkeys-secret"),
}
#: the redirect URI registered for them, relative to the receiver (nothing is served there: the
#: cases read the code from the fake Google's redirect)
OAUTH2_REDIRECT_PATH = "oauth2/callback"
OAUTH2_PROVIDERS = ("GOOGLE", "APPLE")
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
        # a step may script a failure of the mail API or the token endpoint (`receiver.intercept`)
        self.sendgrid.interceptor = self.receiver.intercept
        self.google.interceptor = self.receiver.intercept
        if self.addresses.advertise and self.addresses.google_port:  # `env` prints it without starting
            self.google.issuer_override = f"http://{self.addresses.advertise}:{self.addresses.google_port}"
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
        for client_id, secret in OAUTH2_CLIENTS.values():
            self.google.register_client(client_id, secret, [self.oauth2_redirect_uri])

    @property
    def oauth2_redirect_uri(self) -> str:
        return self.receiver.url + OAUTH2_REDIRECT_PATH

    @property
    def google_endpoints(self) -> tuple[str, str]:
        """The fake Google's authorize and token URLs at the address the worker reaches it at."""
        base = f"http://{self.addresses.host_for_worker}:{self.google.port}"
        return base + AUTHORIZATION_PATH, base + TOKEN_PATH

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

    def worker_env(self, mailer: str, *, oauth2_provider: bool = False) -> dict[str, str]:
        """The `OE_*` variables a worker needs to call these parties, for the declared `mailer`;
        with `oauth2_provider`, also omni-sim's endpoints of the fake Google (``OE_SIM_*``)."""
        env = {
            "OE_PUMPX_API_BASE_URL": self.receiver.api_url("pumpx"),
            "OE_AGENTKEYS_API_BASE_URL": self.receiver.api_url("agentkeys"),
            "OE_WILDMETA_API_URL": self.receiver.url,
        }
        backend_key = backend_test_pubkey_hex()
        for client in MAIL_CLIENTS:
            # `core/src/config/config.rs@29cca4f9` `load_oauth2_configs`: both must be non-empty
            oauth_id, oauth_secret = OAUTH2_CLIENTS[client.lower()]
            for provider in OAUTH2_PROVIDERS:
                env[f"OE_{provider}_CLIENT_ID_{client}"] = oauth_id
                env[f"OE_{provider}_CLIENT_SECRET_{client}"] = oauth_secret
            env[f"OE_{client}_BACKEND_ECDSA_PUBKEY"] = backend_key
        if oauth2_provider:
            # Apple's endpoints go to the same provider, which issues the claims Apple's IdToken needs
            authorize, token = self.google_endpoints
            for provider in OAUTH2_PROVIDERS:
                env[f"OE_SIM_{provider}_AUTHORIZE_URL"] = authorize
                env[f"OE_SIM_{provider}_TOKEN_URL"] = token
        for client in MAIL_CLIENTS:
            if mailer == "sendgrid":
                env[f"OE_MAILER_TYPE_{client}"] = "sendgrid"
                env[f"OE_MAILER_API_HOST_{client}"] = self.sendgrid.url
                env[f"OE_MAILER_API_KEY_{client}"] = STAND_IN_API_KEY
            elif mailer == "smtp":
                env[f"OE_MAILER_TYPE_{client}"] = "smtp"
                env[f"OE_MAILER_SMTP_URL_{client}"] = self.smtp.url
        return env

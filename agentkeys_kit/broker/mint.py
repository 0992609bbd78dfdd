"""The mint endpoints (`agentkeys-broker.md` §1.3, §1.4), behind the broker's one bearer verifier.

* ``POST /v1/mint-oidc-jwt`` → ``{jwt, wallet, expiration}``: an ES256 JWT by the OIDC key
  (`broker.oidc`) with ``kid``; claims ``iss`` (`BROKER_OIDC_ISSUER`, byte-exact), ``sub`` =
  ``agentkeys:agent:<lowercased wallet>``, ``aud`` = ``sts.amazonaws.com``, ``iat``, ``exp`` (iat +
  `BROKER_OIDC_JWT_TTL_SECONDS`), ``agentkeys_user_wallet``, ``agentkeys_actor_omni``, and
  ``https://aws.amazon.com/tags`` (``principal_tags`` with both, ``transitive_tag_keys``): AWS tags
  sessions only from that claim.
* ``POST /v1/mint-aws-creds`` → ``{access_key_id, secret_access_key, session_token, expiration,
  wallet}`` (``expiration`` unix seconds): the broker mints its own OIDC JWT for the caller and
  calls STS ``AssumeRoleWithWebIdentity`` on `BROKER_DATA_ROLE_ARN` (`broker.sts`). STS failures
  are 502 ``sts_error`` / ``sts_unreachable``; without a role ARN configured, 503
  ``aws_not_configured``.

The wallet is the one the bearer proves (a session whose identity has no wallet is refused, 403
``no_wallet``: an empty ``sub`` is never minted, PA-R1-F28); the request never names it. An
empty body (or ``{}``) mints for the caller; a signed agent body mints within a grant
(`broker.agent_mint`). Success bodies are the spec's plain JSON; refusals are the broker's
envelope.

Audit (`broker.audit_chain`): every mint, refused or not once the bearer is proven, is a chain
row written in the same transaction as what it records; the credential is returned only after
that transaction committed (a 503 and no credential otherwise). ``mint-aws-creds`` writes a row
*before* calling STS (and consumes the grant in it), so a broker whose audit cannot be written
never calls STS (V0.1-FOLLOWUPS R1-F1), and a second row with the STS outcome; a use of a grant
is given back when STS issued nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from aiohttp import web

from agentkeys_kit.broker import agent_mint, errors
from agentkeys_kit.broker.agent_mint import AgentRequest, GrantUse
from agentkeys_kit.broker.audit_chain import ChainEntry, ChainWriter, only
from agentkeys_kit.broker.callbacks import audit_refusal, presented_token_sha256
from agentkeys_kit.broker.config import BrokerConfig
from agentkeys_kit.broker.errors import BrokerError
from agentkeys_kit.broker.http import note_omni_account, read_body
from agentkeys_kit.broker.oidc import OidcKeys
from agentkeys_kit.broker.state import STATE
from agentkeys_kit.broker.sts import AwsCredentials, Sts, StsFailure, session_name

log = logging.getLogger(__name__)

STS_AUDIENCE = "sts.amazonaws.com"
OIDC_JWT_ROLE = "oidc_jwt"  # `requested_role` of an OIDC JWT mint (§1.6)
OIDC_PATH = "/v1/mint-oidc-jwt"
AWS_PATH = "/v1/mint-aws-creds"


class Caller(Protocol):
    """What the mint needs from the bearer verifier's principal (`broker.bearer.Principal`)."""

    @property
    def omni_account(self) -> str: ...

    @property
    def wallet(self) -> str | None: ...

    @property
    def token_sha256(self) -> str: ...


Resolver = Callable[[web.Request], Awaitable[Caller]]


def no_wallet() -> BrokerError:
    return BrokerError(
        403, 40305, "no_wallet", "this session's identity has no wallet: log in with a wallet to mint credentials"
    )


def sts_failed(failure: StsFailure) -> BrokerError:
    if failure.kind == "sts_unreachable":
        return BrokerError(502, 50201, "sts_unreachable", "AWS STS could not be reached; no credential was issued")
    return BrokerError(502, 50200, "sts_error", "AWS STS refused the request; no credential was issued")


def aws_not_configured() -> BrokerError:
    return BrokerError(503, 50302, "aws_not_configured", "this broker mints no AWS credentials (BROKER_DATA_ROLE_ARN)")


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose credential it is: the wallet it is for, the acting wallet and account, the grant."""

    user_wallet: str
    actor_wallet: str
    actor_omni: str
    grant_id: str | None = None
    #: an agent's mint: the service and path it asked for, within the grant
    service: str | None = None
    scope_path: str | None = None


@dataclass(slots=True)
class MintService:
    config: BrokerConfig
    writer: ChainWriter
    keys: OidcKeys
    resolve: Resolver
    sts: Sts | None = None
    clock: Callable[[], float] = time.time

    def now(self) -> int:
        return int(self.clock())

    # ------------------------------------------------------------------ the OIDC JWT

    def claims(self, subject: Subject, now: int) -> dict[str, Any]:
        tags: dict[str, list[str]] = {
            "agentkeys_user_wallet": [subject.user_wallet],
            "agentkeys_actor_omni": [subject.actor_omni],
        }
        claims: dict[str, Any] = {
            "iss": self.config.oidc_issuer,
            "sub": f"agentkeys:agent:{subject.actor_wallet}",
            "aud": STS_AUDIENCE,
            "iat": now,
            "exp": now + self.config.oidc_jwt_ttl,
            "agentkeys_user_wallet": subject.user_wallet,
            "agentkeys_actor_omni": subject.actor_omni,
            "https://aws.amazon.com/tags": {"principal_tags": tags, "transitive_tag_keys": sorted(tags)},
        }
        if subject.grant_id is not None:
            # session tags too, so a role's policy can confine the credential to what was asked
            # for, e.g. arn:aws:s3:::bucket/${aws:PrincipalTag/agentkeys_scope_path}/*
            scope_path = (subject.scope_path or "").strip("/")
            claims.update(
                agentkeys_grant_id=subject.grant_id, agentkeys_service=subject.service, agentkeys_scope_path=scope_path
            )
            tags.update(
                agentkeys_grant_id=[subject.grant_id],
                agentkeys_service=[subject.service or ""],
                agentkeys_scope_path=[scope_path],
            )
            claims["https://aws.amazon.com/tags"]["transitive_tag_keys"] = sorted(tags)
        return claims

    def sign(self, subject: Subject, now: int) -> tuple[str, str]:
        keys = self.keys.keys
        return keys.sign(self.claims(subject, now)), keys.kid

    # ------------------------------------------------------------------ who is asking

    async def caller(self, request: web.Request, event: str) -> tuple[Caller, str]:
        try:
            caller = await self.resolve(request)
        except BrokerError as refusal:  # audited within the refusal budget, chained (`audit_chain`)
            presented = presented_token_sha256(request.headers.get("Authorization"))
            await audit_refusal(request.app[STATE], event, refusal, request, bearer_sha256=presented)
            raise
        note_omni_account(request, caller.omni_account)
        if not caller.wallet:
            await self.writer.record(self.entry(caller, "", "", 0, "", "refused", "no_wallet", event=event))
            raise no_wallet()
        return caller, caller.wallet.lower()

    def entry(
        self,
        caller: Caller,
        wallet: str,
        role: str,
        duration: int,
        session: str,
        outcome: str,
        detail: str | None,
        *,
        event: str,
    ) -> ChainEntry:
        return ChainEntry(
            event=event,
            outcome=outcome,
            minted_at=self.now(),
            requester_token=caller.token_sha256,
            requester_wallet=wallet or "unknown",
            omni_account=caller.omni_account,
            requested_role=role,
            session_duration_seconds=duration,
            sts_session_name=session,
            outcome_detail=detail,
        )

    async def agent_request(
        self, request: web.Request, raw: bytes, caller: Caller, wallet: str, event: str
    ) -> AgentRequest:
        parsed = agent_mint.parse(raw, request.method, request.path)
        try:
            agent_mint.check_signature(parsed, wallet=wallet, now=self.now(), max_skew=self.config.mint_max_skew)
        except BrokerError as refusal:
            reason = refusal.details.get("reason")
            await self.writer.record(
                self.entry(caller, wallet, "", 0, "", "refused", f"invalid_mint_signature: {reason}", event=event)
            )
            raise
        return parsed

    async def consume_grant(
        self, parsed: AgentRequest, caller: Caller, wallet: str, event: str, ok_entry: Callable[[GrantUse], ChainEntry]
    ) -> GrantUse:
        def rows(use: GrantUse) -> list[ChainEntry]:
            if use.refusal is None:
                return [ok_entry(use)]
            detail = f"{'request_replayed' if use.refusal == 'replayed' else 'grant_refused'}: {use.refusal}"
            return [self.entry(caller, wallet, "", 0, "", "refused", f"{detail} ({parsed.grant_id})", event=event)]

        now = self.now()
        use: GrantUse = await self.writer.run(
            lambda: agent_mint.consume(parsed, now=now, max_skew=self.config.mint_max_skew, entries=rows)
        )
        if use.refusal == "replayed":
            raise agent_mint.request_replayed()
        if use.refusal is not None:
            raise agent_mint.grant_refused(use.refusal)
        return use


def _is_agent_body(raw: bytes) -> bool:
    text = raw.strip()
    return bool(text) and text != b"{}"


MINT = web.AppKey("broker_mint", MintService)


async def mint_oidc_jwt(request: web.Request) -> web.Response:
    service = request.app[MINT]
    event = "mint_oidc_jwt"
    caller, wallet = await service.caller(request, event)
    raw = await read_body(request)
    ttl = service.config.oidc_jwt_ttl
    if not _is_agent_body(raw):
        now = service.now()
        subject = Subject(wallet, wallet, caller.omni_account)
        token, kid = service.sign(subject, now)
        await service.writer.run(only(service.entry(caller, wallet, OIDC_JWT_ROLE, ttl, kid, "ok", None, event=event)))
        return web.json_response({"jwt": token, "wallet": wallet, "expiration": now + ttl})

    parsed = await service.agent_request(request, raw, caller, wallet, event)
    now = service.now()
    kid = service.keys.keys.kid

    def ok(use: GrantUse) -> ChainEntry:
        detail = f"grant {use.grant_id} of {use.master_wallet}: {parsed.service} {parsed.scope_path}"
        return service.entry(caller, wallet, OIDC_JWT_ROLE, ttl, kid, "ok", detail, event=event)

    # The JWT is signed only once the grant is consumed; it leaves the broker after that commit.
    use = await service.consume_grant(parsed, caller, wallet, event, ok)
    subject = Subject(use.master_wallet, wallet, caller.omni_account, use.grant_id, parsed.service, parsed.scope_path)
    token, _ = service.sign(subject, now)
    return web.json_response(
        {"jwt": token, "wallet": use.master_wallet, "expiration": now + ttl, "grant_id": use.grant_id}
    )


async def mint_aws_creds(request: web.Request) -> web.Response:
    service = request.app[MINT]
    caller, wallet = await service.caller(request, "mint_aws_creds")
    raw = await read_body(request)
    config = service.config
    if config.data_role_arn is None or service.sts is None:
        refusal = aws_not_configured()  # a refused mint: a chain row like the others (within the budget)
        await audit_refusal(
            request.app[STATE],
            "mint_aws_creds",
            refusal,
            request,
            bearer_sha256=caller.token_sha256,
            omni_account=caller.omni_account,
        )
        raise refusal
    role, duration, event = config.data_role_arn, config.session_duration, "mint_aws_creds"
    name = session_name(wallet, service.clock())

    def requested(use: GrantUse | None) -> ChainEntry:
        detail = None if use is None else f"grant {use.grant_id} of {use.master_wallet}"
        return service.entry(caller, wallet, role, duration, name, "requested", detail, event=event)

    if _is_agent_body(raw):
        parsed = await service.agent_request(request, raw, caller, wallet, event)
        use: GrantUse | None = await service.consume_grant(parsed, caller, wallet, event, requested)
        assert use is not None
        subject = Subject(
            use.master_wallet, wallet, caller.omni_account, use.grant_id, parsed.service, parsed.scope_path
        )
    else:
        use = None
        subject = Subject(wallet, wallet, caller.omni_account)
        await service.writer.record(requested(None))  # R1-F1: no STS call unless this is written

    token, kid = service.sign(subject, service.now())
    try:
        credentials, assumed = await service.sts.assume_role_with_web_identity(
            role_arn=role, session_name=name, token=token, duration=duration
        )
    except StsFailure as failure:
        row = replace(requested(use), outcome=failure.kind, outcome_detail=failure.detail[:500])
        rows = [replace(row, minted_at=service.now())]
        if use is not None:
            await service.writer.run(lambda: agent_mint.give_back(use.grant_id, rows))
        else:
            await service.writer.record(rows[0])
        log.warning("STS %s for %s: %s", failure.kind, subject.user_wallet, failure.detail)
        raise sts_failed(failure) from None
    detail = f"kid {kid}; {assumed}" + ("" if use is None else f"; grant {use.grant_id} of {use.master_wallet}")
    done = replace(requested(use), outcome="ok", outcome_detail=detail[:500], minted_at=service.now())
    await service.writer.record(done)
    return web.json_response(_credentials_json(credentials, subject, use))


def _credentials_json(credentials: AwsCredentials, subject: Subject, use: GrantUse | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "access_key_id": credentials.access_key_id,
        "secret_access_key": credentials.secret_access_key,
        "session_token": credentials.session_token,
        "expiration": credentials.expiration,
        "wallet": subject.user_wallet,
    }
    if use is not None:
        body["grant_id"] = use.grant_id
    return body


def add_mint_routes(app: web.Application) -> None:
    """The routes; the service is set at start (`app.create_app`), once the database is open."""
    app.router.add_post(OIDC_PATH, mint_oidc_jwt)
    app.router.add_post(AWS_PATH, mint_aws_creds)


__all__ = ["Caller", "MintService", "Resolver", "add_mint_routes", "errors"]

"""The reviewers' document: one Markdown file for Litentry, made from one or more runs.

``review.md`` says, top down:

1. what the agentkeys patch must do — each clause of `omni_sim.profiles.PATCH_CLAUSES` with its
   verdict on every run (a patched worker passes its cases, today's worker fails them as its
   deviation file lists), the cases, and the smallest change in the worker's source that the clause
   implies (`CLAUSE_CHANGES`: file and function, cited ``path@commit8`` as the spec pages cite the
   Rust source);
2. the upstream gaps the patch should close or that Litentry should know (`FINDINGS`), each with
   what the source does, the case that demonstrates it on the ``upstream`` profile and the evidence
   that case observed. A finding is called *demonstrated* only when its case passed on a run (the
   case's expectations are the gap); otherwise the document says why it was not — not applicable
   on that target, failed, or not run — and does not assert it;
3. how the document was made: the runs, their verdicts, how to reproduce each finding.

The runs come from this process (``conformance run --review``) or from the ``transcript.json`` of
earlier runs (``conformance review DIR…``, `load_run`), so the document is always derived from a
recorded run, never written by hand. `findings_section` is the same findings, one line each, for
``report.md`` (`reports.markdown_report`'s ``extra_sections``).

Paths in citations are relative to ``tee-worker/omni-executor/`` in ``litentry/heima``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentkeys_kit.conformance.model import Case
from agentkeys_kit.conformance.reports import ICONS, KIT_NAME, VERDICT_WORDS, compact_json, fenced, write_text
from agentkeys_kit.conformance.runner import CaseResult, Exchange, RunResult, StepResult, Verdict
from agentkeys_kit.conformance.targets import KIT_VERSION
from agentkeys_kit.omni_sim.profiles import PATCH_CLAUSES

REVIEW_FILE = "review.md"


class ReviewError(ValueError):
    """A report directory the document cannot be made from."""


# ---------------------------------------------------------------------------------------------- content


@dataclass(frozen=True, slots=True)
class WorkerChange:
    """One place in the worker's source that a patch clause changes."""

    where: str  # ``path@commit8``, relative to tee-worker/omni-executor/
    function: str
    change: str


CLAUSE_CHANGES: dict[int, tuple[WorkerChange, ...]] = {
    1: (
        WorkerChange(
            "core/src/auth/constants.rs@5860c8d8",
            "client-id constants",
            'add `pub const CLIENT_ID_AGENTKEYS: &str = "agentkeys";` next to `CLIENT_ID_WILDMETA`.',
        ),
        WorkerChange(
            "core/src/config/config.rs@29cca4f9, rpc-server/src/server.rs@29cca4f9",
            "the configuration loader; `RpcContext`",
            "read `OE_AGENTKEYS_API_BASE_URL` as `OE_PUMPX_API_BASE_URL` is read, and keep a second client of "
            "the pumpx API type built on it (say `agentkeys_api`) in `RpcContext` next to `pumpx_api`.",
        ),
        WorkerChange(
            "rpc-server/src/methods/omni/user_login.rs@fe493ade",
            "`register_user_login`",
            "the `if params.client_id == CLIENT_ID_WILDMETA` block is taken for `CLIENT_ID_AGENTKEYS` too, calling "
            "`post_heima_login` on `ctx.agentkeys_api` with the same `PostHeimaLoginBody`, bearer, "
            "`check_backend_response` and `HeimaJwtStorage` write; every other client id keeps `-32602`.",
        ),
    ),
    2: (
        WorkerChange(
            "core/src/auth/auth_token.rs@677675c8",
            "`AuthTokenValidator::validate` (the `String` and the `&str` impl)",
            "add `CLIENT_ID_AGENTKEYS` to the audience slice `[CLIENT_ID_HEIMA, CLIENT_ID_PUMPX, CLIENT_ID_WILDMETA]` "
            "passed to `jwt::decode`.",
        ),
    ),
    3: (
        WorkerChange(
            "rpc-server/src/methods/omni/add_wallet.rs@701b0755",
            "`register_add_wallet`",
            "take the client id the middleware already stores with the sender (`RpcExtensions.client_id = "
            "claims.aud`, `rpc-server/src/middlewares/rpc_middleware.rs@08897ec4`) and call `add_wallet` on "
            "`ctx.agentkeys_api` for `agentkeys`, on `ctx.pumpx_api` otherwise.",
        ),
        WorkerChange(
            "rpc-server/src/methods/omni/request_jwt.rs@5673ca9f",
            "`register_request_jwt`",
            "call `get_account_user_id` and `user_connect` on the API of `params.client_id` (`ctx.agentkeys_api` for "
            "`agentkeys`) instead of always `ctx.pumpx_api`.",
        ),
    ),
    4: (
        WorkerChange(
            "primitives/src/auth.rs@4a07c15e",
            "`enum ClientAuth`",
            "add `AgentkeysBackend { signature: String }`, serialised as "
            '`{"type":"agentkeys_backend","value":{"signature":…}}` like `WildmetaBackend`.',
        ),
        WorkerChange(
            "core/src/config/config.rs@29cca4f9, rpc-server/src/server.rs@29cca4f9",
            "the configuration loader; `RpcContext`",
            "read `OE_AGENTKEYS_BACKEND_ECDSA_PUBKEY` (66 hex characters) as `OE_WILDMETA_BACKEND_ECDSA_PUBKEY` is "
            "read, into `agentkeys_backend_ecdsa_pubkey: [u8; 33]` next to `wildmeta_backend_ecdsa_pubkey`.",
        ),
        WorkerChange(
            "rpc-server/src/methods/omni/submit_user_op_with_auth.rs@29cca4f9",
            "`register_submit_user_op_with_auth`",
            "a `ClientAuth::AgentkeysBackend` arm mirroring `WildmetaBackend`: wallet index 0 or 1, "
            "`validate_backend_calldata` for index 0, `client_id == CLIENT_ID_AGENTKEYS` (else `-32003 Invalid client "
            "ID for AgentkeysBackend authentication`), then `verify_wildmeta_backend_signature_wrapper` with "
            "`ctx.agentkeys_backend_ecdsa_pubkey`.",
        ),
    ),
    5: (
        WorkerChange(
            "rpc-server/src/verify_auth.rs@c7751f89",
            "`verify_auth`",
            "return what the `auth_token` arm proved (the claims of `verify_auth_token_authentication`) instead of "
            "`()` (clause 8 does the same for `o_auth2` and passkeys).",
        ),
        WorkerChange(
            "rpc-server/src/methods/omni/user_login.rs@fe493ade",
            "`register_user_login`",
            "for `CLIENT_ID_AGENTKEYS`, refuse with `-32003` unless the token's `sub` is "
            '`hex_encode(params.user_id.to_omni_account("agentkeys"))` and its `aud` is `agentkeys`.',
        ),
    ),
    6: (
        WorkerChange(
            "storage (`oe_storage`), rpc-server/src/methods/omni/request_email_verification_code.rs@4a07c15e",
            "a second code store; `register_request_email_verification_code`",
            "keep e-mail codes in a store of their own (same key, `blake2_256(OmniAccount)`) instead of "
            "`VerificationCodeStorage`, which `get_web3_sign_in_message.rs@3d8240d8` also reads and fills.",
        ),
        WorkerChange(
            "rpc-server/src/verify_auth.rs@c7751f89",
            "`verify_auth`, e-mail arm",
            "read and remove the code from that store (this also serves `omni_requestJwt`).",
        ),
    ),
    7: (
        WorkerChange(
            "rpc-server/src/methods/omni/submit_user_op_with_auth.rs@29cca4f9",
            "`register_submit_user_op_with_auth`, `ClientAuth::WildmetaHl` arm",
            "for `CLIENT_ID_AGENTKEYS`, ask the agentkeys API instead of `ctx.wildmeta_api.verify_hyperliquid_link` "
            "(same body, same `isBound` decoding).",
        ),
        WorkerChange(
            "wildmeta-api/src/methods/verify_hyperliquid_link.rs@20a922b2",
            "`verify_hyperliquid_link_impl`",
            'the URL is `client.base_url.join("/v1/account/check_hyper_agent_address")`, an absolute path that '
            'drops the base path; for the agentkeys API join the relative `"v1/account/check_hyper_agent_address"` so '
            "`OE_AGENTKEYS_API_BASE_URL`'s path prefix is kept.",
        ),
    ),
    8: (
        WorkerChange(
            "rpc-server/src/verify_auth.rs@c7751f89",
            "`verify_auth`",
            "return the identity the `o_auth2` arm verified (`verify_oauth2_authentication` yields "
            "`Identity::Google/Apple(sub)`) and the passkey arm's `passkey_data.user_id` and `client_id`, instead of "
            "mapping them to `()`.",
        ),
        WorkerChange(
            "rpc-server/src/methods/omni/user_login.rs@fe493ade",
            "`register_user_login`",
            "for `CLIENT_ID_AGENTKEYS`, refuse with `-32003` unless that identity's OmniAccount under `agentkeys` is "
            '`params.user_id.to_omni_account("agentkeys")` (for a passkey, also `passkey_data.client_id == '
            "params.client_id`).",
        ),
    ),
    9: (
        WorkerChange(
            "rpc-server/src/methods/omni/submit_user_op_with_auth.rs@29cca4f9",
            "`register_submit_user_op_with_auth`, `ClientAuth::WildmetaHl` arm",
            "for `CLIENT_ID_AGENTKEYS`, call `verify_payload_timestamp_wrapper` after the `linked` check, not before "
            "it, with `main_address.to_lowercase()` as the key (`verify_payload_timestamp`, "
            "`rpc-server/src/utils/auth.rs@3f4c9bad`).",
        ),
    ),
}


@dataclass(frozen=True, slots=True)
class Finding:
    """An upstream gap, the case that shows it, and which exchanges of that case are the evidence."""

    title: str
    case: str
    source: str  # what the worker's source does, cited
    consequence: str
    closed_by: str  # what the agentkeys patch does about it
    evidence: tuple[str, ...]  # an exchange is evidence when "<leg> <summary>" contains one of these
    look_for: str  # what the evidence shows, for a reader who has not seen the case


FINDINGS: tuple[Finding, ...] = (
    Finding(
        "An `o_auth2` login mints tokens for a `user_id` other than the one verified",
        "tee-oauth2.user-login.wildmeta-subject-unbound",
        "`verify_auth` verifies the OAuth2 state, the client's id token and the code exchange, then maps the "
        "verified `Identity::Google(sub)` to `()` (`rpc-server/src/verify_auth.rs@c7751f89`); "
        "`register_user_login` mints the id and access tokens and calls `post_heima_login` for `params.user_id` "
        "(`rpc-server/src/methods/omni/user_login.rs@fe493ade`).",
        "Anyone who completes a Google login with their own Google account receives tokens, and makes the worker "
        "call `post_heima_login`, for any `user_id` they name.",
        "patch clause 8, for `agentkeys`; `wildmeta` unchanged.",
        ("omni_userLogin", "post_heima_login"),
        "the `user_id` sent is somebody else's EVM wallet; the id token of the reply and the bearer of "
        "`post_heima_login` carry that wallet's OmniAccount under `wildmeta` as `sub` (the case computed it "
        "independently), while the Google account that logged in is the `sub` of the `id_token` inside `user_auth`.",
    ),
    Finding(
        "A passkey login mints tokens for a `user_id` other than the one verified",
        "tee-passkey.user-login.wildmeta-subject-unbound",
        "`verify_passkey_authentication` checks the assertion for `passkey_data.user_id` under "
        "`passkey_data.client_id`; `verify_auth` discards that identity (`rpc-server/src/verify_auth.rs@c7751f89`) "
        "and `register_user_login` mints for `params.user_id` (`user_login.rs@fe493ade`).",
        "A valid assertion of one's own passkey logs in as any `user_id`.",
        "patch clause 8, for `agentkeys`; `wildmeta` unchanged.",
        ("omni_userLogin", "post_heima_login"),
        "the passkey that signed belongs to `user_auth.value.user_id`, another wallet than `user_id`; the tokens "
        "of the reply and the bearer of `post_heima_login` carry the OmniAccount of `user_id` as `sub`.",
    ),
    Finding(
        "An `auth_token` login is not bound to the token's subject",
        "tee.login.auth-token.wildmeta-subject-unbound",
        "The `auth_token` arm of `verify_auth` validates the id token (signature, `typ`, audience allow-list, "
        "expiry) and returns `()`; its `sub` is never compared with `params.user_id` "
        "(`rpc-server/src/verify_auth.rs@c7751f89`, `user_login.rs@fe493ade`).",
        "Any valid id token logs in as any `user_id` of an allowed audience.",
        "patch clause 5, for `agentkeys`; `wildmeta` unchanged.",
        ("omni_userLogin", "post_heima_login"),
        "the first login is wallet A's own; the second presents A's id token as `auth_token` with wallet B's "
        "`user_id`, and its tokens carry B's OmniAccount as `sub`.",
    ),
    Finding(
        "`get_account_user_id` is called without credentials",
        "tee.request-jwt.wildmeta",
        "`omni_requestJwt` sends `GET v3/account/get_account_user_id?email=` with no Authorization header "
        "(`pumpx/src/pumpx_api/methods/get_account_user_id.rs@9bf8bf9d`); the backend answers the user id of any "
        "e-mail address.",
        "The backend cannot tell the worker from any other caller: whoever reaches the endpoint maps e-mail "
        "addresses to user ids. It can only be restricted by network (the AgentKeys broker serves it to "
        "`BROKER_CALLBACK_ALLOW_CIDRS` only).",
        "not by the patch (it keeps the wire); a credential on this callback would need a change on both sides.",
        ("get_account_user_id",),
        "the headers of the request: `X-Language` and nothing else, no Authorization (headers every client adds — "
        "Host, Accept, Content-Length, User-Agent — are not shown).",
    ),
    Finding(
        "`check_hyper_agent_address` is called without credentials, and its answer authorises the agent",
        "tee-user-op.wildmeta-hl.link-check-unauthenticated",
        "The wildmeta API client is built with no default headers and posts "
        "`{main_address, agent_address, login_type}` with neither Authorization nor `X-Language`; the worker "
        "decodes `data.isBound` and does not check `code` "
        "(`wildmeta-api/src/methods/verify_hyperliquid_link.rs@20a922b2`, `wildmeta-api/src/lib.rs@323d6f4a`).",
        "The API cannot authenticate the worker, and whatever answers at `OE_WILDMETA_API_URL` decides whether an "
        "agent wallet may act for a main address.",
        "not by the patch; clause 7 sends the `agentkeys` check to the broker, which serves it to "
        "`BROKER_CALLBACK_ALLOW_CIDRS` only.",
        ("check_hyper_agent_address", "omni_submitUserOpWithAuth"),
        "the headers of the callback: `Content-Type` and nothing else; the worker refused because the reply said "
        "`isBound: false`.",
    ),
    Finding(
        "A pending e-mail code is disclosed through the web3 sign-in message",
        "tee.code.email-code-disclosed-upstream",
        "`omni_requestEmailVerificationCode` stores the 6-digit code in `VerificationCodeStorage` under "
        "`blake2_256(OmniAccount)` of the e-mail identity "
        "(`rpc-server/src/methods/omni/request_email_verification_code.rs@4a07c15e`); "
        "`omni_getWeb3SignInMessage` returns whatever that store holds for the OmniAccount it is given "
        "(`rpc-server/src/methods/omni/get_web3_sign_in_message.rs@3d8240d8`).",
        "Whoever knows an e-mail address computes its OmniAccount, reads the pending code from the sign-in "
        "message and logs in as the mailbox owner without the mail.",
        "patch clause 6, for every client.",
        ("omni_requestEmailVerificationCode", "omni_getWeb3SignInMessage", "omni_userLogin"),
        "the `message_code` of the sign-in message for the e-mail identity's OmniAccount is the code just mailed, "
        "and that code logs the mailbox in.",
    ),
    Finding(
        "`omni_listPasskey` answers without authentication",
        "tee-passkey.list-unauthenticated",
        "`omni_listPasskey` takes `{user_id, client_id}` only and is not a protected method "
        "(`rpc-server/src/methods/omni/list_passkey.rs@c7751f89`).",
        "Anyone lists the credential ids, aliases, creation and last-use times of any account.",
        "not by the patch.",
        ("omni_listPasskey",),
        "the last call carries no token and no signature, and its reply lists the credential attached by the "
        "account's owner.",
    ),
    Finding(
        "The `wildmeta_hl` timestamp is stored before the link check",
        "tee-user-op.wildmeta-hl.timestamp-burned-before-link-check",
        "`verify_payload_timestamp_wrapper` stores the new timestamp for `main_address` before "
        "`verify_hyperliquid_link` answers (`rpc-server/src/methods/omni/submit_user_op_with_auth.rs@29cca4f9`, "
        "`rpc-server/src/utils/auth.rs@3f4c9bad`).",
        "Anyone with a wallet of their own signs a `business_json` with the largest timestamp for somebody else's "
        "main address: the link check refuses it, and every later request for that address fails timestamp "
        "verification.",
        "patch clause 9, for `agentkeys`; `wildmeta` unchanged.",
        ("omni_submitUserOpWithAuth", "check_hyper_agent_address"),
        "the first request (a stranger's wallet signing timestamp 2^64−1 for the victim's main address) is "
        "refused as not linked; the owner's genuine request after it is refused as `Timestamp verification "
        "failed`, with no callback.",
    ),
    Finding(
        "The `wildmeta_hl` replay store is keyed by the main address as sent",
        "tee-user-op.wildmeta-hl.replay-with-other-case",
        "The timestamp store key is `main_address` as sent, and the agent's signature covers `business_json` only "
        "(`rpc-server/src/utils/auth.rs@3f4c9bad`, `submit_user_op_with_auth.rs@29cca4f9`).",
        "The same signed request replays with the main address in another letter case.",
        "patch clause 9, for `agentkeys`; `wildmeta` unchanged.",
        ("omni_submitUserOpWithAuth",),
        "the second request is the first with `main_address` in upper case and the same signature; both get a "
        "transaction hash.",
    ),
    Finding(
        "Passkey registration does not check the authenticator data",
        "tee-passkey.attach-unchecked",
        "`verify_attestation` reads the credential id and the COSE key; it checks neither the attestation "
        "statement nor the RP id hash nor the UP/UV flags (`crypto/src/passkey.rs@4a07c15e`).",
        "A credential made for another RP id, without user presence or verification, is attached (it fails later, "
        "at login, on the RP id).",
        "not by the patch.",
        ("omni_attachPasskey",),
        "the attestation is made for RP id `evil.example` with the AT flag only (no UP, no UV), and the worker "
        "answers that the passkey is attached.",
    ),
    Finding(
        "The client's OAuth2 id token is not verified as a token",
        "tee-oauth2.login-with-oauth2.unchecked-claims",
        "The client's id token is decoded without a signature check; only its `aud`, `nonce` and `sub` are "
        "compared, and neither id token's issuer, expiry or `email_verified` is read "
        "(`rpc-server/src/verify_auth.rs@c7751f89`, `core/src/verify/web2/oauth2_common.rs@29cca4f9`).",
        "The login rests on the code exchange alone; an unsigned, expired token from another issuer is accepted "
        "next to a good code.",
        "not by the patch.",
        ("omni_loginWithOAuth2",),
        "the client's `id_token` is unsigned (`alg` none), issued by `https://evil.example`, expired (`exp` 2) "
        "and `email_verified` false; the worker answers with the user id.",
    ),
)


# ---------------------------------------------------------------------------------------------- runs


def load_run(directory: Path) -> RunResult:
    """A run as its ``transcript.json`` recorded it (the cases carry no steps, only their results)."""
    path = directory / "transcript.json" if directory.is_dir() else directory
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return RunResult(
            tee=str(document["tee"]),
            tee_version=str(document.get("tee_version", "")),
            broker=str(document.get("broker", "")),
            started_at=float(document["started_at"]),
            duration=float(document.get("duration_s", 0.0)),
            results=[_case_result(raw) for raw in document["cases"]],
            environment=dict(document.get("environment") or {}),
            tee_kind=str(document.get("tee_kind", "sim")),
            profile=str(document.get("profile", "")),
            declared=dict(document.get("declared") or {}),
            served=dict(document.get("served") or {}),
            preflight=list(document.get("preflight") or []),
            deviations=str(document.get("deviations", "none")),
            sim_info={str(key): str(value) for key, value in (document.get("sim_info") or {}).items()},
        )
    except OSError as exc:
        raise ReviewError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReviewError(f"{path}: not a conformance transcript: {_why(exc)}") from None


def _why(exc: Exception) -> str:
    """What is wrong with a transcript, for a person (an exception's repr is for developers)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    if isinstance(exc, KeyError):
        return f"it has no field {exc.args[0]!r}" if exc.args else "a field is missing"
    return str(exc) or type(exc).__name__


def _case_result(raw: dict[str, Any]) -> CaseResult:
    case = Case(
        id=raw["id"],
        clause=raw.get("clause", ""),
        suite=raw.get("suite", ""),
        steps=(),
        profile=raw.get("profile"),
        only=raw.get("only"),
        needs=tuple(raw.get("needs") or ()),
        tags=tuple(raw.get("tags") or ()),
        patch_clause=raw.get("patch_clause"),
    )
    steps = [
        StepResult(s["index"], s["name"], s["passed"], list(s.get("mismatches") or []), s.get("error"))
        for s in raw.get("steps") or []
    ]
    exchanges = [
        Exchange(e["leg"], e["step"], e["summary"], e.get("request"), e.get("response"), e.get("at", 0.0))
        for e in raw.get("exchanges") or []
    ]
    return CaseResult(
        case,
        Verdict(raw["verdict"]),
        raw.get("reason", ""),
        steps,
        exchanges,
        raw.get("failure_report", ""),
        float(raw.get("duration_ms", 0.0)) / 1000,
        raw.get("deviation"),
    )


def _label(run: RunResult) -> str:
    """The run's target; a URL that answered ``/_sim/info`` is named as the simulator it is."""
    profile = f" ({run.profile})" if run.profile and run.profile not in run.tee else ""
    simulator = "the kit's simulator omni-sim at " if run.sim_info and run.tee_kind != "sim" else ""
    return f"{simulator}{run.tee}{profile}"


def _result(run: RunResult, case_id: str) -> CaseResult | None:
    return next((r for r in run.results if r.case.id == case_id), None)


# ---------------------------------------------------------------------------------------------- findings


@dataclass(frozen=True, slots=True)
class Observation:
    """What the runs showed of one finding."""

    finding: Finding
    run: RunResult | None
    result: CaseResult | None

    @property
    def demonstrated(self) -> bool:
        return self.result is not None and self.result.verdict is Verdict.PASSED

    @property
    def status(self) -> str:
        if self.result is None or self.run is None:
            return "not run: no run in this document selected the case"
        where = _label(self.run)
        verdict = self.result.verdict
        if verdict is Verdict.PASSED:
            return f"demonstrated on {where}"
        if verdict is Verdict.NOT_APPLICABLE:
            return f"not demonstrated: not applicable on {where} ({self.result.reason})"
        return f"not demonstrated: the case {VERDICT_WORDS[verdict]} on {where} ({self.result.reason or 'no reason'})"


def observe(finding: Finding, runs: Sequence[RunResult]) -> Observation:
    """The case's result on the run that shows the gap best: a passing run of profile upstream first,
    then any passing run, then (to say why it was not shown) an upstream run, then any run with it."""
    candidates = [(run, result) for run in runs if (result := _result(run, finding.case)) is not None]
    ranked = sorted(
        candidates,
        key=lambda pair: (pair[1].verdict is not Verdict.PASSED, pair[0].profile != "upstream"),
    )
    if not ranked:
        return Observation(finding, None, None)
    run, result = ranked[0]
    return Observation(finding, run, result)


def _evidence(observation: Observation) -> list[str]:
    result = observation.result
    if result is None:
        return []
    chosen = [e for e in result.exchanges if any(key in f"{e.leg} {e.summary}" for key in observation.finding.evidence)]
    if not chosen:
        return ["No exchange of the case matched; see `transcript.json`.", ""]
    out: list[str] = []
    for exchange in chosen:
        request = compact_json(exchange.request, 900, claim_limit=70)
        body = f"request:  {request}\nresponse: {compact_json(exchange.response, 900, claim_limit=70)}"
        out += [f"- step {exchange.step + 1}, {exchange.leg}: `{exchange.summary}`", "", fenced(body, "text"), ""]
    return out


def findings_section(run: RunResult) -> list[str]:
    """For report.md: each finding whose case ran, and whether this run demonstrated it."""
    observed = [observe(finding, [run]) for finding in FINDINGS]
    observed = [o for o in observed if o.result is not None]
    if not observed:
        return []
    out = [
        "## Upstream gaps (findings)",
        "",
        "Gaps of today's worker that the patch should close or that Litentry should know; `review.md` "
        "(`conformance run --review`, or `conformance review` over report directories) has the source, the "
        "consequence and the evidence of each.",
        "",
        "| finding | case | on this target |",
        "|---|---|---|",
    ]
    for o in observed:
        mark = "✅" if o.demonstrated else "➖"
        out.append(f"| {_cell(o.finding.title)} | `{o.finding.case}` | {mark} {_cell(o.status)} |")
    return [*out, ""]


# ---------------------------------------------------------------------------------------------- document


def _cell(text: str) -> str:
    flat = " ".join(text.split())
    return flat.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def clause_state(results: Sequence[CaseResult]) -> str:
    """The state of one clause on one run, from its patch cases (the *(today)* cases only explain)."""
    patch = [r for r in results if r.case.is_patch_clause and r.verdict is not Verdict.NOT_APPLICABLE]
    if not patch:
        return "➖ not run on this target"
    passed = sum(1 for r in patch if r.verdict is Verdict.PASSED)
    if passed == len(patch):
        return f"✅ done ({passed}/{len(patch)} patch cases passed)"
    if all(r.verdict is Verdict.EXPECTED_FAILURE for r in patch):
        return f"🟡 not done, as the deviation file expects ({len(patch)} patch cases failed as listed)"
    return f"❌ not done ({passed}/{len(patch)} patch cases passed)"


def review_document(runs: Sequence[RunResult]) -> str:
    if not runs:
        raise ReviewError("the review document needs at least one run")
    out = _header(runs)
    out += _clauses(runs)
    out += _findings(runs)
    out += _method(runs)
    return "\n".join(out).rstrip() + "\n"


def _header(runs: Sequence[RunResult]) -> list[str]:
    date = datetime.fromtimestamp(max(run.started_at for run in runs), UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# The agentkeys patch to the Heima omni-executor: review",
        "",
        f"For Litentry reviewers. Made by {KIT_NAME} {KIT_VERSION} on {date} from {len(runs)} conformance run(s); "
        "every verdict and every piece of evidence below comes from those runs "
        "([how this was made](#how-this-document-was-made)).",
        "",
        "| run | worker | verdict | cases |",
        "|---|---|---|---|",
    ]
    for number, run in enumerate(runs, start=1):
        verdict = "PASS" if run.ok else "FAIL"
        counts = ", ".join(f"{run.count(v)} {VERDICT_WORDS[v]}" for v in Verdict if run.count(v))
        out.append(f"| {number} | {_cell(_label(run))} | {verdict} | {_cell(counts)} |")
    return [*out, ""]


def _clauses(runs: Sequence[RunResult]) -> list[str]:
    out = [
        "## 1. What the patch must do",
        "",
        "Today the worker serves only the client id `wildmeta`. The patch adds `agentkeys` in these clauses "
        "(numbered as in `agentkeys_kit/omni_sim/profiles.py`); every `wildmeta` flow stays byte for byte as it is. "
        "A patched worker passes each clause's **(patch)** cases; today's worker fails them. The code changes "
        "name the file and function in the worker (`path@commit` of `litentry/heima`, under "
        "`tee-worker/omni-executor/`) as the source index holds them: the smallest change that passes the cases, "
        "not the only one.",
        "",
    ]
    for clause in PATCH_CLAUSES:
        out += [f"### Clause {clause.number}. {_cell(clause.title)}", ""]
        out += ["| run | verdict |", "|---|---|"]
        for number, run in enumerate(runs, start=1):
            cases = [r for r in run.results if r.case.patch_clause == clause.number]
            out.append(f"| {number}. {_cell(_label(run))} | {clause_state(cases)} |")
        out += ["", "**Change in the worker:**", ""]
        for change in CLAUSE_CHANGES.get(clause.number, ()):
            out.append(f"- `{change.where}` — {change.function}: {change.change}")
        out += ["", *_clause_cases(clause.number, runs)]
    return out


def _clause_cases(number: int, runs: Sequence[RunResult]) -> list[str]:
    ids: dict[str, CaseResult] = {}
    for run in runs:
        for result in run.results:
            if result.case.patch_clause == number:
                ids.setdefault(result.case.id, result)
    if not ids:
        return ["No case of this clause ran.", ""]
    header = "| case | checks | " + " | ".join(f"run {n}" for n in range(1, len(runs) + 1)) + " |"
    out = ["<details><summary>The cases</summary>", "", header, "|---|---|" + "---|" * len(runs)]
    for case_id, first in ids.items():
        mark = " **(patch)**" if first.case.is_patch_clause else " *(today)*" if first.case.only else ""
        cells = []
        for run in runs:
            found = _result(run, case_id)
            cells.append(f"{ICONS[found.verdict]} {VERDICT_WORDS[found.verdict]}" if found else "not run")
        out.append(f"| `{case_id}`{mark} | {_cell(first.case.clause)} | " + " | ".join(cells) + " |")
    return [*out, "", "</details>", ""]


def _findings(runs: Sequence[RunResult]) -> list[str]:
    observed = [observe(finding, runs) for finding in FINDINGS]
    shown = sum(1 for o in observed if o.demonstrated)
    out = [
        "## 2. Upstream gaps the patch should close, or that Litentry should know",
        "",
        "Facts about today's worker, each read from its source and shown by a case on the `upstream` profile "
        "when a run in this document could run it. A finding is *demonstrated* only when its case passed: the "
        "case's expectations are the gap. Where it was not, the reason is given and the source reading stands "
        "alone. Shown on the simulator's `upstream` profile (in-process, or an `omni-sim` at a URL: the harness "
        "recognises one by its `/_sim/info` and names it so), a finding is the source reading made executable; "
        "shown on a worker at a URL, it is that worker's own behaviour. "
        f"{shown} of {len(observed)} demonstrated by these runs.",
        "",
        "| # | finding | closed by | observed |",
        "|---|---|---|---|",
    ]
    for number, o in enumerate(observed, start=1):
        mark = "✅" if o.demonstrated else "➖"
        out.append(
            f"| {number} | [{_cell(o.finding.title)}](#finding-{number}) | {_cell(o.finding.closed_by)} | "
            f"{mark} {_cell(o.status)} |"
        )
    out.append("")
    for number, o in enumerate(observed, start=1):
        out += _finding_block(number, o)
    return out


def _finding_block(number: int, o: Observation) -> list[str]:
    finding = o.finding
    out = [
        f'<a id="finding-{number}"></a>',
        "",
        f"### {number}. {_cell(finding.title)}",
        "",
        f"- **In the source:** {finding.source}",
        f"- **So:** {finding.consequence}",
        f"- **Closed by:** {finding.closed_by}",
        f"- **Case:** `{finding.case}`" + (f" — {_cell(o.result.case.clause)}" if o.result else ""),
        f"- **Observed:** {_cell(o.status)}",
        f"- **What the evidence shows:** {finding.look_for}",
        f"- **Reproduce:** `{_reproduce(o)}`",
        "",
    ]
    if o.demonstrated:
        out += ["**Evidence** (JWTs decoded, long values trimmed; `transcript.json` of the run has everything):", ""]
        out += _evidence(o)
    return out


def _reproduce(o: Observation) -> str:
    if o.run is not None and o.run.tee_kind != "sim":
        return f"conformance run --target TARGET.yaml --tee-profile upstream -k {o.finding.case}"
    return f"conformance run --tee sim --tee-profile upstream -k {o.finding.case}"


def _method(runs: Sequence[RunResult]) -> list[str]:
    out = [
        '<a id="how-this-document-was-made"></a>',
        "",
        "## 3. How this document was made",
        "",
        "The conformance harness of this kit played the client, the backend the worker calls back (`post_heima_login`, "
        "`add_wallet`, `get_account_user_id`, `user_connect`, `check_hyper_agent_address`), a SendGrid stand-in and "
        "a fake Google, and checked every leg. The runs:",
        "",
    ]
    for number, run in enumerate(runs, start=1):
        started = datetime.fromtimestamp(run.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if run.tee_kind == "sim":
            kind = "the simulator, in-process"
        elif run.sim_info:
            kind = "the kit's simulator omni-sim at a URL (it answers `/_sim/info`), not a worker"
        else:
            kind = "a worker at a URL"
        out.append(
            f"{number}. **{_cell(_label(run))}** — {kind}; profile `{run.profile or '?'}`; known deviations: "
            f"{_cell(run.deviations)}; started {started}, {run.duration:.1f} s; {len(run.results)} cases."
        )
        out += [f"   - {_cell(name)}: {_cell(value)}" for name, value in run.declared.items()]
    out += [
        "",
        "A case marked *not applicable* needed something the target did not offer (the reason says what), for "
        "example the simulator's bundler for cases that would otherwise submit a real transaction, or the "
        "harness's OAuth2 provider, which a real worker cannot use because its Google and Apple endpoints are "
        "compiled in. The simulator (`agentkeys_kit/omni_sim`, profiles `upstream` and `agentkeys-patch`) is the "
        "executable specification of the patch; its fidelity notes are in the kit's README.",
        "",
    ]
    return out


def write_review(runs: Sequence[RunResult], path: Path) -> Path:
    document = review_document(runs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, document)
    except OSError as exc:
        raise ReviewError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return path

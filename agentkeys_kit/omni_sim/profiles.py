"""The two behaviours the simulator can play.

`upstream` is today's worker: only `wildmeta` logs in (`user_login.rs`: any other client id gets
-32602 after authentication), the audience allow-list is ``heima, pumpx, wildmeta``, and every
callback goes to the pumpx API.

`agentkeys-patch` is the executable specification of the Rust patch (DESIGN.md):

* ``CLIENT_ID_AGENTKEYS = "agentkeys"``; `omni_userLogin` for it calls `post_heima_login` on the
  agentkeys API with the pumpx path, body and envelope;
* the audience allow-list gains ``agentkeys``;
* `omni_addWallet` and `omni_requestJwt` call the API of the token's / the request's client;
* `ClientAuth` gains ``agentkeys_backend {signature}``;
* `auth_token` login for ``agentkeys`` is bound to its subject: the id token's ``sub`` must be the
  OmniAccount of ``user_id`` under ``agentkeys`` and its ``aud`` must be ``agentkeys``. Upstream the
  subject is not compared with ``user_id`` (spec §5.3 observation), so any valid id token logs in as
  any identity; the broker cannot detect that from the callback, so the patch must close it.
* web3 sign-in codes and e-mail codes live in separate stores. Upstream both live in one
  `VerificationCodeStorage` under ``blake2_256(OmniAccount)`` (`request_email_verification_code.rs`,
  `get_web3_sign_in_message.rs@05ff5857`), so `omni_getWeb3SignInMessage` for the OmniAccount of an
  e-mail identity returns that e-mail's pending code, and anyone who asks can log in as the
  mailbox owner without reading the mail. The patch must separate them, for every client;
* `omni_submitUserOpWithAuth` sends `check_hyper_agent_address` for ``agentkeys`` to the agentkeys
  API (``v1/account/check_hyper_agent_address`` relative to `OE_AGENTKEYS_API_BASE_URL`, so the
  broker answers it from its grants), and accepts ``agentkeys_backend`` (clause 4) checked against
  `OE_AGENTKEYS_BACKEND_ECDSA_PUBKEY` for client id ``agentkeys``, as ``wildmeta_backend`` is for
  ``wildmeta``;
* `o_auth2` and `passkey` logins for ``agentkeys`` mint only for the identity they proved: upstream
  `verify_auth` discards the verified identity (`verify_auth.rs@c7751f89`), so a Google login or a
  passkey assertion for one identity logs in as any `user_id`;
* `wildmeta_hl` for ``agentkeys`` stores the replay timestamp only once `check_hyper_agent_address`
  confirmed the link, under the lowercased main address. Upstream stores it before the link check
  (anyone can burn a main address's timestamps with a wallet of their own) and under the address
  as sent (the same signed request replays with the address in another letter case);
* ``wildmeta`` behaviour is otherwise unchanged, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from agentkeys_kit.protocol.auth import AGENTKEYS_BACKEND_VARIANT, CLIENT_AUTH_VARIANTS
from agentkeys_kit.protocol.serde_rules import Field
from agentkeys_kit.protocol.tee_jwt import CLIENT_ID_AGENTKEYS, CLIENT_ID_WILDMETA, UPSTREAM_AUDIENCES


class ProfileName(StrEnum):
    UPSTREAM = "upstream"
    AGENTKEYS_PATCH = "agentkeys-patch"


class BackendName(StrEnum):
    PUMPX = "pumpx"
    AGENTKEYS = "agentkeys"
    WILDMETA = "wildmeta"


@dataclass(frozen=True, slots=True)
class BackendSigner:
    """A ``*_backend`` client auth of `omni_submitUserOpWithAuth`: the only client id it serves and
    the `SimConfig` attribute holding its compressed secp256k1 key."""

    client_id: str
    pubkey_setting: str


@dataclass(frozen=True, slots=True)
class Profile:
    name: ProfileName
    audiences: tuple[str, ...]
    #: client id → API that `omni_userLogin` calls `post_heima_login` on; others get -32602.
    login_backends: dict[str, BackendName]
    #: client id → API for `omni_addWallet` / `omni_requestJwt`; unlisted ids use pumpx.
    client_backends: dict[str, BackendName]
    client_auth_variants: dict[str, tuple[Field, ...]] = field(default_factory=dict)
    #: client ids whose `auth_token`, `o_auth2` and `passkey` logins must be for the identity proven.
    subject_bound_clients: frozenset[str] = frozenset()
    #: web3 sign-in codes and e-mail codes in separate stores (upstream: one store).
    separate_code_stores: bool = False
    #: client id → API that answers `check_hyper_agent_address`; unlisted ids use the wildmeta API.
    hyper_agent_backends: dict[str, BackendName] = field(default_factory=dict)
    #: `ClientAuth` tag → backend signer accepted by `omni_submitUserOpWithAuth`.
    backend_signers: dict[str, BackendSigner] = field(default_factory=dict)
    #: client ids whose `wildmeta_hl` timestamp is stored after the link check, by lowercased address.
    link_checked_timestamp_clients: frozenset[str] = frozenset()

    def backend_for_client(self, client_id: str) -> BackendName:
        return self.client_backends.get(client_id, BackendName.PUMPX)

    def hyper_agent_backend_for(self, client_id: str) -> BackendName:
        return self.hyper_agent_backends.get(client_id, BackendName.WILDMETA)


UPSTREAM = Profile(
    name=ProfileName.UPSTREAM,
    audiences=UPSTREAM_AUDIENCES,
    login_backends={CLIENT_ID_WILDMETA: BackendName.PUMPX},
    client_backends={},
    client_auth_variants=CLIENT_AUTH_VARIANTS,
    backend_signers={"wildmeta_backend": BackendSigner(CLIENT_ID_WILDMETA, "wildmeta_backend_ecdsa_pubkey")},
)

AGENTKEYS_PATCH = Profile(
    name=ProfileName.AGENTKEYS_PATCH,
    audiences=(*UPSTREAM_AUDIENCES, CLIENT_ID_AGENTKEYS),
    login_backends={
        CLIENT_ID_WILDMETA: BackendName.PUMPX,
        CLIENT_ID_AGENTKEYS: BackendName.AGENTKEYS,
    },
    client_backends={CLIENT_ID_AGENTKEYS: BackendName.AGENTKEYS},
    client_auth_variants={**CLIENT_AUTH_VARIANTS, **AGENTKEYS_BACKEND_VARIANT},
    subject_bound_clients=frozenset({CLIENT_ID_AGENTKEYS}),
    separate_code_stores=True,
    hyper_agent_backends={CLIENT_ID_AGENTKEYS: BackendName.AGENTKEYS},
    backend_signers={
        "wildmeta_backend": BackendSigner(CLIENT_ID_WILDMETA, "wildmeta_backend_ecdsa_pubkey"),
        "agentkeys_backend": BackendSigner(CLIENT_ID_AGENTKEYS, "agentkeys_backend_ecdsa_pubkey"),
    },
    link_checked_timestamp_clients=frozenset({CLIENT_ID_AGENTKEYS}),
)

PROFILES = {profile.name: profile for profile in (UPSTREAM, AGENTKEYS_PATCH)}


def profile_named(name: str) -> Profile:
    return PROFILES[ProfileName(name)]


@dataclass(frozen=True, slots=True)
class PatchClause:
    number: int
    title: str


#: What `agentkeys-patch` adds to `upstream`, numbered as the README and the conformance reports
#: number them; a suite case names the clause it checks with ``patch_clause: <number>``.
PATCH_CLAUSES = (
    PatchClause(1, "CLIENT_ID_AGENTKEYS: omni_userLogin for agentkeys calls post_heima_login on the agentkeys API"),
    PatchClause(2, "the JWT audience allow-list gains agentkeys (protected methods, auth_token login)"),
    PatchClause(3, "omni_addWallet and omni_requestJwt call the API of the token's / the request's client"),
    PatchClause(4, "ClientAuth gains agentkeys_backend {signature}"),
    PatchClause(5, "auth_token login for agentkeys is bound to the token's subject and audience"),
    PatchClause(6, "web3 sign-in codes and e-mail codes live in separate stores"),
    PatchClause(
        7,
        "omni_submitUserOpWithAuth for agentkeys sends check_hyper_agent_address to the agentkeys API "
        "(the broker answers from its grants), not to the wildmeta API",
    ),
    PatchClause(8, "o_auth2 and passkey logins for agentkeys mint tokens only for the identity they proved"),
    PatchClause(
        9,
        "wildmeta_hl for agentkeys stores the replay timestamp only after the link check, "
        "under the lowercased main address",
    ),
)

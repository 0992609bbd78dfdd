"""`SimContext`: what the worker's `RpcContext` holds, for the simulated login path.

Keys are loaded once at start (never per request); the JWT public key is derived from the
private key, as the worker does (`to_pkcs1_der`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.omni_sim.backend_api import BackendApi, CallbackJournal
from agentkeys_kit.omni_sim.clock import SimClock
from agentkeys_kit.omni_sim.config import SimConfig
from agentkeys_kit.omni_sim.keystore import load_auth_token_key, load_shielding_key
from agentkeys_kit.omni_sim.mailer import Mailer, Outbox, build_mailer
from agentkeys_kit.omni_sim.profiles import BackendName, Profile, profile_named
from agentkeys_kit.omni_sim.stores import (
    HeimaJwtStore,
    OAuth2StateVerifierStore,
    PasskeyChallengeStore,
    PasskeyStore,
    VerificationCodeStore,
    WildmetaTimestampStore,
)
from agentkeys_kit.omni_sim.user_op_bundler import Bundler
from agentkeys_kit.protocol.callbacks import AGENTKEYS_CHECK_HYPER_AGENT_ADDRESS_PATH
from agentkeys_kit.protocol.errors import ErrorCatalog, catalog_for
from agentkeys_kit.protocol.tee_jwt import AUTH_TOKEN_LIFETIME_SECONDS, AuthTokenClaims, encode_auth_token


@dataclass(slots=True)
class SimContext:
    config: SimConfig
    profile: Profile
    errors: ErrorCatalog
    clock: SimClock
    jwt_key: rsa.RSAPrivateKey
    jwt_public_key: rsa.RSAPublicKey
    shielding_key: rsa.RSAPrivateKey
    journal: CallbackJournal
    outbox: Outbox
    backends: dict[BackendName, BackendApi]
    codes: VerificationCodeStore = field(default_factory=VerificationCodeStore)  # web3 sign-in codes
    jwts: HeimaJwtStore = field(default_factory=HeimaJwtStore)
    #: the e-mail codes' store: `codes` itself upstream, a store of its own in the patch
    email_codes: VerificationCodeStore | None = None
    oauth2_states: OAuth2StateVerifierStore = field(default_factory=OAuth2StateVerifierStore)
    passkey_challenges: PasskeyChallengeStore = field(default_factory=PasskeyChallengeStore)
    passkeys: PasskeyStore = field(default_factory=PasskeyStore)
    wildmeta_timestamps: WildmetaTimestampStore = field(default_factory=WildmetaTimestampStore)
    #: the worker's other HTTP clients (the OAuth2 token endpoint, the SendGrid mailer)
    session: aiohttp.ClientSession | None = None
    bundler: Bundler | None = None
    _mailers: dict[str, Mailer] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        config: SimConfig,
        session: aiohttp.ClientSession,
        *,
        clock: SimClock | None = None,
        jwt_key: rsa.RSAPrivateKey | None = None,
    ) -> SimContext:
        key = jwt_key or load_auth_token_key(config.local_dir)
        journal = CallbackJournal()
        timeout = config.callback_timeout
        backends = {
            BackendName.PUMPX: BackendApi("pumpx", config.pumpx_api_base_url, session, journal, timeout),
            BackendName.AGENTKEYS: BackendApi(
                "agentkeys",
                config.agentkeys_api_base_url,
                session,
                journal,
                timeout,
                check_hyper_agent_address_path=AGENTKEYS_CHECK_HYPER_AGENT_ADDRESS_PATH,
            ),
            BackendName.WILDMETA: BackendApi("wildmeta", config.wildmeta_api_url, session, journal, timeout),
        }
        profile = profile_named(config.profile)
        codes = VerificationCodeStore()
        return cls(
            config=config,
            profile=profile,
            errors=catalog_for(config.error_era),
            clock=clock or SimClock(),
            jwt_key=key,
            jwt_public_key=key.public_key(),
            shielding_key=load_shielding_key(config.local_dir),
            journal=journal,
            outbox=Outbox(),
            backends=backends,
            codes=codes,
            email_codes=VerificationCodeStore() if profile.separate_code_stores else codes,
            session=session,
            bundler=Bundler.for_key(key, config.entry_point_address),
        )

    @property
    def email_code_store(self) -> VerificationCodeStore:
        return self.email_codes if self.email_codes is not None else self.codes

    def backend(self, name: BackendName) -> BackendApi:
        return self.backends[name]

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None, "SimContext.create sets the session"
        return self.session

    @property
    def user_op_bundler(self) -> Bundler:
        assert self.bundler is not None, "SimContext.create sets the bundler"
        return self.bundler

    def mailer_for(self, client_id: str) -> Mailer | None:
        """`MailerFactory::get_mailer_for_client`: cached per lowercased client id."""
        cache_key = client_id.lower()
        mailer = self._mailers.get(cache_key)
        if mailer is None:
            mailer_config = self.config.mailer_for(client_id)
            if mailer_config is None:
                return None
            mailer = build_mailer(mailer_config, self.outbox, self.http, self.config.callback_timeout)
            self._mailers[cache_key] = mailer
        return mailer

    def mint_token(self, account_hex: str, token_type: str, client_id: str, expires_at: int) -> str:
        claims = AuthTokenClaims(sub=account_hex, typ=token_type, exp=expires_at, aud=client_id)
        return encode_auth_token(claims, self.jwt_key)

    def token_expiry(self) -> int:
        """`Utc::now() + Days::new(AUTH_TOKEN_EXPIRATION_DAYS)` in unix seconds."""
        return self.clock.now() + AUTH_TOKEN_LIFETIME_SECONDS

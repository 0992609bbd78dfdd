"""The ``heima`` login backend (Option A as planned: the worker authenticates).

Nothing to serve here beyond what the broker already does. The client (the `agentkeys` CLI) reads
``GET /v1/auth/config``, which names the worker's JSON-RPC URL (`BROKER_HEIMA_WORKER_URL`) and the
client id ``agentkeys``, and logs in at the worker itself:

* wallet: ``omni_getWeb3SignInMessage {client_id: "agentkeys", omni_account}`` then
  ``omni_userLogin`` with an EIP-191 signature over that message;
* e-mail: ``omni_requestEmailVerificationCode`` then ``omni_userLogin`` with the code.

The worker then calls ``post_heima_login`` on this broker (`callbacks.py`), which records the TEE
access token it carries (its SHA-256, `tee_access_tokens`), and returns the TEE tokens to the
client. The client presents the **access** token as its bearer; `bearer.require_principal`
accepts it because it verifies and was recorded. A token the worker minted but whose callback
never reached this broker is refused. `POST /v1/auth/logout` with it makes this broker refuse
it from then on (the worker, which knows nothing of it, would still accept it until it expires).
"""

from __future__ import annotations

import logging

from agentkeys_kit.broker.config import BrokerConfig
from agentkeys_kit.broker.observability import fields
from agentkeys_kit.broker.sessions import SessionKey

log = logging.getLogger("agentkeys_kit.broker")


def log_login_start(config: BrokerConfig, session_key: SessionKey) -> None:
    """The start lines of login: the backend, the worker (heima), the session key (never secret)."""
    worker = ""
    if config.login_backend == "heima":
        # INFO, not a warning: a broker that only serves the callbacks needs no worker URL
        worker = f", worker {config.heima_worker_url or 'not named (BROKER_HEIMA_WORKER_URL unset)'}"
    log.info(
        "login backend %s%s",
        config.login_backend,
        worker,
        extra=fields(login_backend=config.login_backend, heima_worker_url=config.heima_worker_url),
    )
    log.info(
        "session key %s from %s, sessions last %d s",
        session_key.kid,
        session_key.path,
        config.session_ttl,
        extra=fields(
            session_kid=session_key.kid, session_key_path=str(session_key.path), session_ttl_s=config.session_ttl
        ),
    )

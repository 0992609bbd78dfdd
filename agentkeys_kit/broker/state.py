"""The broker's running state, held on the aiohttp application under typed keys."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from agentkeys_kit.broker.audit import RefusalAudit
from agentkeys_kit.broker.config import BrokerConfig
from agentkeys_kit.broker.storage import Database
from agentkeys_kit.broker.tokens import TeeTokenVerifier

if TYPE_CHECKING:
    from agentkeys_kit.broker.sessions import SessionIssuer


@dataclass(slots=True)
class BrokerState:
    config: BrokerConfig
    db: Database
    verifier: TeeTokenVerifier
    refusals: RefusalAudit
    sessions: SessionIssuer
    clock: Callable[[], float] = field(default=time.time)

    def now(self) -> int:
        return int(self.clock())


STATE = web.AppKey("broker_state", BrokerState)

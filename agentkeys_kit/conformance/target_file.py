"""A small YAML file that fixes where the parties listen and what the worker under test offers.

Written once, used by every command (``conformance env|serve|run|diff --target FILE``), so the
worker is configured once and every run reuses that configuration::

    listen: 127.0.0.1            # the address the harness's parties bind
    advertise: 127.0.0.1         # the host the worker reaches them at (default: listen)
    ports: {receiver: 8701, sendgrid: 8702, smtp: 8703, google: 8704}
    worker:                      # the worker under test (flags --tee… override each key)
      url: http://127.0.0.1:2100/
      profile: agentkeys-patch   # upstream | agentkeys-patch
      key: worker-local/keystore/auth_token_key.bin   # or its public key (PEM/DER)
      mailer: sendgrid           # sendgrid | smtp | console | none
      clock: none                # sim: an omni-sim whose /_sim/clock the harness may move
      sim_endpoints: false       # true: an omni-sim's /_sim/ endpoints may be used
      oauth2_provider: none      # harness: an omni-sim exchanging OAuth2 codes at the fake Google
      deviations: worker-upstream   # a shipped name, a file, or none (default: by target)
    worker2: { … }               # the second worker of `conformance diff` (flags --tee2…)
    broker: local                # local | none | URL

Relative paths are relative to the file. Every key is optional; flags win over the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from agentkeys_kit.conformance.model import yaml_problem
from agentkeys_kit.conformance.parties import DEFAULT_PORTS, MAILERS, PartyAddresses

_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_WORKER = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "url": {"type": "string", "pattern": "^(https?://.+|sim)$"},
        "profile": {"enum": ["upstream", "agentkeys-patch"]},
        "key": {"type": "string"},
        "mailer": {"enum": list(MAILERS)},
        "clock": {"enum": ["sim", "none"]},
        "sim_endpoints": {"type": "boolean"},
        "oauth2_provider": {"enum": ["harness", "none"]},
        "error_era": {"enum": ["current", "legacy"]},
        "deviations": {"type": "string"},
    },
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "listen": {"type": "string"},
        "advertise": {"type": "string"},
        "ports": {
            "type": "object",
            "additionalProperties": False,
            "properties": {name: _PORT for name in DEFAULT_PORTS},
        },
        "worker": _WORKER,
        "worker2": _WORKER,
        "broker": {"type": "string"},
    },
}


class TargetFileError(ValueError):
    """A target file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    url: str | None = None
    profile: str | None = None
    key: str | None = None
    mailer: str | None = None
    clock: bool | None = None
    sim_endpoints: bool | None = None
    deviations: str | None = None
    oauth2_provider: bool | None = None
    error_era: str | None = None


@dataclass(frozen=True, slots=True)
class TargetFile:
    path: Path | None = None
    listen: str | None = None
    advertise: str | None = None
    ports: dict[str, int] = field(default_factory=dict)
    worker: WorkerSpec = field(default_factory=WorkerSpec)
    worker2: WorkerSpec = field(default_factory=WorkerSpec)
    broker: str | None = None

    def parties(self, listen: str | None, advertise: str | None, port_base: int | None) -> PartyAddresses:
        """Fixed addresses: flags, then this file, then `DEFAULT_PORTS`."""
        base = PartyAddresses.fixed(listen or self.listen or "127.0.0.1", advertise or self.advertise, port_base)
        if port_base is not None or not self.ports:
            return base
        ports = {**DEFAULT_PORTS, **self.ports}
        return PartyAddresses(
            base.listen, base.advertise, ports["receiver"], ports["sendgrid"], ports["smtp"], ports["google"]
        )


def load_target_file(path: Path | None) -> TargetFile:
    if path is None:
        return TargetFile()
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise TargetFileError(f"target file {path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise TargetFileError(f"target file {path}{yaml_problem(exc)}") from None
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(document))
    if errors:
        error = errors[0]
        where = ".".join(str(part) for part in error.absolute_path) or "(top)"
        raise TargetFileError(f"target file {path}: {where}: {error.message}")
    return TargetFile(
        path=path,
        listen=document.get("listen"),
        advertise=document.get("advertise"),
        ports=dict(document.get("ports") or {}),
        worker=_worker(document.get("worker") or {}, path.parent),
        worker2=_worker(document.get("worker2") or {}, path.parent),
        broker=document.get("broker"),
    )


def _worker(raw: dict[str, Any], base: Path) -> WorkerSpec:
    key = raw.get("key")
    deviations = raw.get("deviations")
    if deviations is not None and ("/" in deviations or deviations.endswith((".yaml", ".yml"))):
        deviations = str(base / deviations)
    return WorkerSpec(
        url=raw.get("url"),
        profile=raw.get("profile"),
        key=str(base / key) if key is not None else None,
        mailer=raw.get("mailer"),
        clock=None if "clock" not in raw else raw["clock"] == "sim",
        sim_endpoints=raw.get("sim_endpoints"),
        deviations=deviations,
        oauth2_provider=None if "oauth2_provider" not in raw else raw["oauth2_provider"] == "harness",
        error_era=raw.get("error_era"),
    )

"""Where the CLI keeps the bearer: the OS keychain through `keyring` (service ``agentkeys``, one
entry per broker URL), else — on a host without a usable keychain (a headless server, a container) —
the file ``$XDG_CONFIG_HOME/agentkeys/credentials.json`` (default ``~/.config/agentkeys/``), mode
0600 in a 0700 directory. `store` says which one it used; the bearer itself is never printed.
A keychain that fails in any way (no backend, no D-Bus session, a locked collection) counts as
absent: the file is used and the reason is said.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SERVICE = "agentkeys"


@dataclass(frozen=True, slots=True)
class Credential:
    broker_url: str
    bearer: str
    kind: str  # "session" (a broker session) or "tee" (a TEE access token)
    omni_account: str
    expires_at: int | None


def credentials_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "agentkeys" / "credentials.json"


def _keyring() -> Any:
    import keyring

    return keyring


def store(credential: Credential) -> str:
    """Keep `credential`; returns where, in words ("the OS keychain (…)" or the file's path)."""
    payload = json.dumps(asdict(credential))
    problem = ""
    try:
        keyring = _keyring()
        keyring.set_password(SERVICE, credential.broker_url, payload)
        backend = type(keyring.get_keyring()).__name__
        _forget_in_file(credential.broker_url)
        return f"the OS keychain ({backend})"
    except Exception as exc:  # any keychain failure: fall back to the file
        problem = type(exc).__name__
    path = credentials_file()
    entries = _read_file(path)
    entries[credential.broker_url] = asdict(credential)
    _write_file(path, entries)
    return f"{path} (mode 0600; no usable OS keychain: {problem})"


def keep(credential: Credential, how: str) -> int:
    """A login command's end: the bearer stored, and whom it logs in as (`how`: identity and
    backend) and where it is kept printed; its exit status (0)."""
    where = store(credential)
    print(f"logged in to {credential.broker_url} as {credential.omni_account} ({how})")
    print(f"bearer stored in {where}")
    return 0


def load(broker_url: str) -> Credential | None:
    with contextlib.suppress(Exception):
        payload = _keyring().get_password(SERVICE, broker_url)
        if payload:
            return Credential(**json.loads(payload))
    entry = _read_file(credentials_file()).get(broker_url)
    if isinstance(entry, dict):
        with contextlib.suppress(TypeError):
            return Credential(**entry)
    return None


def forget(broker_url: str) -> None:
    with contextlib.suppress(Exception):
        _keyring().delete_password(SERVICE, broker_url)
    _forget_in_file(broker_url)


def _forget_in_file(broker_url: str) -> None:
    path = credentials_file()
    entries = _read_file(path)
    if broker_url in entries:
        del entries[broker_url]
        _write_file(path, entries)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_file(path: Path, entries: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(entries, file)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)

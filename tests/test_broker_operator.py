"""The operator's view (issue 11, finding 13): `agentkeys-broker` run as its own process, the way an
operator runs it. Each mistake is one line on stderr that names it, never a traceback or a secret,
with a non-zero exit status; a read command never creates a database, a schema or a table."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from broker_client import login
from conftest import TEE_PUBLIC_KEY_PATH, BrokerFactory, _drop_schema, open_database_at
from cryptography.hazmat.primitives.asymmetric import rsa

from agentkeys_kit.broker.storage import StorageError, migrations, open_database, store

MASTER = "0x" + "e1" * 20
AGENT = "0x" + "f2" * 20
PASSWORD = "pw-S3cr3t-7f1c"


async def broker_cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m agentkeys_kit.broker.cli ARGV`` with only `env`'s BROKER_* variables."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("BROKER_")}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agentkeys_kit.broker.cli", *argv],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line(proc: subprocess.CompletedProcess[str], status: int, *needles: str) -> str:
    """The process failed with `status` and said so in exactly one line holding every needle."""
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def db_env(db_url: tuple[str, str | None]) -> dict[str, str]:
    url, schema = db_url
    return {"BROKER_DB_URL": url, **({"BROKER_DB_SCHEMA": schema} if schema else {})}


async def test_grants_create_for_a_pair_with_an_active_grant_is_one_line(
    make_broker: BrokerFactory,
    db_url: tuple[str, str | None],
    tee_key: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
) -> None:
    broker = await make_broker()
    await login(http, broker, tee_key, MASTER)
    create = ("grants", "create", "--master-wallet", MASTER, "--agent-wallet", AGENT, "--scope", "s", "--ttl", "600")
    first = await broker_cli(*create, env=db_env(db_url))
    assert first.returncode == 0, first.stderr
    grant_id = json.loads(first.stdout)["grant_id"]
    second = await broker_cli(*create, env=db_env(db_url))
    one_line(second, 1, "already has an active grant", AGENT, grant_id)
    assert second.stdout == ""
    assert [g.grant_id for g in await broker.state.db.run(store.list_grants, None)] == [grant_id]


MALFORMED_URLS = {
    "port_not_a_number": (f"postgresql://u:{PASSWORD}@localhost:notaport/db", 2, "BROKER_DB_URL"),
    "unknown_scheme": (f"postgresq://u:{PASSWORD}@localhost/db", 2, "BROKER_DB_URL must be"),
    "sqlite_without_a_path": ("sqlite:///", 2, "BROKER_DB_URL must name a SQLite file"),
    "parameter_the_driver_refuses": (
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/test?sslmode=bogus",
        1,
        "cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:5432/test (BROKER_DB_URL)",
    ),
    "nothing_listens": (f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test", 1, "cannot connect to PostgreSQL"),
}


@pytest.mark.parametrize("case", list(MALFORMED_URLS))
@pytest.mark.parametrize("command", ["run", "grants list"])
async def test_a_bad_db_url_is_one_line_that_never_shows_the_password(case: str, command: str, tmp_path: Path) -> None:
    url, status, needle = MALFORMED_URLS[case]
    env = {
        "BROKER_DB_URL": url,
        "BROKER_TEE_JWT_PUBLIC_KEY": str(TEE_PUBLIC_KEY_PATH),
        "BROKER_SESSION_KEYPAIR_PATH": str(tmp_path / "session-keypair.json"),
    }
    proc = await broker_cli(*command.split(), "--port", "0", env=env) if command == "run" else None
    if proc is None:
        proc = await broker_cli(*command.split(), env=env)
    # `run` reports a database it cannot reach as "cannot start" (2); `grants` as a failure (1)
    one_line(proc, 2 if command == "run" else status, needle)
    assert PASSWORD not in proc.stderr + proc.stdout


async def test_grants_list_on_a_schema_that_does_not_exist_creates_nothing(pg_dsn: str) -> None:
    schema = f"t_missing_{uuid.uuid4().hex[:12]}"
    proc = await broker_cli("grants", "list", env={"BROKER_DB_URL": pg_dsn, "BROKER_DB_SCHEMA": schema})
    one_line(proc, 1, f'schema "{schema}" does not exist', "BROKER_DB_SCHEMA", "nothing was created")
    connection = await asyncpg.connect(pg_dsn)
    try:
        assert await connection.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema) == 0
    finally:
        await connection.close()


async def test_grants_commands_on_an_empty_schema_create_no_table(pg_dsn: str) -> None:
    schema = f"t_empty_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(pg_dsn)
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
        for argv in (("grants", "list"), ("grants", "revoke", "grn_x")):
            proc = await broker_cli(*argv, env={"BROKER_DB_URL": pg_dsn, "BROKER_DB_SCHEMA": schema})
            one_line(proc, 1, "no broker tables", schema)
        tables = await connection.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = $1", schema)
        assert tables == 0
    finally:
        await connection.close()
        await _drop_schema(pg_dsn, schema)


async def test_grants_list_on_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "not-yet" / "broker.sqlite3"
    proc = await broker_cli("grants", "list", env={"BROKER_DB_URL": f"sqlite:///{path}"})
    one_line(proc, 1, f"no broker database at {path}", "nothing was created")
    assert not path.parent.exists()


async def test_grants_list_on_a_database_the_broker_has_not_migrated_says_to_start_it(
    db_url: tuple[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, schema = db_url
    await (await open_database_at(3, db_url, monkeypatch)).close()  # a database of a release with 3 migrations
    proc = await broker_cli("grants", "list", env=db_env(db_url))
    one_line(proc, 1, "schema version 3", f"needs {migrations.LATEST_SCHEMA_VERSION}", "start the broker once")
    reopened = open_database(url, schema=schema)  # the command migrated nothing either
    with pytest.raises(StorageError, match="schema version 3"):
        await reopened.open(migrate=False)


@pytest.mark.parametrize("problem", ["under_a_file", "a_directory", "not_a_database"])
async def test_a_bad_sqlite_path_is_named_with_its_problem_not_as_cannot_listen(tmp_path: Path, problem: str) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    (tmp_path / "junk.db").write_text("this is not a database, but a long enough text file to be read" * 20)
    path, reason = {
        "under_a_file": (tmp_path / "afile" / "broker.sqlite3", f"{tmp_path / 'afile'} is not a directory"),
        "a_directory": (tmp_path / "adir", "it is a directory"),
        "not_a_database": (tmp_path / "junk.db", "not a database"),
    }[problem]
    env = {"BROKER_DB_URL": f"sqlite:///{path}", "BROKER_TEE_JWT_PUBLIC_KEY": str(TEE_PUBLIC_KEY_PATH)}
    proc = await broker_cli("run", "--port", "0", env=env)
    line = one_line(proc, 2, f"cannot open the SQLite database {path}", reason, "BROKER_DB_URL")
    assert "listen" not in line

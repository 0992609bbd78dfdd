"""What an operator sees (`broker/observability.py`): the start and stop lines and the JSON-lines
access log of `agentkeys-broker run` as a separate process on SQLite and PostgreSQL, the log
variables, and `GET /metrics` in the Prometheus text format."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from broker_client import GRANT_LIST, LOGIN, assert_refused, call, evm_account, login, login_body
from broker_process import BrokerProcess
from conftest import TEE_PUBLIC_KEY_PATH, BrokerFactory, mint_tee_token
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.parser import text_string_to_metric_families
from raw_http import exchange
from test_broker_request_layer import SECRET_TOKEN

from agentkeys_kit.broker.observability import database_description, version

MASTER = "0x" + "f6" * 20
PASSWORD = "s3cret-pw"  # trust auth ignores it; it must never be printed


def _with_password(db: tuple[str, str | None]) -> tuple[str, str | None]:
    url, schema = db
    if schema is not None:  # PostgreSQL
        url = url.replace("postgres@", f"postgres:{PASSWORD}@")
    return url, schema


async def _operator_session(url: str, key: rsa.RSAPrivateKey) -> None:
    """What an operator's broker sees first: a login, a refusal, a malformed request, a 404, a scrape."""
    async with aiohttp.ClientSession() as http:
        token = mint_tee_token(key, evm_account(MASTER))
        async with http.post(url + LOGIN, json=login_body("evm", MASTER), headers={"Authorization": f"Bearer {token}"}):
            pass
        async with http.get(url + GRANT_LIST, headers={"Authorization": f"Bearer {SECRET_TOKEN}"}):
            pass
        await exchange(url, f"GET /x HTTP/1.1 {SECRET_TOKEN}\r\nAuthorization: Bearer {SECRET_TOKEN}\r\n\r\n".encode())
        async with http.get(url + "nowhere"):
            pass
        async with http.get(url + "metrics") as response:
            assert response.status == 200


def _by_message(lines: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    found = [line for line in lines if line["msg"].startswith(prefix)]
    assert len(found) == 1, (prefix, [line["msg"] for line in lines])
    return found[0]


def test_agentkeys_broker_run_says_what_it_runs_logs_each_request_and_its_stop(
    db_url: tuple[str, str | None], tmp_path: Path, tee_key: rsa.RSAPrivateKey
) -> None:
    broker = BrokerProcess(_with_password(db_url), tmp_path).start()
    try:
        asyncio.run(_operator_session(broker.url, tee_key))
    finally:
        code = broker.stop()
    assert code == 0
    assert f"agentkeys-broker listening on {broker.url}" in broker.stdout()
    stderr = broker.stderr()
    assert PASSWORD not in stderr and SECRET_TOKEN not in stderr and "c2VjcmV0" not in stderr
    lines = broker.log_lines()
    messages = [line["msg"] for line in lines]
    assert messages[0] == f"agentkeys-broker {version()} starting"

    database = _by_message(lines, "database sqlite" if db_url[1] is None else "database postgresql")
    if db_url[1] is None:
        assert database["database"] == "sqlite" and database["path"].endswith("broker.sqlite3")
    else:
        assert database["database"] == "postgresql" and database["schema"] == db_url[1]
        assert database["url"] == db_url[0]  # the password stripped
    assert _by_message(lines, "database schema version")["schema_version"] >= 3
    public = serialization.load_pem_public_key(TEE_PUBLIC_KEY_PATH.read_bytes())
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    assert _by_message(lines, "TEE key")["tee_key_sha256"] == hashlib.sha256(der).hexdigest()
    assert _by_message(lines, "accepted client ids")["accepted_client_ids"] == ["agentkeys"]
    assert _by_message(lines, "credential-less callbacks")["networks"] == ["127.0.0.0/8", "::1/128"]
    assert _by_message(lines, "GET /metrics served to")["networks"] == ["127.0.0.0/8", "::1/128"]
    assert _by_message(lines, "limits:")["max_connections"] == 1000
    assert _by_message(lines, "listening on")["port"] == broker.port

    access = [line for line in lines if line["logger"] == "agentkeys_kit.broker.access"]
    assert [(line["method"], line["route"], line["status"]) for line in access] == [
        ("POST", "/" + LOGIN, 200),
        ("GET", "/" + GRANT_LIST, 401),
        ("-", "malformed", 400),
        ("GET", "unmatched", 404),
        ("GET", "/metrics", 200),
    ]
    assert access[0]["omni_account"] == evm_account(MASTER) and "refusal" not in access[0]
    assert access[1]["refusal"] == "invalid_token" and "omni_account" not in access[1]
    assert access[2]["refusal"] == "malformed_request" and access[2]["path"] == "-"
    assert all(isinstance(line["duration_ms"], float) and line["remote"] == "127.0.0.1" for line in access)
    assert messages[-2].startswith("stopping on SIGTERM") and messages[-1].startswith("stopped: up ")


def test_log_level_and_format_come_from_variables_and_flags(tmp_path: Path, tee_key: rsa.RSAPrivateKey) -> None:
    db = (f"sqlite:///{tmp_path / 'broker.sqlite3'}", None)
    quiet = BrokerProcess(db, tmp_path, env={"BROKER_LOG_LEVEL": "WARNING", "BROKER_LOG_FORMAT": "text"}).start()
    asyncio.run(_operator_session(quiet.url, tee_key))
    assert quiet.stop() == 0
    assert quiet.stderr() == ""  # no access lines at WARNING, and nothing went wrong
    text = BrokerProcess(db, tmp_path, env={"BROKER_LOG_FORMAT": "text"}).start()
    asyncio.run(_operator_session(text.url, tee_key))
    assert text.stop() == 0
    lines = text.stderr().splitlines()
    assert any(f"INFO agentkeys_kit.broker: agentkeys-broker {version()} starting" in line for line in lines)
    assert any(" status=401 " in line and 'refusal="invalid_token"' in line for line in lines)
    assert not any(line.startswith("{") for line in lines)
    flagged = BrokerProcess(db, tmp_path, env={"BROKER_LOG_FORMAT": "text"}, flags=["--log-format", "json"]).start()
    asyncio.run(_operator_session(flagged.url, tee_key))
    assert flagged.stop() == 0
    assert flagged.log_lines()[0]["msg"] == f"agentkeys-broker {version()} starting"  # the flag won


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BROKER_LOG_FORMAT", "xml"),
        ("BROKER_LOG_LEVEL", "LOUD"),
        ("BROKER_MAX_CONNECTIONS", "0"),
        ("BROKER_BODY_TIMEOUT_SECONDS", "nan"),
        ("BROKER_METRICS_ALLOW_CIDRS", "10.0.0.0/33"),
    ],
)
def test_a_bad_limit_or_log_variable_is_one_line_naming_it(tmp_path: Path, variable: str, value: str) -> None:
    import subprocess

    from broker_process import BROKER_COMMAND

    env = {"BROKER_TEE_JWT_PUBLIC_KEY": str(TEE_PUBLIC_KEY_PATH), variable: value, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([BROKER_COMMAND, "run"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and variable in done.stderr, done.stderr


def test_the_database_description_never_holds_a_password() -> None:
    described = database_description("postgresql://u:pw@db.example:6543/broker?password=pw2&sslmode=require", "b1")
    assert described == {"database": "postgresql", "url": "postgresql://u@db.example:6543/broker", "schema": "b1"}
    assert database_description("postgresql://u:pw@[::1", None)["url"] == "(unparseable)"


# --------------------------------------------------------------------------- /metrics


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_requests_refusals_latency_and_the_pool(
    make_broker: BrokerFactory, tee_key: rsa.RSAPrivateKey, http: aiohttp.ClientSession
) -> None:
    broker = await make_broker()
    await login(http, broker, tee_key, MASTER)
    assert_refused(await call(http, broker, GRANT_LIST, method="GET", token="garbage"), 401, "invalid_token")
    await exchange(broker.url, b"GET / HTTP/1.1 junk\r\n\r\n")
    async with http.get(broker.url + "metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        samples = _samples(await response.text())
    openmetrics = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with http.get(broker.url + "metrics", headers=openmetrics) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await response.text()).endswith("# EOF\n")
    login_route = (("method", "POST"), ("route", "/" + LOGIN), ("status", "200"))
    assert samples[("agentkeys_broker_requests_total", login_route)] == 1
    assert samples[("agentkeys_broker_refusals_total", (("rule", "invalid_token"),))] == 1
    assert samples[("agentkeys_broker_refusals_total", (("rule", "malformed_request"),))] == 1
    assert samples[("agentkeys_broker_request_duration_seconds_count", (("route", "/" + LOGIN),))] == 1
    assert samples[("agentkeys_broker_request_duration_seconds_bucket", (("le", "+Inf"), ("route", "/" + LOGIN)))] == 1
    dialect = broker.state.db.dialect
    assert samples[("agentkeys_broker_info", (("database", dialect), ("version", version())))] == 1
    assert samples[("agentkeys_broker_db_pool_size", ())] >= 1
    assert samples[("agentkeys_broker_db_pool_max", ())] == (8 if dialect == "postgresql" else 1)
    assert samples[("agentkeys_broker_connections_open", ())] >= 1
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert ("agentkeys_broker_database_errors_total", ()) in samples


async def test_metrics_are_served_only_to_allowed_networks(
    make_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    elsewhere = await make_broker(env={"BROKER_METRICS_ALLOW_CIDRS": "10.0.0.0/8"})
    assert_refused(await call(http, elsewhere, "metrics", method="GET"), 403, "network_refused")
    local = await make_broker()
    async with http.get(local.url + "metrics", headers={"X-Forwarded-For": "203.0.113.7"}) as response:
        assert response.status == 403
        assert json.loads(await response.text())["data"]["error"] == "network_refused"

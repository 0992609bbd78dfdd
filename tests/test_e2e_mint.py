"""End to end as a user would: ``agentkeys init wallet`` against the simulator (``heima`` backend,
the agentkeys-patch profile plays the worker), then an AWS tool (boto3) whose profile says
``credential_process = agentkeys creds aws`` calls ``sts:GetCallerIdentity`` on moto's STS with the
credentials the broker minted; ``agentkeys-broker audit`` shows the login and the mint, chain
intact. The CLI runs as a subprocess with HOME, XDG dirs and the keychain in tmp_path."""

from __future__ import annotations

import asyncio
import json
import shlex
from pathlib import Path

import aiohttp
import boto3
import jwt
import pytest
from conftest import BrokerFactory, SimFactory
from cryptography.hazmat.primitives.asymmetric import rsa
from mint_support import ISSUER, MotoSts, aws_env
from test_broker_operator import broker_cli, db_env
from test_cli_login import AGENTKEYS, User, heima_pair

from agentkeys_kit.client.mint import credential_process
from fixtures.wallets import EVM_ALICE_KEY, EVM_BOB_KEY, evm_user_id_value


async def test_init_wallet_then_an_aws_tool_uses_credential_process(
    make_sim: SimFactory,
    make_broker: BrokerFactory,
    tee_key: rsa.RSAPrivateKey,
    http: aiohttp.ClientSession,
    sts: MotoSts,
    db_url: tuple[str, str | None],
    tmp_path: Path,
) -> None:
    async def broker_with_aws(env: dict[str, str] | None = None, **kwargs: object) -> object:
        return await make_broker(env={**(env or {}), **aws_env(sts)}, **kwargs)

    _, broker = await heima_pair(make_sim, broker_with_aws, tee_key)  # type: ignore[arg-type]
    wallet = evm_user_id_value(EVM_ALICE_KEY)
    user = User(tmp_path / "home", keychain=True)
    init = await user.run(
        "--broker-url", broker.url, "init", "wallet", "--private-key-file", str(user.key_file(EVM_ALICE_KEY))
    )
    assert init.status == 0, init

    jwt_run = await user.run("--broker-url", broker.url, "mint", "oidc-jwt")
    assert jwt_run.status == 0, jwt_run
    minted = json.loads(jwt_run.stdout)
    claims = jwt.decode(minted["jwt"], options={"verify_signature": False})
    assert claims["iss"] == ISSUER and claims["sub"] == f"agentkeys:agent:{wallet}" and minted["wallet"] == wallet

    # ~/.aws/config of the user: the profile runs `agentkeys creds aws` in the user's environment
    command = ["env", *(f"{key}={value}" for key, value in user.env.items()), AGENTKEYS]
    command += ["--broker-url", broker.url, "creds", "aws"]
    aws_config = tmp_path / "aws-config"
    aws_config.write_text(f"[profile agentkeys]\ncredential_process = {shlex.join(command)}\nregion = us-east-1\n")

    def get_caller_identity() -> dict[str, str]:
        import botocore.session

        session = botocore.session.Session(profile="agentkeys")
        session.set_config_variable("config_file", str(aws_config))
        session.set_config_variable("credentials_file", str(tmp_path / "no-aws-credentials"))
        client = boto3.Session(botocore_session=session).client("sts", endpoint_url=sts.url)
        identity: dict[str, str] = client.get_caller_identity()
        return identity

    identity = await asyncio.to_thread(get_caller_identity)
    [assumed] = [role for role in sts.assumed_roles() if role.session_name.startswith(f"agentkeys-{wallet[:40]}")][-1:]
    assert identity["Arn"] == f"arn:aws:sts::123456789012:assumed-role/agentkeys-data-role/{assumed.session_name}"

    # the credential_process document itself
    document = await user.run("--broker-url", broker.url, "creds", "aws")
    assert document.status == 0, document
    parsed = json.loads(document.stdout)
    assert set(parsed) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert parsed["Version"] == 1 and parsed["Expiration"].endswith("Z")

    export = await broker_cli("audit", "export", env=db_env(db_url))
    rows = [json.loads(line) for line in export.stdout.splitlines()]
    assert [(row["event"], row["outcome"]) for row in rows] == [
        ("login", "ok"),
        ("mint_oidc_jwt", "ok"),
        ("mint_aws_creds", "requested"),
        ("mint_aws_creds", "ok"),
        ("mint_aws_creds", "requested"),
        ("mint_aws_creds", "ok"),
    ]
    assert {row["requester_wallet"] for row in rows} == {wallet}
    verify = await broker_cli("audit", "verify", env=db_env(db_url))
    assert verify.returncode == 0 and json.loads(verify.stdout)["intact"] is True


async def test_mint_commands_say_what_is_wrong_in_one_line(make_broker: BrokerFactory, tmp_path: Path) -> None:
    broker = await make_broker()
    user = User(tmp_path / "home", keychain=False)
    ran = await user.run("--broker-url", broker.url, "creds", "aws")
    assert ran.status == 1 and ran.stdout == "" and ran.stderr.count("\n") == 1 and "not logged in" in ran.stderr


def test_credential_process_document() -> None:
    answer = {"access_key_id": "ASIA1", "secret_access_key": "s", "session_token": "t", "expiration": 1_800_000_000}
    assert credential_process(answer) == {
        "Version": 1,
        "AccessKeyId": "ASIA1",
        "SecretAccessKey": "s",
        "SessionToken": "t",
        "Expiration": "2027-01-15T08:00:00Z",
    }


async def test_a_master_grants_and_an_agent_mints_within_the_grant_with_the_cli(
    make_broker: BrokerFactory, sts: MotoSts, tmp_path: Path
) -> None:
    """Both as users would, each in a home of its own: the master logs in and runs ``agentkeys
    grant create``; the agent logs in with its own wallet and mints with ``--grant`` and its key
    (the signed body), until the grant's uses are spent; then the master lists and revokes it."""
    broker = await make_broker(env={"BROKER_LOGIN_BACKEND": "local", **aws_env(sts)})
    master, agent = User(tmp_path / "master", keychain=False), User(tmp_path / "agent", keychain=False)
    master_wallet, agent_wallet = evm_user_id_value(EVM_ALICE_KEY), evm_user_id_value(EVM_BOB_KEY)
    for user, key in ((master, EVM_ALICE_KEY), (agent, EVM_BOB_KEY)):
        ran = await user.run(
            "--broker-url", broker.url, "init", "wallet", "--private-key-file", str(user.key_file(key))
        )
        assert ran.status == 0, ran
    agent_key = ["--private-key-file", str(agent.home / "wallet.key")]

    created = await master.run(
        "--broker-url", broker.url, "grant", "create", "--agent", agent_wallet, "--scope", "s3/reports",
        "--expires-in", "1h", "--max-uses", "2",
    )  # fmt: skip
    assert created.status == 0, created
    grant = json.loads(created.stdout)
    assert grant["status"] == "active" and grant["agent_wallet"] == agent_wallet and grant["max_uses"] == 2
    within = ["--grant", grant["grant_id"], "--service", "s3", *agent_key]

    minted = await agent.run("--broker-url", broker.url, "mint", "oidc-jwt", *within, "--scope-path", "reports/q1")
    assert minted.status == 0, minted
    claims = jwt.decode(json.loads(minted.stdout)["jwt"], options={"verify_signature": False})
    assert claims["sub"] == f"agentkeys:agent:{agent_wallet}" and claims["agentkeys_grant_id"] == grant["grant_id"]
    assert claims["agentkeys_user_wallet"] == master_wallet

    outside = await agent.run("--broker-url", broker.url, "mint", "oidc-jwt", *within, "--scope-path", "payroll")
    assert outside.status == 1 and outside.stdout == "" and "out_of_scope" in outside.stderr
    # the master's key with the agent's bearer: the signer is not the logged-in wallet
    foreign = ["--grant", grant["grant_id"], "--service", "s3", "--private-key-file", str(master.home / "wallet.key")]
    signed_by_master = await agent.run("--broker-url", broker.url, "mint", "oidc-jwt", *foreign)
    assert signed_by_master.status == 1 and signed_by_master.stdout == ""

    document = await agent.run("--broker-url", broker.url, "creds", "aws", *within, "--scope-path", "reports")
    assert document.status == 0, document
    assert json.loads(document.stdout)["Version"] == 1
    spent = await agent.run("--broker-url", broker.url, "creds", "aws", *within)
    assert spent.status == 1 and spent.stdout == "" and "exhausted" in spent.stderr

    listed = await master.run("--broker-url", broker.url, "grant", "list")
    assert [(g["grant_id"], g["uses"], g["status"]) for g in json.loads(listed.stdout)] == [
        (grant["grant_id"], 2, "exhausted")
    ]
    revoked = await master.run("--broker-url", broker.url, "grant", "revoke", grant["grant_id"])
    assert revoked.status == 0 and json.loads(revoked.stdout)["status"] == "revoked"
    # the agent cannot revoke or see the master's grants
    assert json.loads((await agent.run("--broker-url", broker.url, "grant", "list")).stdout) == []
    not_theirs = await agent.run("--broker-url", broker.url, "grant", "revoke", grant["grant_id"])
    assert not_theirs.status == 1 and not_theirs.stderr.count("\n") == 1 and "(unknown_grant)" in not_theirs.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["mint", "oidc-jwt", "--grant", "g_1", "--service", "s3"], "--grant needs the agent wallet's key"),
        (["mint", "oidc-jwt", "--grant", "g_1", "--private-key-file", "k"], "--grant needs --service"),
        (["creds", "aws", "--private-key-file", "k"], "add --grant GRANT_ID"),
        (["grant", "create", "--agent", "0x" + "11" * 20, "--scope", "s3", "--expires-in", "7 days"], "duration"),
    ],
)
async def test_agent_and_grant_usage_mistakes_are_one_line_and_exit_2(
    make_broker: BrokerFactory, tmp_path: Path, args: list[str], says: str
) -> None:
    broker = await make_broker(env={"BROKER_LOGIN_BACKEND": "local"})
    user = User(tmp_path / "home", keychain=False)
    ran = await user.run(
        "--broker-url", broker.url, "init", "wallet", "--private-key-file", str(user.key_file(EVM_BOB_KEY))
    )
    assert ran.status == 0, ran
    ran = await user.run("--broker-url", broker.url, *args)
    assert ran.status == 2 and ran.stdout == "" and says in ran.stderr, ran
    assert "Traceback" not in ran.stderr

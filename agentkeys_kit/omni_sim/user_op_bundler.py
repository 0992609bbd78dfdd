"""Where `omni_submitUserOpWithAuth` ends in the simulator: the TEE signer and a simulated bundler.

The worker's `submit_user_ops` (`rpc-server/src/utils/user_op.rs@3f4c9bad`) converts each
operation, refuses a signed one that names a paymaster and an unsigned one whose paymaster is not
whitelisted, has the pumpx signer sign each unsigned operation's userOpHash with the wallet
``(OmniAccount, wallet_index)`` (signature ``0x01 ‖ r ‖ s ‖ v`` with v 27/28), simulates
``handleOps`` and sends it to the EntryPoint of the chain. The simulator reproduces every check
up to the chain and then stops: the batch is recorded (`/_sim/user-operations`) and the reply
carries a deterministic transaction hash, keccak256 of the chain id, the EntryPoint and the
signed operations' hashes and signatures.

Simulated, not the worker's: the signer's keys (derived from the JWT key file, so one keystore
always gives the same wallets), on-chain simulation (always passes) and the ERC-20 paymaster's
Binance exchange rate (paymaster data is kept as sent).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from typing import Any

from coincurve import PrivateKey
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from eth_hash.auto import keccak

from agentkeys_kit.protocol.errors import ErrorCatalog, RpcError, invalid_chain_id
from agentkeys_kit.protocol.user_operation import (
    PackedUserOperation,
    UserOperationError,
    checksum_address,
    to_packed_user_operation,
    user_operation_hash,
)

#: Chains with an EntryPoint client in the worker (`bin/src/main.rs`, index id 65752955033): the
#: testnets are configured by default because their URL defaults are not empty.
ENTRY_POINT_CHAINS = frozenset({1, 31337, 56, 97, 42161, 421614, 999, 998, 8453})

#: `WHITELISTED_PAYMASTER_ADDRESSES` (`utils/paymaster.rs@2990feaa`).
WHITELISTED_PAYMASTERS = frozenset(
    bytes.fromhex(address[2:].lower())
    for address in (
        "0x6255B9F4A4E80BC20eE389fD35DE9d2c029D5912",
        "0xD4dCB31763CBA7295bA4023E9411CB6db607DE07",
        "0xA8535e013236E04FAD5dc03eCc4c05A464c01f38",
    )
)


@dataclass(frozen=True, slots=True)
class SubmittedBatch:
    """One simulated `handleOps`, as `/_sim/user-operations` shows it."""

    transaction_hash: str
    chain_id: int
    wallet_index: int
    omni_account: str
    entry_point: str
    client_id: str
    client_auth: str
    user_operations: list[dict[str, Any]]
    user_operation_hashes: list[str]
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "transaction_hash": self.transaction_hash,
            "chain_id": self.chain_id,
            "wallet_index": self.wallet_index,
            "omni_account": self.omni_account,
            "entry_point": self.entry_point,
            "client_id": self.client_id,
            "client_auth": self.client_auth,
            "user_operations": self.user_operations,
            "user_operation_hashes": self.user_operation_hashes,
            "at": self.at,
        }


class Bundler:
    """The simulated pumpx signer and EntryPoint bundler."""

    def __init__(self, seed: bytes, entry_point: bytes) -> None:
        self._seed = seed
        self.entry_point = entry_point
        self.batches: list[SubmittedBatch] = []

    @classmethod
    def for_key(cls, jwt_key: rsa.RSAPrivateKey, entry_point: bytes) -> Bundler:
        der = jwt_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(hashlib.sha256(b"omni-sim signer\0" + der).digest(), entry_point)

    # ------------------------------------------------------------------ the signer

    def wallet_key(self, omni_account: bytes, wallet_index: int) -> PrivateKey:
        """The simulated `request_wallet(ChainType::Evm, wallet_index, account)` key."""
        secret = hashlib.sha256(self._seed + omni_account + wallet_index.to_bytes(4, "big")).digest()
        return PrivateKey(secret)

    def wallet_address(self, omni_account: bytes, wallet_index: int) -> str:
        """`pubkey_to_address(ChainType::Evm, …)`, EIP-55 (compared case-insensitively anyway)."""
        public = self.wallet_key(omni_account, wallet_index).public_key.format(compressed=False)[1:]
        return checksum_address(keccak(public)[-20:])

    def _sign(self, digest: bytes, omni_account: bytes, wallet_index: int) -> bytes:
        # `substrate_to_ethereum_signature` (v 0/1 → 27/28), then the 0x01 "Root" signer prefix.
        signature = self.wallet_key(omni_account, wallet_index).sign_recoverable(digest, hasher=None)
        return b"\x01" + signature[:64] + bytes([signature[64] + 27])

    # ------------------------------------------------------------------ submit_user_ops

    def submit(
        self,
        errors: ErrorCatalog,
        operations: list[dict[str, Any]],
        chain_id: int,
        wallet_index: int,
        omni_account: bytes,
        *,
        client_id: str,
        client_auth: str,
    ) -> str:
        if chain_id not in ENTRY_POINT_CHAINS:
            raise invalid_chain_id(chain_id)
        signed: list[PackedUserOperation] = []
        for index, operation in enumerate(operations):
            try:
                packed = to_packed_user_operation(operation)
            except UserOperationError as exc:
                raise errors.invalid_user_op(f"Failed to convert UserOp[{index}]: {exc}") from None
            signed.append(self._prepare(errors, packed, index, chain_id, wallet_index, omni_account))
        hashes = [user_operation_hash(op, self.entry_point, chain_id) for op in signed]
        material = chain_id.to_bytes(32, "big") + self.entry_point
        material += b"".join(h + keccak(op.signature) for h, op in zip(hashes, signed, strict=True))
        transaction_hash = "0x" + keccak(b"omni-sim handleOps\0" + material).hex()
        self.batches.append(
            SubmittedBatch(
                transaction_hash,
                chain_id,
                wallet_index,
                "0x" + omni_account.hex(),
                checksum_address(self.entry_point),
                client_id,
                client_auth,
                [op.to_json() for op in signed],
                ["0x" + h.hex() for h in hashes],
            )
        )
        return transaction_hash

    def _prepare(
        self,
        errors: ErrorCatalog,
        op: PackedUserOperation,
        index: int,
        chain_id: int,
        wallet_index: int,
        omni_account: bytes,
    ) -> PackedUserOperation:
        if op.signature:
            if op.paymaster_and_data:
                raise errors.invalid_user_op(f"UserOp[{index}] is signed but specifies a paymaster")
            return op
        paymaster = op.paymaster_and_data[:20]
        if len(op.paymaster_and_data) >= 20 and paymaster not in WHITELISTED_PAYMASTERS:
            raise errors.invalid_user_op(
                f"UserOp[{index}] uses non-whitelisted paymaster {checksum_address(paymaster)}"
            )
        digest = user_operation_hash(op, self.entry_point, chain_id)
        return replace(op, signature=self._sign(digest, omni_account, wallet_index))


def no_entry_point(chain_id: int) -> RpcError:
    """`entry_point_clients.get(chain_id)` is None: the worker answers `invalid_chain_id`."""
    return invalid_chain_id(chain_id)

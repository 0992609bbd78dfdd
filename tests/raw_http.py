"""Raw HTTP/1.1 over a real socket, for requests no HTTP client would send (malformed, slow,
non-ASCII headers), and signing arbitrary JWS bytes with the TEE test key."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


class RawReply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON where the body is JSON, else the raw bytes
    raw: bytes


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def parse_reply(raw: bytes) -> RawReply:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = body
    return RawReply(status, headers, parsed, raw)


async def exchange(url: str, request: bytes, *, within: float = 10.0) -> RawReply:
    """Send `request` on a new connection and read until the server closes it (or `within`)."""
    reader, writer = await asyncio.open_connection(*address(url))
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(read_reply(reader), within)
    finally:
        writer.close()
    return parse_reply(raw)


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One HTTP reply: the head, then Content-Length bytes (or until EOF)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = None
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length is not None else await reader.read()
    return head + body


def request_bytes(method: str, path: str, *, headers: dict[str, str | bytes] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: broker", b"Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes) else value.encode()))
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign_jws(key: rsa.RSAPrivateKey, header_json: str, claims_json: str) -> str:
    """RS256 over exactly these header and claims texts (repeated keys, odd numbers and all)."""
    signing_input = f"{b64url(header_json.encode())}.{b64url(claims_json.encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"

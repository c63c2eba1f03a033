"""The pinned one-liner: what `newkey` prints, and the two plain HTTPS GETs of the agent port that it uses.

    curl -fsSk --pinnedpubkey 'sha256//PIN' https://HOST:PORT/install | sudo sh -s -- SECRET

curl checks PIN (the base64 SHA-256 of the server's DER SubjectPublicKeyInfo) right after the TLS handshake and
aborts before sending a byte when it does not match, so neither the request nor the secret (which stays on the
user's command line, never in what the server sends) reaches anyone else. `/install` answers a POSIX sh script
(mbot/agent_install.sh with this server's address, port, certificate fingerprint and pin filled in), which fetches
`/agent.py` the same pinned way.

Pure (tests/test_layering.py): RequestSniffer reads the head of the first request on a connection (h11) and says
whether it is one of those GETs or something for trio-websocket; `answer` renders the response bytes.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import ssl
from dataclasses import dataclass, replace
from pathlib import Path

import h11

from .i18n import _

# The agent is one file kept beside the package: agent/mbot_agent.py in a checkout, /app/agent in the image
# (Dockerfile). An installed wheel has no copy: then /agent.py answers 404 and the bot says where to get it.
AGENT_FILE = Path(__file__).parent.parent / "agent" / "mbot_agent.py"
SCRIPT_FILE = Path(__file__).parent / "agent_install.sh"

MAX_HEAD = 8192  # bytes of request head read before deciding; more is answered 431 and closed
SCRIPT_PATH, AGENT_PATH = "/install", "/agent.py"
_CONTENT_TYPES = {SCRIPT_PATH: "text/x-shellscript; charset=utf-8", AGENT_PATH: "text/x-python; charset=utf-8"}
_REASONS = {200: "OK", 404: "Not Found", 431: "Request Header Fields Too Large"}

_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_PIN = re.compile(r"[A-Za-z0-9+/]{43}=")


def is_host(text: str) -> bool:
    """A host name or an IP address (no port, no brackets): safe to put in a URL, a shell line and .env."""
    if not text or len(text) > 253:
        return False
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    return all(_LABEL.fullmatch(label) for label in text.removesuffix(".").split("."))


def url_host(host: str) -> str:
    """`host` as it goes in a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class Endpoint:
    """What an agent needs to reach this server; `host_guessed`: MBOT_PUBLIC_HOST was unset (config.py)."""

    host: str
    port: int
    fingerprint: str  # lowercase hex SHA-256 of the DER certificate (AGENT_FINGERPRINT)
    pin: str  # base64 SHA-256 of the DER SubjectPublicKeyInfo (curl --pinnedpubkey)
    host_guessed: bool = False


_AGENT_VERSION = re.compile(rb'^__version__ = "([0-9][0-9A-Za-z.+-]{0,30})"[ \t]*(?:#.*)?$', re.M)


def agent_version(source: bytes | None) -> str | None:
    """The `__version__` of an agent file: what this server ships, and so what it recommends."""
    found = _AGENT_VERSION.search(source) if source else None
    return found.group(1).decode() if found else None


def _numbers(version: str) -> tuple[int, ...] | None:
    parts = re.match(r"(\d+(?:\.\d+)*)", version)
    return tuple(int(p) for p in parts.group(1).split(".")) if parts else None


def older(version: object, recommended: str | None) -> bool:
    """Whether an agent that says `version` in its hello is older than `recommended`; anything unparsable (a
    test agent, a fork) is not called old."""
    if not isinstance(version, str) or recommended is None:
        return False
    mine, theirs = _numbers(version), _numbers(recommended)
    return mine is not None and theirs is not None and mine < theirs


def one_liner(endpoint: Endpoint, secret: str) -> str:
    return (f"curl -fsSk --pinnedpubkey 'sha256//{endpoint.pin}' "
            f"https://{url_host(endpoint.host)}:{endpoint.port}/install | sudo sh -s -- {secret}")


def guessed_note(endpoint: Endpoint) -> str:
    """What to say when the address was guessed (empty when it was configured)."""
    if not endpoint.host_guessed:
        return ""
    return _("{host} is a guess (MBOT_PUBLIC_HOST is not set; it is the address of this machine's default route). If "
             "the host reaches this server by another name or address, use that in the line above, and set "
             "MBOT_PUBLIC_HOST to it so that new keys show it.", host=endpoint.host)


# --- the certificate's public key ------------------------------------------------------------------------------


def _element(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end) of the DER element at `pos`."""
    if pos + 2 > len(der):
        raise ValueError("truncated DER")
    tag, length, start = der[pos], der[pos + 1], pos + 2
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 4:
            raise ValueError("unsupported DER length")
        length, start = int.from_bytes(der[start:start + size], "big"), start + size
    end = start + length
    if end > len(der):
        raise ValueError("truncated DER")
    return tag, start, end


def spki_pin(cert_der: bytes) -> str:
    """curl's --pinnedpubkey value for a certificate: base64(SHA-256(SubjectPublicKeyInfo, DER)).

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
    validity, subject, subjectPublicKeyInfo, ... }, ... } (RFC 5280): walk to the seventh field."""
    tag, start, _ = _element(cert_der, 0)
    if tag != 0x30:
        raise ValueError("not a DER certificate")
    tag, pos, _ = _element(cert_der, start)
    if tag != 0x30:
        raise ValueError("not a DER certificate")
    tag, _, end = _element(cert_der, pos)
    if tag == 0xA0:  # the explicit version
        pos = end
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        _, _, pos = _element(cert_der, pos)
    tag, _, end = _element(cert_der, pos)
    if tag != 0x30:
        raise ValueError("no SubjectPublicKeyInfo where RFC 5280 puts it")
    return base64.b64encode(hashlib.sha256(cert_der[pos:end]).digest()).decode()


def pin_of_pem(pem: str) -> str:
    return spki_pin(ssl.PEM_cert_to_DER_cert(pem))


# --- the script -------------------------------------------------------------------------------------------------


def render_script(template: str, endpoint: Endpoint) -> str:
    """The install script for `endpoint`. Every value is checked against a character set that needs no quoting in
    sh (they go between single quotes anyway), so no configuration or request can put code into the script."""
    if not (is_host(endpoint.host) and 0 < endpoint.port < 65536 and _FINGERPRINT.fullmatch(endpoint.fingerprint)
            and _PIN.fullmatch(endpoint.pin)):
        raise ValueError(f"cannot put {endpoint!r} into the install script")
    values = {"@SERVER@": endpoint.host, "@URL_HOST@": url_host(endpoint.host), "@PORT@": str(endpoint.port),
              "@FINGERPRINT@": endpoint.fingerprint, "@PIN@": endpoint.pin}
    return re.sub("|".join(values), lambda match: values[match.group(0)], template)


def host_header(value: bytes | None, default: Endpoint) -> Endpoint:
    """The endpoint as the client reached it (its Host header: curl sends what the user typed, so an address
    corrected by hand in the one-liner reaches the agent's settings too); `default` when the header is missing or
    is not a plain host[:port]. Without a port the client used https' default, 443."""
    if not value:
        return default
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return default
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?|([^:\[\]]+)(?::(\d{1,5}))?", text)
    if match is None:
        return default
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4) or 443)
    if match.group(1) and not _is_ipv6(host):
        return default
    if not (is_host(host) and 0 < port < 65536):
        return default
    return replace(default, host=host, port=port)


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


# --- the first request on the agent port ------------------------------------------------------------------------


@dataclass(frozen=True)
class PassOn:
    """Not one of ours (a WebSocket upgrade, another path or method, something h11 cannot parse): hand the bytes
    read so far to trio-websocket, which answers as it always has."""


@dataclass(frozen=True)
class NeedMore:
    """The request head is not complete yet."""


@dataclass(frozen=True)
class Download:
    path: str  # SCRIPT_PATH or AGENT_PATH
    head_only: bool  # HEAD: the headers alone
    host: bytes | None  # the Host header


@dataclass(frozen=True)
class TooLarge:
    """No complete head within MAX_HEAD bytes: answered 431."""


Decision = PassOn | NeedMore | Download | TooLarge


class RequestSniffer:
    """Feed it what the client sends until it decides (h11 does the parsing; the bytes are kept by the caller)."""

    def __init__(self) -> None:
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._size = 0

    def receive(self, data: bytes) -> Decision:
        self._size += len(data)
        self._conn.receive_data(data)
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError:
            return TooLarge() if self._size > MAX_HEAD else PassOn()
        if event is h11.NEED_DATA:
            return TooLarge() if self._size > MAX_HEAD else NeedMore()
        if not isinstance(event, h11.Request):
            return PassOn()
        path = event.target.split(b"?", 1)[0].decode("ascii", "replace")
        headers = dict(event.headers)  # h11 lowercases the names
        if event.method not in (b"GET", b"HEAD") or path not in _CONTENT_TYPES or b"upgrade" in headers:
            return PassOn()
        return Download(path, event.method == b"HEAD", headers.get(b"host"))


@dataclass(frozen=True)
class Downloads:
    """What the two GETs serve: the script template and the agent file (None when this server has no copy)."""

    endpoint: Endpoint
    script_template: str | None
    agent: bytes | None


def answer(decision: Download | TooLarge, downloads: Downloads | None) -> tuple[int, bytes]:
    """(status, the whole HTTP/1.1 response) for a request RequestSniffer decided is ours."""
    if isinstance(decision, TooLarge):
        return _response(431, b"request head too large\n", "text/plain; charset=utf-8", head_only=False)
    body: bytes | None = None
    if downloads is not None and decision.path == AGENT_PATH:
        body = downloads.agent
    elif downloads is not None and downloads.script_template is not None:
        endpoint = host_header(decision.host, downloads.endpoint)
        body = render_script(downloads.script_template, endpoint).encode()
    if body is None:
        return _response(404, b"not on this server\n", "text/plain; charset=utf-8", head_only=decision.head_only)
    return _response(200, body, _CONTENT_TYPES[decision.path], head_only=decision.head_only)


def _response(status: int, body: bytes, content_type: str, *, head_only: bool) -> tuple[int, bytes]:
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
            "Connection: close\r\n\r\n").encode()
    return status, head if head_only else head + body

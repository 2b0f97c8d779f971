"""PKCE (RFC 7636) and redirect-URI matching: the two checks that keep an authorization
code in the hands of the client that asked for it.

- PKCE: ``S256`` only (``plain`` is refused: it protects nothing once the request leaks);
  the verifier is 43–128 characters of the unreserved set (§4.1); comparison in
  constant time.
- Redirect URIs: byte-for-byte equal to one registered URI (RFC 9700 §4.1.3) — no prefix,
  case, trailing-slash, query or userinfo leniency; registered URIs are https (or
  http on a loopback address, for native apps, RFC 8252 §7.3) without fragment or userinfo.
  The one exception both RFCs make: a URI registered on a loopback IP literal *without a
  port* (``https://127.0.0.1/cb``) matches that URI with any port (RFC 8252 §7.3: a local
  listener takes whatever port is free; RFC 9700 §4.1.3 allows the port to vary there).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from trustmesh.errors import UsageError

_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")  # base64url of a SHA-256, unpadded


def s256(verifier: str) -> str:
    """The S256 code challenge of ``verifier`` (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_challenge(challenge: str | None, method: str | None) -> str:
    """The challenge of an authorization request, or UsageError: one is required, and
    only with method S256."""
    if not challenge:
        raise UsageError("code_challenge is required (PKCE)")
    if method != "S256":
        raise UsageError("code_challenge_method must be S256")
    if not _CHALLENGE.fullmatch(challenge):
        raise UsageError("code_challenge is not a base64url SHA-256")
    return challenge


def verify_pkce(challenge: str, verifier: str | None) -> bool:
    """Whether ``verifier`` (token request) answers ``challenge`` (authorization request)."""
    if not verifier or not _VERIFIER.fullmatch(verifier):
        return False
    return hmac.compare_digest(s256(verifier), challenge)


def check_registered_redirect_uri(uri: str) -> str:
    """A redirect URI a client may register."""
    try:
        parts = urlsplit(uri)
        _ = parts.port  # an out-of-range or non-numeric port raises here
    except ValueError:
        raise UsageError(f"redirect URI {uri!r} is not a valid URL") from None
    if parts.fragment or "#" in uri:
        raise UsageError("a redirect URI has no fragment")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UsageError("a redirect URI has no userinfo")
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return uri
    if parts.scheme == "http" and _loopback(host):
        return uri
    raise UsageError("a redirect URI is https, or http on a loopback address")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: A loopback IP literal with a port: the parts around the port.
_LOOPBACK_PORT = re.compile(r"(https?://(?:127\.0\.0\.1|\[::1\])):([1-9][0-9]{0,4})(/[^#]*)?")
#: A loopback IP literal without one.
_LOOPBACK_BARE = re.compile(r"https?://(?:127\.0\.0\.1|\[::1\])(?:/[^#]*)?")


def _without_port(uri: str) -> str | None:
    """``uri`` with its loopback port taken out (None: not a loopback URI with a port)."""
    match = _LOOPBACK_PORT.fullmatch(uri)
    if match is None or int(match[2]) > 65535:
        return None
    return match[1] + (match[3] or "")


def redirect_uri_matches(requested: str | None, registered: Iterable[str]) -> bool:
    """Exact string comparison against the registered URIs (no normalization at all),
    but for the port of a loopback URI registered without one (RFC 8252 §7.3)."""
    if not requested:
        return False
    portless = _without_port(requested)
    for uri in registered:
        if hmac.compare_digest(requested.encode(), uri.encode()):
            return True
        bare = portless is not None and _LOOPBACK_BARE.fullmatch(uri) is not None
        if bare and hmac.compare_digest(str(portless).encode(), uri.encode()):
            return True
    return False

"""The gateway's two peers for ``benchmarks/gateway.py``: an HAProxy edge doing the
gateway's cheapest security work in C, and a bare Python proxy doing none of it.

- ``haproxy → mesh svc``: HAProxy 2.6 (foreground ``-db``, one thread, its own config in
  the run's temporary folder) with TLS in; on every request the bearer JWT taken with
  ``http_auth_bearer``, its JOSE ``alg`` required to be ES256, its ``kid`` matched to one
  of the provider's signing keys (exported from the provider's JWKS as PEM at run time)
  and its signature checked with ``jwt_verify``; then ``iss`` (the provider's discovery
  document), ``aud`` (the gateway's SPIFFE ID, the audience the gateway checks) and
  ``exp`` against ``date()``. Refusals answer 401 with ``WWW-Authenticate: Bearer``
  (RFC 6750 §3). Then a per-subject stick-table (``sub`` claim, ``http_req_rate(1s)``,
  the gateway's limit of 50,000 a second: it counts, never refuses at this rate) and
  mTLS to ``inventory`` with the ``edgeproxy`` SVID and the static access token, like
  ``nginx → mesh svc``, the upstream chain verified against the trust bundle,
  ``http-reuse always`` and keep-alive. HAProxy 2.6 checks DNS names only, not a SPIFFE
  ID (URI SAN): the chain is checked, the upstream's identity is not.
- ``python proxy → mesh svc``: uvicorn (one process, httptools, asyncio) running
  :func:`proxy_app` from this module: TLS in, an ``aiohttp`` client with the same SVID,
  static token and chain check out, keep-alive pool; no security checks at all. The floor
  for any proxy written in Python on this stack.

JWT checks in HAProxy 2.6 are signature-only (``jwt_verify``); the claims are compared
by ACLs on ``jwt_payload_query``, as the 2.6 configuration manual shows (§7.3.1). ``aud``
is compared as one string: a token whose ``aud`` is a list (RFC 7519 §4.1.3) is refused
even when the list names the gateway (the provider writes one audience as a string). A
run probes what it can send (:func:`probe_haproxy`); an expired token or another issuer
cannot be minted with the provider's key, so those rules are not probed during a run.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import requests

#: The per-subject limit: the gateway's route limit (``50000/second``), so it counts.
RATE_LIMIT_PER_SECOND = 50_000

HAPROXY_CONF = textwrap.dedent(
    """\
    global
      nbthread 1
      maxconn 4096
      stats socket {root}/admin.sock mode 600 level admin

    defaults
      mode http
      timeout connect 5s
      timeout client 30s
      timeout server 30s
      timeout http-keep-alive 30s
      option http-keep-alive

    frontend edge
      bind 127.0.0.1:{listen} ssl crt {edge_pem} alpn http/1.1
      http-request set-var(txn.bearer) http_auth_bearer
      http-request deny deny_status 401 hdr WWW-Authenticate "Bearer" unless {{ var(txn.bearer) -m found }}
      http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
      http-request set-var(txn.kid) var(txn.bearer),jwt_header_query('$.kid')
      http-request deny deny_status 401 hdr WWW-Authenticate "Bearer error=\\"invalid_token\\"" unless {{ var(txn.alg) -m str ES256 }}
      http-request deny deny_status 401 hdr WWW-Authenticate "Bearer error=\\"invalid_token\\"" unless {signature}
      http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
      http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
      http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
      http-request set-var(txn.now) date()
      http-request deny deny_status 401 hdr WWW-Authenticate "Bearer error=\\"invalid_token\\"" unless {{ var(txn.iss) -m str -- {issuer} }} {{ var(txn.aud) -m str -- {audience} }} {{ var(txn.exp),sub(txn.now) -m int gt 0 }}
      http-request set-var(txn.sub) var(txn.bearer),jwt_payload_query('$.sub')
      http-request track-sc0 var(txn.sub) table per_subject
      http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {limit} }}
      default_backend mesh

    backend per_subject
      stick-table type string len 128 size 100k expire 10m store http_req_cnt,http_req_rate(1s)

    backend mesh
      http-reuse always
      http-request set-header Authorization "Bearer {token}"
      server inventory 127.0.0.1:{upstream_port} ssl crt {svid_pem} ca-file {bundle} verify required
    """
)


def _get_json(url: str, ca: Path) -> dict[str, Any]:
    with requests.Session() as s:
        s.trust_env = False
        reply = s.get(url, verify=str(ca), timeout=30)
        reply.raise_for_status()
        return dict(reply.json())


def provider_keys(public_url: str, ca: Path, folder: Path) -> tuple[str, dict[str, Path]]:
    """The provider's issuer and its signing keys (kid → public key PEM file), from its
    discovery document and JWKS (RFC 8414 §3, RFC 7517 §5)."""
    from joserfc.jwk import ECKey

    meta = _get_json(public_url + "/.well-known/openid-configuration", ca)
    jwks = _get_json(str(meta["jwks_uri"]), ca)
    keys: dict[str, Path] = {}
    for n, jwk in enumerate(jwks["keys"]):
        if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
            continue
        public = {k: jwk[k] for k in ("kty", "crv", "x", "y")}
        path = folder / f"signing-key-{n}.pem"
        path.write_bytes(ECKey.import_key(public).as_pem(private=False))
        keys[str(jwk["kid"])] = path
    if not keys:
        raise SystemExit(f"the provider's JWKS at {meta['jwks_uri']} has no P-256 key")
    return str(meta["issuer"]), keys


def _quoted(value: str) -> str:
    if any(c in value for c in "\"'\\ \n#"):
        raise SystemExit(f"refusing to put {value!r} into an HAProxy config unescaped")
    return f'"{value}"'


def write_haproxy_config(
    folder: Path,
    *,
    listen: int,
    edge_cert: Path,
    edge_key: Path,
    signing_keys: dict[str, Path],
    issuer: str,
    audience: str,
    svid: Path,
    svid_key: Path,
    bundle: Path,
    token: str,
    upstream_port: int,
) -> Path:
    """HAProxy's config and its PEM bundles (certificate chain + key in one file, as its
    ``crt`` wants), all readable by this user only."""
    folder.mkdir(parents=True, exist_ok=True)
    edge_pem, svid_pem = folder / "edge.pem", folder / "svid.pem"
    for combined, parts in ((edge_pem, (edge_cert, edge_key)), (svid_pem, (svid, svid_key))):
        combined.touch(mode=0o600)
        combined.write_bytes(b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in parts))
    # one alternative per signing key: HAProxy loads every key file named in a
    # jwt_verify at start, so the kid picks among constant paths ("--": a kid may begin
    # with "-", which HAProxy would read as an option of the match). The algorithm is a
    # constant too: handed the token's own alg (the manual's example without its alg
    # check), HAProxy 2.6.12 takes the key argument, the file's path, as an HS256
    # token's HMAC secret and accepts a token keyed with it (tried on this machine).
    signature = " || ".join(
        f"{{ var(txn.kid) -m str -- {_quoted(kid)} }} "
        f'{{ var(txn.bearer),jwt_verify("ES256",{_quoted(str(path))}) -m int 1 }}'
        for kid, path in sorted(signing_keys.items())
    )
    conf = folder / "haproxy.cfg"
    conf.touch(mode=0o600)  # it holds a bearer token
    conf.write_text(
        HAPROXY_CONF.format(
            root=folder,
            listen=listen,
            edge_pem=edge_pem,
            signature=signature,
            issuer=_quoted(issuer),
            audience=_quoted(audience),
            limit=RATE_LIMIT_PER_SECOND,
            token=token,
            upstream_port=upstream_port,
            svid_pem=svid_pem,
            bundle=bundle,
        )
    )
    return conf


def start_haproxy(conf: Path) -> subprocess.Popen[bytes]:
    """``haproxy -c`` first (its complaints end the run), then HAProxy in the foreground,
    without a master process (``-db``): one process whose /proc CPU is the proxy's."""
    check = subprocess.run(
        ["haproxy", "-c", "-f", str(conf)], capture_output=True, text=True, timeout=30
    )
    if check.returncode != 0:
        raise SystemExit(f"haproxy -c refused {conf}:\n{check.stdout}{check.stderr}")
    log = (conf.parent / "haproxy.log").open("wb")
    return subprocess.Popen(
        ["haproxy", "-db", "-f", str(conf)], stdout=log, stderr=subprocess.STDOUT
    )


def _admin(folder: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(folder / "admin.sock"))
        s.sendall(command.encode() + b"\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()


def haproxy_table(folder: Path) -> str:
    """The per-subject stick-table, from HAProxy's admin socket."""
    lines = _admin(folder, "show table per_subject").splitlines()
    entries = [line.partition(": ")[2] for line in lines if line.startswith("0x")]
    return "; ".join(entries) or "(empty)"


def haproxy_upstream(folder: Path) -> str:
    """How many TLS connections HAProxy opened to ``inventory`` and how often it reused
    one (``show stat``: ``connect``, ``reuse``)."""
    rows = _admin(folder, "show stat").lstrip("# ").splitlines()
    names = rows[0].split(",")
    for row in rows[1:]:
        values = dict(zip(names, row.split(","), strict=False))
        if values.get("pxname") == "mesh" and values.get("svname") == "inventory":
            return (
                f"{values['connect']} connections opened, {values['reuse']} reuses, "
                f"{values['stot']} requests"
            )
    return "(no stats)"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(token: str, key_paths: list[Path]) -> dict[str, str]:
    """Tokens that must be refused: a flipped signature; the same header (its ``kid``
    kept) with ``alg: none``, and with ``alg: HS256`` keyed with the key file's path and
    with its PEM text (the algorithm-confusion attacks); not a JWT."""
    head, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    none = _b64(json.dumps({**header, "alg": "none"}).encode())
    hs256 = _b64(json.dumps({**header, "alg": "HS256"}).encode())

    def hmac_signed(secret: bytes) -> str:
        mac = hmac.new(secret, f"{hs256}.{payload}".encode(), hashlib.sha256).digest()
        return f"{hs256}.{payload}.{_b64(mac)}"

    return {
        "signature altered": f"{head}.{payload}.{flipped}",
        "alg none": f"{none}.{payload}.",
        "HS256 keyed with the key's path": hmac_signed(str(key_paths[0]).encode()),
        "HS256 keyed with the public key": hmac_signed(key_paths[0].read_bytes()),
        "not a JWT": "not-a-jwt",
    }


def probe_haproxy(
    url: str, ca: Path, token: str, other_audience: str, key_paths: list[Path]
) -> dict[str, str]:
    """What the HAProxy peer refuses, seen from outside; the good token must pass."""
    cases: dict[str, str | None] = {"no token": None, **_forged(token, key_paths)}
    cases["valid signature, other audience"] = other_audience
    found: dict[str, str] = {}
    with requests.Session() as s:
        s.trust_env = False
        s.verify = str(ca)
        for name, bearer in cases.items():
            headers = {} if bearer is None else {"Authorization": f"Bearer {bearer}"}
            status = s.get(url, headers=headers, timeout=30).status_code
            found[name] = f"refused ({status})" if status == 401 else f"NOT REFUSED ({status})"
        status = s.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code
        found["good token"] = "accepted (200)" if status == 200 else f"REFUSED ({status})"
    return found


def start_python_proxy(
    folder: Path, *, port: int, cert: Path, key: Path, upstream_port: int
) -> subprocess.Popen[bytes]:
    """uvicorn serving :func:`proxy_app`; ``folder`` holds ``svid.pem``, ``svid.key``,
    ``bundle.pem`` and the static token in ``token`` (mode 600)."""
    env = {
        **os.environ,
        "PEER_FOLDER": str(folder),
        "PEER_UPSTREAM": f"https://127.0.0.1:{upstream_port}",
    }
    return subprocess.Popen(
        uvicorn_argv(
            "gateway_peers:proxy_app",
            port,
            cert,
            key,
            "--factory",
            "--app-dir",
            str(Path(__file__).parent),
        ),
        env=env,
        stdout=subprocess.DEVNULL,
    )


def uvicorn_argv(app: str, port: int, cert: Path, key: Path, *more: str) -> list[str]:
    """``python -m uvicorn APP`` on 127.0.0.1:``port`` over TLS, one process, httptools
    and asyncio, quiet: how the benchmark runs every Python target."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        *more,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
        "--http",
        "httptools",
        "--loop",
        "asyncio",
        "--log-level",
        "warning",
        "--no-access-log",
    ]


#: Not forwarded either way (RFC 9110 §7.6.1), plus what the proxy sets itself.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "authorization",
        "content-length",
    }
)


def proxy_app() -> Any:
    """A bare ASGI reverse proxy: every request to ``PEER_UPSTREAM`` with the SVID and
    the static token, the answer back as it came. No checks of any kind."""
    import aiohttp

    folder = Path(os.environ["PEER_FOLDER"])
    upstream = os.environ["PEER_UPSTREAM"]
    bearer = "Bearer " + (folder / "token").read_text().strip()
    context = ssl.create_default_context(cafile=str(folder / "bundle.pem"))
    context.check_hostname = False  # a SPIFFE ID is a URI SAN: the chain is checked
    context.load_cert_chain(folder / "svid.pem", folder / "svid.key")
    client: list[aiohttp.ClientSession] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    connector = aiohttp.TCPConnector(ssl=context, limit=256)
                    client.append(aiohttp.ClientSession(connector=connector, auto_decompress=False))
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await client[0].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k.decode("latin-1") not in _HOP
        ]
        headers.append(("Authorization", bearer))
        target = upstream + scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        async with client[0].request(
            scope["method"], target, headers=headers, data=body or None, allow_redirects=False
        ) as reply:
            content = await reply.read()
            out = [
                (k.lower(), v)
                for k, v in reply.raw_headers
                if k.decode("latin-1").lower() not in _HOP
            ]
            out.append((b"content-length", str(len(content)).encode()))
            await send({"type": "http.response.start", "status": reply.status, "headers": out})
            await send({"type": "http.response.body", "body": content})

    return app

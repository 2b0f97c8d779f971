"""``trustmesh up [--detach]``, ``status --json``, ``down``: the stack on one machine."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

import typer
from rich.table import Table

from trustmesh import crypto
from trustmesh.audit.endpoint import endpoint_path as audit_endpoint_path
from trustmesh.auth.endpoint import endpoint_path as auth_endpoint_path
from trustmesh.cli import running_declaration
from trustmesh.cli._admin import join_token
from trustmesh.cli._common import (
    DEFAULT_STATE,
    EXIT_FAILURE,
    ConfigOption,
    StateOption,
    err,
    fail,
    fail_on,
    load_or_exit,
    out,
)
from trustmesh.cli.health import Answer, Target, ask_all, probe_grpc, probe_web
from trustmesh.cli.launcher import Launcher
from trustmesh.cli.provision import provision
from trustmesh.cli.secrets_cmd import seed_demo
from trustmesh.cli.supervisor import (
    FLUSH_GRACE,
    ComponentSpec,
    RunPaths,
    Supervisor,
    process_alive,
    python_module_argv,
    read_json,
    stop_stack,
    supervisor_running,
    write_json,
)
from trustmesh.config import TrustmeshConfig
from trustmesh.config.listen import LISTEN_PORTS_ENV, apply_listen_env
from trustmesh.config.switches import DEFENCES, check_switches
from trustmesh.errors import TrustmeshError, UnavailableError
from trustmesh.gateway.endpoint import WORKER_ENV as GATEWAY_WORKER_ENV
from trustmesh.gateway.endpoint import endpoint_path as gateway_endpoint_path
from trustmesh.identity.endpoint import MAX_SOCKET_PATH, IdentityPaths, prepare_state_dir
from trustmesh.platform.endpoints import (
    component_of,
    endpoint_of,
    gateway_worker_name,
    gateway_worker_number,
    instance,
    stopped_endpoint,
)
from trustmesh.platform.endpoints import targets as asked_where
from trustmesh.platform.listeners import bound_socket
from trustmesh.sdk.delivery import AUDIT_URL_ENV, NO_COLLECTOR
from trustmesh.sdk.metrics import METRICS_FILE_ENV, METRICS_PORT_ENV
from trustmesh.secrets.endpoint import DEV_UNSEAL_WARNING, dev_unseal_path
from trustmesh.secrets.endpoint import endpoint_path as secrets_endpoint_path

DETACH_TIMEOUT = 90.0
JOIN_TTL = 120  # seconds: a started process redeems its token within seconds
#: How long a start waits for the identity service (restarting, say) to make its token.
JOIN_WAIT = 10.0


def components(config: TrustmeshConfig, config_path: Path, state: Path) -> list[ComponentSpec]:
    """The identity service first, then every declared service, each its own process with
    its own identity (a fresh one-time join token at every start)."""
    specs = [
        ComponentSpec(
            "identity",
            python_module_argv(
                "trustmesh.identity", "--config", str(config_path), "--state", str(state)
            ),
            env_factory=_identity_env(state),
        )
    ]
    paths = IdentityPaths(state)

    def component(name: str, worker: int = 1) -> ComponentSpec:
        """A trustmesh server component, with its own identity through a join token
        (each gateway worker its own: ``gateway.workers``)."""
        process = gateway_worker_name(worker) if name == "gateway" else name
        env = {
            "SPIFFE_ENDPOINT_SOCKET": paths.socket_address,
            "TRUSTMESH_EVENTS": str(state / "events" / f"{process}.jsonl"),
        }
        if name == "gateway":
            env[GATEWAY_WORKER_ENV] = str(worker)
        return ComponentSpec(
            process,
            python_module_argv(
                f"trustmesh.{name}", "--config", str(config_path), "--state", str(state)
            ),
            env=env,
            env_factory=_component_env(config, state, name, process),
        )

    if config.audit is not None:  # first: every component after it delivers its events there
        specs.append(component("audit"))
    specs.append(component("auth"))
    if config.secrets is not None:  # before the services: they read their secrets there
        secrets = component("secrets")
        if config.dev and "payments" in config.services:
            secrets = dataclasses.replace(secrets, on_ready=lambda: seed_demo(config, state))
        specs.append(secrets)
    if config.gateway is not None:  # before the services: they are told where its keys are
        workers = config.gateway.workers if config.gateway.engine == "python" else 1
        specs += [component("gateway", worker) for worker in range(1, workers + 1)]
    specs += [
        _service_spec(config, config_path, state, name)
        for name, service in config.services.items()
        if not service.external
    ]
    return specs


def _service_spec(
    config: TrustmeshConfig, config_path: Path, state: Path, name: str
) -> ComponentSpec:
    """A declared service: its command, or the SDK's runner on its app."""
    service = config.services[name]
    argv = (
        tuple(service.command)
        if service.command
        else python_module_argv("trustmesh.sdk.runner", str(service.run))
    )
    return ComponentSpec(
        name,
        argv,
        env={
            "SPIFFE_ENDPOINT_SOCKET": IdentityPaths(state).socket_address,
            "TRUSTMESH_CONFIG": str(config_path),
            "TRUSTMESH_SERVICE": name,
            "TRUSTMESH_EVENTS": str(state / "events" / f"{name}.jsonl"),
        },
        env_factory=_service_env(config, state, name),
        together=True,  # services start side by side, after the platform
    )


def _metrics_file(state: Path, service: str) -> Path:
    return state / "metrics" / f"{service}.json"


def _service_metrics_url(state: Path, service: str) -> str | None:
    """Where ``service`` serves its metrics, as it says, while it is the process the
    supervisor started (a file a crashed one left names a listener that is gone)."""
    doc = read_json(_metrics_file(state, service)) or {}
    url = doc.get("metrics_url")
    alive = doc.get("pid") is not None and doc.get("pid") == _pid(RunPaths(state), service)
    return url if isinstance(url, str) and alive else None


def _join_token(config: TrustmeshConfig, state: Path, spiffe_id: str) -> str:
    """A one-time join token for a process ``up`` starts, made by the identity service's
    admin API (started first) at the operator's request; an identity service that is
    itself restarting is waited for a while."""
    deadline = time.monotonic() + JOIN_WAIT
    while True:
        try:
            return asyncio.run(join_token(state, spiffe_id, JOIN_TTL, config))
        except UnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _audit_url(config: TrustmeshConfig, state: Path) -> str:
    """Where the collector listens ("" while it starts), or that there is none: events
    spooled for a collector that never comes would fill the spool and, under
    ``on_full: block``, stop every component."""
    if config.audit is None:
        return NO_COLLECTOR
    return str((read_json(audit_endpoint_path(state)) or {}).get("url") or "")


def _discovery_url(state: Path) -> str:
    return str((read_json(IdentityPaths(state).discovery) or {}).get("url") or "")


def _component_env(
    config: TrustmeshConfig, state: Path, name: str, process: str | None = None
) -> Callable[[], dict[str, str]]:
    started: list[bool] = []

    def make() -> dict[str, str]:
        token = _join_token(config, state, config.component_spiffe_id(name))
        made = {
            "TRUSTMESH_JOIN_TOKEN": token,
            # where the suspensions feed is polled (platform.suspensions)
            "TRUSTMESH_DISCOVERY_URL": _discovery_url(state),
            AUDIT_URL_ENV: _audit_url(config, state),
        }
        if started:  # a restart: where its peers know it is
            made.update(_same_ports(state, process or name))
        started.append(True)
        return made

    return make


def _identity_env(state: Path) -> Callable[[], dict[str, str]]:
    """The identity service's restarts keep its discovery port (every process was told
    its URL once)."""
    started: list[bool] = []

    def make() -> dict[str, str]:
        made = _same_ports(state, "identity") if started else {}
        started.append(True)
        return made

    return make


#: Per component: the keys of its endpoint file whose URL's port ``TRUSTMESH_LISTEN_PORTS``
#: pins at a restart, and the port key each pins.
_KEPT_PORTS: Final = {
    "identity": (("url", "identity.discovery_port"),),
    "auth": (("url", "auth.port"), ("public_url", "auth.public_port")),
    "secrets": (("url", "secrets.port"),),
    "audit": (("url", "audit.port"), ("console_url", "audit.console.port")),
    "gateway": (("url", "gateway.port"), ("internal_url", "gateway.internal_port")),
}


def _same_ports(state: Path, process: str) -> dict[str, str]:
    """A component the supervisor starts again listens where it did: the ports its
    endpoint file names pinned for it (those the declaration leaves to the system
    would otherwise change, and the peers that found it at start — the gateway, the
    services, each told once — would call a dead port). A gateway worker after the
    first shares the first's client port already and takes free ones for the rest."""
    entry = endpoint_of(process)
    if process == "identity":
        where: Path | None = IdentityPaths(state).discovery
    else:
        where = state / entry[0] if entry is not None else None
    if where is None or process not in _KEPT_PORTS:
        return {}
    doc = read_json(where) or read_json(stopped_endpoint(where)) or {}  # crashed, or stopped
    if process == "identity":  # a stopped identity service keeps its leases, not its URL
        doc = {"url": doc.get("url") or doc.get("stopped_url")}
    pinned = dict(
        item.split("=", 1)
        for item in os.environ.get(LISTEN_PORTS_ENV, "").replace(",", " ").split()
    )
    for key, port_key in _KEPT_PORTS[process]:
        url = doc.get(key)
        port = urlsplit(url).port if isinstance(url, str) and url else None
        if port and port_key not in pinned:
            pinned[port_key] = str(port)
    return {LISTEN_PORTS_ENV: " ".join(f"{k}={v}" for k, v in pinned.items())} if pinned else {}


def _service_env(config: TrustmeshConfig, state: Path, name: str) -> Callable[[], dict[str, str]]:
    def make() -> dict[str, str]:
        auth = read_json(auth_endpoint_path(state)) or {}
        gateway = read_json(gateway_endpoint_path(state)) or {}
        secrets = read_json(secrets_endpoint_path(state)) or {}
        return {
            "TRUSTMESH_JOIN_TOKEN": _join_token(config, state, config.spiffe_id(name)),
            "TRUSTMESH_DISCOVERY_URL": _discovery_url(state),
            "TRUSTMESH_AUTH_URL": str(auth.get("url") or ""),
            "TRUSTMESH_GATEWAY_URL": str(gateway.get("internal_url") or ""),
            "TRUSTMESH_SECRETS_URL": str(secrets.get("url") or ""),
            AUDIT_URL_ENV: _audit_url(config, state),
            # its Prometheus metrics on loopback, and where it says they are
            METRICS_PORT_ENV: "0",
            METRICS_FILE_ENV: str(_metrics_file(state, name)),
        }

    return make


# -- readiness (the supervisor's, while it starts the stack) --------------------------------
def probe(spec: ComponentSpec, state: Path, timeout: float = 2.0) -> bool:
    if spec.name == "identity":
        # ready once both the Workload API answers and discovery is published: services
        # started next read the discovery URL from that file
        sock = IdentityPaths(state).socket
        discovery = read_json(IdentityPaths(state).discovery) or {}
        return (
            isinstance(discovery.get("url"), str)
            and sock.is_socket()
            and asyncio.run(probe_grpc(sock, timeout))
        )
    if spec.name == "auth":  # up once it serves and has said where
        url = (read_json(auth_endpoint_path(state)) or {}).get("url")
        return isinstance(url, str) and _tcp_open(url)
    if spec.name in ("secrets", "audit"):
        where = secrets_endpoint_path if spec.name == "secrets" else audit_endpoint_path
        url = (read_json(where(state)) or {}).get("url")
        return isinstance(url, str) and _tcp_open(url)
    worker = gateway_worker_number(spec.name)
    if worker is not None:
        doc = read_json(gateway_endpoint_path(state, worker)) or {}
        url, internal = doc.get("url"), doc.get("internal_url")
        return isinstance(url, str) and isinstance(internal, str) and _tcp_open(url)
    # a service is up once it serves and has registered with discovery (which it does
    # only after its SVID arrived and its mTLS server listens)
    return _serving(instance(read_json(IdentityPaths(state).discovery) or {}, spec.name))


def _serving(instance: dict[str, Any] | None) -> bool:
    return bool(instance and not instance.get("stale") and _tcp_open(str(instance.get("url"))))


def _tcp_open(url: str) -> bool:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 443), timeout=1
        ):
            return True
    except OSError:
        return False


# -- status: what the running components answer ------------------------------------------
def _component_row(
    config: TrustmeshConfig, state: Path, name: str, answer: Answer, discovery: dict[str, Any]
) -> dict[str, Any]:
    """A component's row (the identity service's is :func:`_identity_rows`)."""
    entry = endpoint_of(name)
    if entry is not None:
        path, _, extras = entry
        endpoint = read_json(state / path) or {}
        return {
            "name": name,
            "url": endpoint.get("url"),
            "spiffe_id": config.component_spiffe_id(component_of(name)),
            "healthy": answer.ok,
            "cert_expires": answer.cert_expires,
            "cert_kind": "svid",
            **{k: endpoint.get(k) for k in extras},
        }
    found = instance(discovery, name) or {}
    return {
        "name": name,
        "url": found.get("url"),
        "spiffe_id": config.spiffe_id(name),
        # a service that stopped renewing its lease is not found by its callers
        "healthy": answer.ok and not found.get("stale"),
        "cert_expires": answer.cert_expires,
        "cert_kind": "svid",
        "metrics_url": _service_metrics_url(state, name),
    }


def _identity_rows(
    config: TrustmeshConfig, state: Path, workload_api: bool, answer: Answer | None
) -> list[dict[str, Any]]:
    """The identity service (its Workload API, its signing CA's expiry as it says, and
    where its metrics are), then its mTLS listener (discovery and the admin API) when it
    has one."""
    signing = answer.doc.get("signing_ca_expires") if answer else None
    discovery = read_json(IdentityPaths(state).discovery) or {}
    metrics_url = discovery.get("metrics_url") if answer is not None else None
    rows = [
        {
            "name": "identity",
            "url": IdentityPaths(state).socket_address,
            "spiffe_id": config.component_spiffe_id("identity"),
            "healthy": workload_api,
            "cert_expires": signing if isinstance(signing, str) else None,
            "cert_kind": "signing-ca",
            "metrics_url": metrics_url if isinstance(metrics_url, str) else None,
        }
    ]
    if answer is not None:
        rows.append(
            {
                "name": "discovery",
                "url": discovery.get("url"),
                "spiffe_id": config.component_spiffe_id("identity"),
                "healthy": answer.ok,
                "cert_expires": answer.cert_expires,
                "cert_kind": "svid",
            }
        )
    return rows


def _console_row(
    config: TrustmeshConfig, declared_in: Path, state: Path, running: bool
) -> dict[str, Any]:
    """The console, served by the collector's process on a TLS listener for browsers:
    healthy when its sign-in page answers, over TLS checked against the dev edge CA, or
    — with a declared certificate (outside dev mode, often a private CA's) — presenting
    exactly that certificate."""
    url = (read_json(audit_endpoint_path(state)) or {}).get("console_url") if running else None
    answer = Answer()
    if isinstance(url, str):
        ca = crypto.edge_ca_path(state)
        answer = probe_web(
            url,
            ca if ca.exists() else None,
            "/signin",
            pinned=_declared_certificate(config, declared_in),
        )
    return {
        "name": "console",
        "url": url if isinstance(url, str) else None,
        "spiffe_id": config.component_spiffe_id("audit"),
        "healthy": answer.ok,
        "cert_expires": answer.cert_expires,
        "cert_kind": "web",
    }


def _declared_certificate(config: TrustmeshConfig, declared_in: Path) -> bytes | None:
    """The DER of the console's declared certificate (the first of its chain file);
    None when none is declared, or it cannot be read (then the CA check decides)."""
    console = config.audit.console if config.audit is not None else None
    if console is None or console.tls_cert is None:
        return None
    try:
        chain = crypto.certs_from_pem((declared_in / console.tls_cert).read_bytes())
    except (OSError, ValueError, TrustmeshError):
        return None
    return crypto.cert_der(chain[0]) if chain else None


def _pid(paths: RunPaths, name: str) -> int | None:
    """The component's process, as the supervisor recorded it, while it is that process."""
    doc = read_json(paths.component(name)) or {}
    pid, start = doc.get("pid"), doc.get("start_time")
    alive = isinstance(pid, int) and isinstance(start, int) and process_alive(pid, start)
    return pid if alive and isinstance(pid, int) else None


async def _ask_stack(
    config: TrustmeshConfig, state: Path, targets: dict[str, Target]
) -> tuple[bool, dict[str, Answer]]:
    workload_api, answers = await asyncio.gather(
        probe_grpc(IdentityPaths(state).socket), ask_all(config, state, targets)
    )
    return workload_api, answers


def stack_status(config: TrustmeshConfig, config_path: Path, state: Path) -> dict[str, Any]:
    """Each component's URL, SPIFFE ID, health and certificate expiry, as the running
    components answer (nothing is asked when no supervisor runs: all are down)."""
    paths = RunPaths(state)
    running = supervisor_running(paths)
    discovery = (read_json(IdentityPaths(state).discovery) or {}) if running else {}
    names = [spec.name for spec in components(config, config_path, state)]
    targets = asked_where(config, state, names[1:], discovery) if running else {}
    workload_api, answers = (
        asyncio.run(_ask_stack(config, state, targets)) if running else (False, {})
    )
    discovery_answer = answers.get("discovery", Answer()) if "discovery" in targets else None
    rows = _identity_rows(config, state, workload_api, discovery_answer)
    for name in names[1:]:
        rows.append(_component_row(config, state, name, answers.get(name, Answer()), discovery))
        if name == "audit" and config.audit is not None and config.audit.console is not None:
            rows.append(_console_row(config, config_path.parent, state, running))
    for row in rows:
        owner = {"discovery": "identity", "console": "audit"}.get(row["name"], row["name"])
        row["pid"] = _pid(paths, owner)
    listed = discovery.get("instances")
    instances = listed if isinstance(listed, list) else []
    return {
        "state": str(state),
        "running": running,
        "instances": instances,
        "stale_instances": [i for i in instances if isinstance(i, dict) and i.get("stale")],
        "phase": (read_json(paths.supervisor) or {}).get("phase") if running else "stopped",
        "trust_domain": config.trust_domain,
        "workload_api": IdentityPaths(state).socket_address,
        # dev mode: the CA of the browser-facing listeners (import it to trust them)
        "edge_ca": str(crypto.edge_ca_path(state)) if crypto.edge_ca_path(state).exists() else None,
        "components": rows,
    }


def _print_table(status: dict[str, Any]) -> None:
    table = Table(title="trustmesh")
    for column in ("component", "URL", "SPIFFE ID", "healthy", "cert expires"):
        table.add_column(column, overflow="fold")
    for c in status["components"]:
        expires = c["cert_expires"] or "-"
        if c["cert_expires"]:
            left = dt.datetime.fromisoformat(c["cert_expires"]) - dt.datetime.now(dt.UTC)
            expires = f"{expires} ({left.days}d {left.seconds // 3600}h left)"
        table.add_row(
            c["name"], c["url"], c["spiffe_id"], "yes" if c["healthy"] else "[red]no[/]", expires
        )
    out.print(table)
    for c in status["components"]:
        if c.get("public_url"):
            out.print(
                f"{c['name']}: browsers and public clients use {c['public_url']} (the issuer); "
                f"sign in at {c['public_url']}/account. Its certificate comes from "
                f"{status.get('edge_ca') or 'the configured files'}",
                markup=False,
            )
        if c.get("metrics_url"):
            out.print(f"{c['name']}: Prometheus metrics at {c['metrics_url']}", markup=False)
        if c["name"] == "console" and c.get("url"):
            out.print(f"console: admins sign in at {c['url']}", markup=False)
    for stale in status.get("stale_instances", []):
        out.print(f"[yellow]stale:[/] {stale['service']} at {stale['url']} stopped renewing")
    out.print(
        f"Workload API: {status['workload_api']}  (export SPIFFE_ENDPOINT_SOCKET={status['workload_api']})"
    )


# -- commands ------------------------------------------------------------------------------
def _check_state(config: TrustmeshConfig, state: Path) -> None:
    if IdentityPaths(state).socket_too_long() is not None:
        fail(
            f"state directory path {state} is too long for a unix socket "
            f"(at most {MAX_SOCKET_PATH} bytes); choose a shorter one",
            2,
        )
    try:
        prepare_state_dir(state)
        key = crypto.load_seal_key(state, dev=config.dev)
    except TrustmeshError as exc:
        fail_on(exc)
    if key.warning:
        err.print(f"[bold yellow]WARNING:[/] {key.warning}")


def up(
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Return once every component is healthy.")
    ] = False,
) -> None:
    """Start the stack: identity, the identity provider, the gateway and the services."""
    from trustmesh.cli.policy_cmd import edge_policy_or_exit

    cfg, cfg_path = load_or_exit(config)
    state, cfg_path = state.absolute(), cfg_path.absolute()
    _environment_or_exit(cfg)
    edge_policy_or_exit(cfg, cfg_path.parent)  # a bad policy stops `up` before anything starts
    _check_state(cfg, state)
    if supervisor_running(RunPaths(state)):
        fail(f"trustmesh is already running with state {state} (see `trustmesh status`)")
    try:  # the scale-out configuration's roles and schemas, before anything starts
        provision(cfg, state, lambda message: err.print(message, markup=False))
    except TrustmeshError as exc:
        fail_on(exc)
    if detach:
        _up_detached(cfg, cfg_path, state)
    else:
        raise typer.Exit(run_supervisor(cfg, cfg_path, state, interactive=True))


def _environment_or_exit(cfg: TrustmeshConfig) -> None:
    """What this environment does to the declaration, which every process ``up`` starts
    inherits and honours, checked before anything starts (exit 2): test-only defence
    switches (:mod:`trustmesh.config.switches`) are refused unless it allows them, and
    allowed, each is said loudly; a listen address or ports it pins
    (:func:`~trustmesh.config.listen.apply_listen_env`) must be ones the processes take."""
    try:
        check_switches(cfg)
        apply_listen_env(cfg)
    except TrustmeshError as exc:
        fail_on(exc)
    for name in cfg.testing.defences_off if cfg.testing is not None else ():
        component, what = DEFENCES[name]
        err.print(f"[bold red]TESTING SWITCH {name}: DEFENCE OFF[/] in {component}: {what}")


def _up_detached(cfg: TrustmeshConfig, cfg_path: Path, state: Path) -> None:
    paths = RunPaths(state)
    paths.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(paths.log("supervisor"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            python_module_argv(
                "trustmesh", "_supervise", "--config", str(cfg_path), "--state", str(state)
            ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + DETACH_TIMEOUT
    while time.monotonic() < deadline:
        doc = read_json(paths.supervisor) or {}
        if doc.get("pid") == proc.pid and doc.get("phase") == "ready":
            _print_table(stack_status(cfg, cfg_path, state))
            _demo_users(cfg, state)
            _dev_warnings(state)
            return
        if proc.poll() is not None:
            failed = doc.get("failed") if doc.get("pid") == proc.pid else None
            name = str(failed or "supervisor")
            for line in _tail(paths.log(name)):
                err.print(f"  {name}: {line}", markup=False)
            fail(f"{name} failed to start; see {paths.log(name)}")
        time.sleep(0.1)
    stop_stack(state, lambda m: err.print(m, markup=False))
    fail(f"the stack was not healthy within {DETACH_TIMEOUT:.0f}s; see {paths.logs}/")


DEMO_USERS = (("shopper", ["customer"]), ("support", ["support"]), ("admin", ["admin"]))


def _demo_users(cfg: TrustmeshConfig, state: Path) -> None:
    """In dev mode, the first start creates a shop user and an admin through the admin
    API and prints their credentials once (only hashes and a sealed TOTP secret are kept)."""
    if not cfg.dev:
        return
    from trustmesh.cli.auth_cmd import AdminError, admin_call

    marker = state / "auth" / "demo-users.created"
    if marker.exists():
        out.print(
            "Demo users: shopper (customer), support, admin "
            "(their credentials were shown at the first start)."
        )
        return
    lines = []
    try:
        for name, roles in DEMO_USERS:
            try:
                made = admin_call(
                    cfg, state, "POST", "/admin/v1/users", {"username": name, "roles": roles}
                )
            except AdminError:
                continue  # exists already
            line = f"  {name:8} password: {made['password']}"
            if "totp_uri" in made:
                line += f"\n  {'':8} TOTP:     {made['totp_uri']}"
            lines.append(line)
    except TrustmeshError as exc:
        err.print(f"warning: demo users not created: {exc.detail}", markup=False)
        return
    marker.touch(mode=0o600)
    if lines:
        out.print("Demo users (shown once; only their hashes are stored):", markup=False)
        for line in lines:
            out.print(line, markup=False)


def _dev_warnings(state: Path) -> None:
    """What dev mode gives up, said where the person who ran `up` sees it."""
    key_file = dev_unseal_path(state)
    if key_file.exists():
        err.print("warning: " + DEV_UNSEAL_WARNING.format(path=key_file), markup=False)


def _tail(path: Path, lines: int = 10) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def run_supervisor(cfg: TrustmeshConfig, cfg_path: Path, state: Path, *, interactive: bool) -> int:
    def log(message: str) -> None:
        print(
            f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} supervisor: {message}",
            file=sys.stderr,
            flush=True,
        )

    held = _share_gateway_port(cfg)  # the port every gateway worker listens on
    specs = components(cfg, cfg_path, state)
    grace = cfg.listen.drain.total_seconds() + FLUSH_GRACE  # each child drains, then flushes
    sup = Supervisor(
        state,
        specs,
        lambda spec: probe(spec, state),
        log=log,
        stop_grace=grace,
        launcher=Launcher(),  # the platform's components forked, imported once
    )
    try:
        sup.acquire()
    except TrustmeshError as exc:
        log(exc.detail)
        return EXIT_FAILURE
    sup.install_signal_handlers()
    running_declaration.record(state, cfg_path)  # what `trustmesh reload` compares with

    def phase(name: str, **extra: object) -> None:
        doc = read_json(sup.paths.supervisor) or {}
        write_json(sup.paths.supervisor, {**doc, "phase": name, **extra})

    try:
        phase("starting")
        failed = sup.start_all()
        if failed:
            phase("failed", failed=failed)
            log(f"{failed} did not become healthy; see {sup.paths.log(failed)}")
            return EXIT_FAILURE
        phase("ready")
        if interactive:
            _print_table(stack_status(cfg, cfg_path, state))
            _demo_users(cfg, state)
            _dev_warnings(state)
            out.print("Press Ctrl-C to stop.")
        failed = sup.watch()
        return EXIT_FAILURE if failed else 0
    finally:
        sup.stop_all()
        sup.release()
        if held is not None:
            held.close()
        if interactive:
            out.print("stopped.")


def _share_gateway_port(cfg: TrustmeshConfig) -> socket.socket | None:
    """With several gateway processes on a client port the declaration leaves to the
    system (``port: 0``), the port they share: chosen now, held while the stack runs
    (bound, never listening: no connection reaches this socket, and no other user's
    socket may join the port) and pinned for each of them in ``TRUSTMESH_LISTEN_PORTS``
    (a worker started again finds it too)."""
    served = apply_listen_env(cfg)
    gateway = served.gateway
    if gateway is None or gateway.engine != "python" or gateway.workers == 1 or gateway.port:
        return None
    held = bound_socket(served.listen.host, 0, reuse_port=True)
    pinned = os.environ.get(LISTEN_PORTS_ENV, "")
    os.environ[LISTEN_PORTS_ENV] = f"{pinned} gateway.port={held.getsockname()[1]}".strip()
    return held


def status(
    config: ConfigOption = None,
    state: StateOption = DEFAULT_STATE,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Report each component's URL, SPIFFE ID, health and certificate expiry.
    Exit 0 when every component is healthy, 1 otherwise."""
    cfg, cfg_path = load_or_exit(config)
    report = stack_status(cfg, cfg_path.absolute(), state.absolute())
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        if not report["running"]:
            out.print("trustmesh is not running.")
        _print_table(report)
    healthy = report["running"] and all(c["healthy"] for c in report["components"])
    raise typer.Exit(0 if healthy else EXIT_FAILURE)


def supervise(
    config: Annotated[Path, typer.Option("--config")],
    state: Annotated[Path, typer.Option("--state")],
) -> None:
    """(internal) The detached supervisor started by `up --detach`."""
    cfg, cfg_path = load_or_exit(config)
    os.umask(0o077)
    raise typer.Exit(run_supervisor(cfg, cfg_path.absolute(), state.absolute(), interactive=False))


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("status")(status)
    app.command("_supervise", hidden=True)(supervise)

"""``trustmesh audit export|grants``: the audit log out to a SIEM, and the PostgreSQL
grants of the collector's role.

``export`` reads the log through the collector's API as the operator (as ``audit events``
does, with the same filters), one page of :data:`PAGE` events after another (``after``:
the last seq seen) within one operator session, up to the head as it stood when the
export began (the collector records each page read as an event of its own: without that
bound the export would chase them). Each page goes out before the next is read, so a
log of any size is exported in bounded memory:

Events go out as the collector stored them (OCSF, without the ``seq`` its API adds):

- ``jsonl`` — one event a line (:func:`~trustmesh.audit.export.write_jsonl`) to
  ``--out`` (created 0600: it names users and addresses) or stdout;
- ``syslog`` — RFC 5424 over TLS to ``--syslog HOST:PORT`` (``--client-cert`` and
  ``--client-key`` for a receiver that requires a client certificate)
  (:class:`~trustmesh.audit.syslog.SyslogSender`); a message counts as sent once
  written to the connection (TCP has no acknowledgement);
- ``otlp`` — OTLP/HTTP JSON logs to ``--otlp URL``
  (:class:`~trustmesh.audit.export.OtlpExporter`); sent once the collector answered 2xx.

With a pseudonymisation key (``--pseudonymise-key-file``, else the declaration's
``audit.export.pseudonymise_key_file``) every event passes through
:class:`~trustmesh.audit.pseudonymise.Pseudonymiser` first. The key file must be a
regular file only its owner may read or write (it is the only thing between a pseudonym
and the person), of at least 32 bytes.

The summary (how many exported, and the last seq, to resume from with ``--after``)
goes to stderr, stdout being the export itself. A receiver that fails stops the
export: exit 1, saying how many were sent before it (resume with ``--after``).

``grants`` prints the statements that give the collector's PostgreSQL role SELECT and
INSERT (and the alert ids' sequence) on every table it uses, and nothing else; the
tables' owner runs them. With ``--tables`` they come after those that make the tables
where they do not exist yet (``trustmesh audit grants ROLE --tables | psql …``, as the
owner: a role that may only INSERT and SELECT cannot make them).
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, Final, Protocol
from urllib.parse import urlencode

import typer

from trustmesh.cli import _admin
from trustmesh.cli._common import (
    DEFAULT_STATE,
    ConfigOption,
    StateOption,
    err,
    fail,
    fail_on,
    load_or_exit,
)
from trustmesh.cli._common import declared as _declared
from trustmesh.cli.audit_cmd import (
    ClassOption,
    DecisionOption,
    PrincipalOption,
    ReasonOption,
    SinceOption,
    TraceOption,
    UntilOption,
    app,
)
from trustmesh.config import CONFIG_FILE_NAME, TrustmeshConfig
from trustmesh.errors import ConfigError, TrustmeshError, UnavailableError, UsageError

if TYPE_CHECKING:  # imported where they run: every command paid ≈ 0.45 s for them at start
    from trustmesh.audit.export import OtlpExporter
    from trustmesh.audit.pseudonymise import Pseudonymiser
    from trustmesh.audit.syslog import SyslogSender

__all__ = ["PAGE", "ExportFormat", "export_command", "grants_command", "grants_for"]

#: Events read from the collector per request (its most).
PAGE: Final = 1000
#: How long the syslog sender may take to send what is queued when the export ends.
_SYSLOG_DRAIN: Final = 30.0


class ExportFormat(enum.StrEnum):
    jsonl = "jsonl"
    syslog = "syslog"
    otlp = "otlp"


class _Sink(Protocol):
    """Where exported events go: ``send`` takes one page (raising UnavailableError when
    the receiver fails), ``sent`` counts what went, ``close`` ends it."""

    sent: int

    def send(self, records: Sequence[Mapping[str, Any]]) -> None: ...
    def close(self) -> None: ...


class _Jsonl:
    def __init__(self, out: IO[str], where: str) -> None:
        self.out = out
        self.where = where
        self.sent = 0

    def send(self, records: Sequence[Mapping[str, Any]]) -> None:
        from trustmesh.audit.export import write_jsonl

        try:
            self.sent += write_jsonl(records, self.out)
            self.out.flush()
        except OSError as exc:
            raise UnavailableError(f"{self.where}: cannot be written ({exc.strerror})") from None

    def close(self) -> None:
        if self.out is not sys.stdout:
            self.out.close()


class _Syslog:
    """A :class:`SyslogSender` used synchronously: each page is queued, then waited for,
    so a receiver that fails stops the export at the page it failed in."""

    def __init__(self, sender: SyslogSender, where: str) -> None:
        self.sender = sender
        self.where = where
        self.sent = 0
        sender.start()

    def send(self, records: Sequence[Mapping[str, Any]]) -> None:
        from trustmesh.audit.export import export_syslog

        stats = self.sender.stats
        if export_syslog(records, self.sender) != len(records):
            raise UnavailableError(f"syslog {self.where}: the send queue is full")
        while stats.delivered + stats.failed + stats.dropped < stats.submitted:
            if stats.failed:
                break
            time.sleep(0.005)
        self.sent = stats.delivered
        if stats.failed:
            self.sender.close(1.0)  # what is queued after the failure is not sent
            self.sent = stats.delivered
            raise UnavailableError(f"syslog {self.where}: the receiver cannot be reached")

    def close(self) -> None:
        self.sender.close(_SYSLOG_DRAIN)
        self.sent = self.sender.stats.delivered


class _Otlp:
    def __init__(self, exporter: OtlpExporter) -> None:
        self.exporter = exporter
        self.sent = 0

    def send(self, records: Sequence[Mapping[str, Any]]) -> None:
        size = self.exporter.batch
        for start in range(0, len(records), size):  # counted a request at a time
            self.sent += self.exporter.export(records[start : start + size])

    def close(self) -> None:
        pass


def read_key(path: Path, where: str) -> bytes:
    """The pseudonymisation key in ``path`` (trailing line breaks dropped): refused,
    naming ``where``, unless it is a regular file no one but its owner may read or
    write, of at least :data:`~trustmesh.audit.pseudonymise.MIN_KEY_BYTES` bytes."""
    from trustmesh.audit._delivery import read_private_file
    from trustmesh.audit.pseudonymise import MIN_KEY_BYTES

    key = read_private_file(path, f"{where}: {path}").rstrip(b"\r\n")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{where}: {path} holds {len(key)} bytes, at least {MIN_KEY_BYTES}")
    return key


def _pseudonymiser(
    key_file: Path | None, config: Path | None, stack: TrustmeshConfig | None
) -> Pseudonymiser | None:
    """From ``--pseudonymise-key-file``, else the declaration's (``--config``, loaded
    already as ``stack``, else ./trustmesh.yaml when there is one), else None."""
    from trustmesh.audit.pseudonymise import Pseudonymiser

    if key_file is not None:
        return Pseudonymiser(read_key(key_file, "--pseudonymise-key-file"))
    path = config or Path.cwd() / CONFIG_FILE_NAME
    if config is None and not path.is_file():
        return None
    declaration = stack if stack is not None else load_or_exit(path)[0]
    name = declaration.audit.export.pseudonymise_key_file if declaration.audit else None
    if name is None:
        return None
    where = f"{path}: audit.export.pseudonymise_key_file"
    return Pseudonymiser(read_key(path.parent / name, where))


def _open_out(path: Path) -> IO[str]:
    """``path`` for writing, created (or cut and narrowed to) 0600, never through a
    symbolic link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot be written ({exc.strerror})") from None
    os.fchmod(fd, 0o600)
    return open(fd, "w", encoding="ascii", newline="\n")


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"--syslog {value!r}: expected HOST:PORT")
    return host, int(port)


def _sink(
    fmt: ExportFormat,
    out: Path | None,
    syslog: str | None,
    otlp: str | None,
    ca_file: Path | None,
    client: tuple[Path | None, Path | None] = (None, None),
) -> _Sink:
    from trustmesh.audit._delivery import Backoff
    from trustmesh.audit.export import OtlpExporter
    from trustmesh.audit.syslog import SyslogSender

    given = {"--out": out, "--syslog": syslog, "--otlp": otlp}
    wanted = {ExportFormat.jsonl: "--out", ExportFormat.syslog: "--syslog"}.get(fmt, "--otlp")
    for option, value in given.items():
        if value is not None and option != wanted:
            raise UsageError(f"{option} does not go with --format {fmt.value}")
    ca = None if ca_file is None else str(ca_file)
    if fmt is not ExportFormat.syslog and client != (None, None):
        raise UsageError("--client-cert and --client-key go with --syslog")
    if fmt is ExportFormat.jsonl:
        if ca_file is not None:
            raise UsageError("--ca-file goes with --syslog or --otlp")
        return _Jsonl(sys.stdout, "stdout") if out is None else _Jsonl(_open_out(out), str(out))
    if fmt is ExportFormat.syslog:
        if syslog is None:
            raise UsageError("--format syslog needs --syslog HOST:PORT")
        host, port = _host_port(syslog)
        cert, key = client
        sender = SyslogSender(
            host,
            port,
            ca,
            hostname=socket.gethostname(),
            max_queue=2 * PAGE,
            backoff=Backoff(attempts=3, base=0.2, cap=1.0),
            cert_file=None if cert is None else str(cert),
            key_file=None if key is None else str(key),
            where="--client-cert/--client-key",
        )
        return _Syslog(sender, syslog)
    if otlp is None:
        raise UsageError("--format otlp needs --otlp URL")
    return _Otlp(OtlpExporter(otlp, ca_file=ca))


async def _export(
    state: Path,
    config: TrustmeshConfig | None,
    filters: Mapping[str, object],
    after: int,
    sink: _Sink,
    transform: Callable[[Mapping[str, Any]], Mapping[str, Any]],
) -> int:
    """Page through the selection into ``sink``; the last seq exported (``after`` if
    none was)."""
    async with _admin.as_operator(state, config) as operator:

        async def get(path: str) -> Any:
            return await _admin.admin_request(operator, state, "audit", "GET", path)

        head = int((await get("/v1/health"))["records"])
        while after < head:
            query = urlencode({**filters, "after": after, "limit": PAGE})
            page = [e for e in (await get(f"/v1/events?{query}"))["events"] if e["seq"] <= head]
            if not page:
                break
            records = [transform({k: v for k, v in e.items() if k != "seq"}) for e in page]
            try:
                await asyncio.to_thread(sink.send, records)
            except UnavailableError as exc:  # the receiver's, not the collector's
                raise _ReceiverFailed(exc.detail) from None
            after = int(page[-1]["seq"])
    return after


def _plain(record: Mapping[str, Any]) -> Mapping[str, Any]:
    return record


class _ReceiverFailed(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@app.command("export")
def export_command(
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="jsonl (a file or stdout), syslog or otlp.")
    ] = ExportFormat.jsonl,
    out: Annotated[
        Path | None, typer.Option("--out", help="jsonl: this file (0600); default stdout.")
    ] = None,
    syslog: Annotated[
        str | None, typer.Option("--syslog", help="syslog: the receiver's HOST:PORT (TLS).")
    ] = None,
    otlp: Annotated[
        str | None, typer.Option("--otlp", help="otlp: the OpenTelemetry Collector's URL.")
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option("--ca-file", help="PEM CAs to trust for the receiver.", dir_okay=False),
    ] = None,
    client_cert: Annotated[
        Path | None,
        typer.Option(
            "--client-cert",
            help="syslog: the certificate (PEM chain) to present to a receiver that asks "
            "for one; with --client-key.",
            dir_okay=False,
        ),
    ] = None,
    client_key: Annotated[
        Path | None,
        typer.Option("--client-key", help="syslog: its key (PEM, 0600).", dir_okay=False),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--pseudonymise-key-file",
            help="Pseudonymise subjects and addresses with the key in this file (0600, "
            "32+ bytes); else audit.export.pseudonymise_key_file.",
            dir_okay=False,
        ),
    ] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    class_uid: ClassOption = None,
    principal: PrincipalOption = None,
    decision: DecisionOption = None,
    reason: ReasonOption = None,
    trace_id: TraceOption = None,
    after: Annotated[
        int, typer.Option(min=0, help="Only records after this seq (resume an export).")
    ] = 0,
    state: StateOption = DEFAULT_STATE,
    config: ConfigOption = None,
) -> None:
    """Export the audit log's events (all, or those the filters select) as JSON lines,
    to syslog over TLS or to an OpenTelemetry Collector; pseudonymised when a key is
    given or declared."""
    filters = {
        "since": since,
        "until": until,
        "class_uid": class_uid,
        "principal": principal,
        "decision": decision,
        "reason": reason,
        "trace_id": trace_id,
    }
    stack = _declared(config)
    try:
        pseudonymiser = _pseudonymiser(key_file, config, stack)
        _admin.admin_url(state, "audit")  # not running: said before anything is opened
        sink = _sink(fmt, out, syslog, otlp, ca_file, (client_cert, client_key))
    except TrustmeshError as exc:
        fail_on(exc)
    transform = _plain if pseudonymiser is None else pseudonymiser.event
    chosen = {k: v for k, v in filters.items() if v is not None}
    try:
        try:
            last = asyncio.run(_export(state, stack, chosen, after, sink, transform))
        finally:
            sink.close()
    except _ReceiverFailed as exc:
        fail(
            f"export stopped: {exc.why}; {sink.sent} events were exported before it "
            f"(resume with --after and the last seq the receiver holds)"
        )
    except TrustmeshError as exc:
        _admin.fail_admin(exc)
    pseudonymised = " (pseudonymised)" if pseudonymiser is not None else ""
    err.print(
        f"exported {sink.sent} events{pseudonymised}; last seq {last}",
        markup=False,
    )


def table_statements(schema: str | None = None) -> tuple[str, ...]:
    """The PostgreSQL statements that make every table (and index) of the audit database
    where it does not exist yet, in ``schema`` (or the search path's first)."""
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateIndex, CreateTable

    from trustmesh.audit.alerts import metadata as alert_tables
    from trustmesh.audit.ledger_schema import metadata as ledger_tables
    from trustmesh.audit.ledger_schema import prune_tables
    from trustmesh.audit.response_store import metadata as response_tables
    from trustmesh.audit.spans import span_tables

    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    made: list[str] = [f'SET search_path TO "{schema}"'] if schema else []
    for tables in (
        ledger_tables,
        prune_tables,
        alert_tables,
        response_tables,
        span_tables,
    ):
        for table in tables.sorted_tables:
            made.append(str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)))
            made += (
                str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect))
                for index in sorted(table.indexes, key=lambda i: str(i.name))
            )
    return tuple(" ".join(statement.split()) for statement in made)


def grants_for(
    role: str, *, schema: str | None = None, prune_role: str | None = None
) -> tuple[str, ...]:
    """Every statement that lets ``role`` (the collector) use all its tables — the log,
    the alerts, the responses — with SELECT and INSERT only, and read the prune
    checkpoints (verify needs them); the spans with DELETE too (they are telemetry, not
    evidence: the collector prunes them past ``audit.tracing.retention``); with
    ``prune_role``, the statements that let that role (``audit.retention.database``)
    prune, and nothing else."""
    from trustmesh.audit.alerts import alert_grants
    from trustmesh.audit.ledger_schema import collector_grants, prune_grants, prunes
    from trustmesh.audit.response_store import response_grants
    from trustmesh.audit.spans import span_grants

    prefix = f'"{schema}".' if schema else ""
    table = f'{prefix}"{prunes.name}"'
    statements = (
        *collector_grants(role, schema=schema),
        *alert_grants(role, schema=schema),
        *response_grants(role, schema=schema),
        *span_grants(role, schema=schema),
        f'REVOKE ALL ON {table} FROM "{role}"',
        f'GRANT SELECT ON {table} TO "{role}"',
    )
    if prune_role is None:
        return statements
    return (*statements, *prune_grants(prune_role, collector=role, schema=schema))


@app.command("grants")
def grants_command(
    role: Annotated[str, typer.Argument(help="The collector's PostgreSQL role.")],
    schema: Annotated[str | None, typer.Option(help="The tables' schema, if not public.")] = None,
    prune_role: Annotated[
        str | None,
        typer.Option(help="The role that prunes past retention (DELETE on the records only)."),
    ] = None,
    tables: Annotated[
        bool, typer.Option("--tables", help="First make the tables where they do not exist.")
    ] = False,
) -> None:
    """Print the PostgreSQL statements that let ROLE (the collector) append to and read
    its tables, and nothing else (with --prune-role, those that let that role prune).
    The tables' owner runs them, after the tables exist (--tables: the statements that
    make them come first); neither role may own them."""
    try:
        statements = grants_for(role, schema=schema, prune_role=prune_role)
    except TrustmeshError as exc:
        fail_on(exc)
    if tables:
        statements = (*table_statements(schema), *statements)
    for statement in statements:
        print(f"{statement};")

"""What the console shows, read in the collector's process: the audit log and its
alerts, the span store, the edge counts, the services' health, and the newest attack
run's posture (``<state>/attack/latest.json``, as ``trustmesh attack --json`` writes:
``{"controls": [{"name", "passed", "attack", "observed", "event_ids"}]}``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trustmesh.audit.console.graph import EdgeCounts
from trustmesh.audit.console.services import ServiceRow, rows
from trustmesh.audit.search import MAX_LIMIT, Query
from trustmesh.audit.service import AuditService
from trustmesh.audit.spans import SpanStore
from trustmesh.config import TrustmeshConfig
from trustmesh.platform.endpoints import read_json
from trustmesh.sdk.tls import RotatingTLS

__all__ = ["ConsoleSource", "posture_path"]

#: The most of a posture file read (a run's report is small).
_MAX_POSTURE = 1 << 20


def posture_path(state: Path) -> Path:
    return state / "attack" / "latest.json"


class ConsoleSource:
    def __init__(
        self,
        config: TrustmeshConfig,
        state: Path,
        service: AuditService,
        spans: SpanStore | None,
        edges: EdgeCounts,
        tls: RotatingTLS,
    ) -> None:
        self.config, self.state, self.service = config, state, service
        self.spans, self.edges, self.tls = spans, edges, tls

    def now(self) -> dt.datetime:
        return self.service.now()

    async def events(self, query: Query) -> list[dict[str, Any]]:
        return await self.service.search(query)

    async def alerts(
        self, *, after_id: int = 0, limit: int = 100, newest: bool = False
    ) -> list[dict[str, Any]]:
        """After ``after_id``, oldest first (a feed); ``newest``: the newest, newest first."""
        store = self.service.alert_store
        if store is None:
            return []
        found = await store.list(after_id=after_id, limit=limit, newest=newest)
        return [a.to_dict() for a in found]

    async def alert(self, alert_id: int) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The alert, and the events that raised it (those still in the log)."""
        store = self.service.alert_store
        found = await store.get(alert_id) if store is not None else None
        if found is None:
            return None, []
        uids: Sequence[str] = found.event_uids[:MAX_LIMIT]
        logged = await self.service.search(Query(uids=tuple(uids), limit=MAX_LIMIT)) if uids else []
        return found.to_dict(), logged

    async def trace(self, trace_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        spans = []
        if self.spans is not None:
            found, _ = await self.spans.trace(trace_id)
            spans = [span.to_dict() for span in found]
        logged = await self.service.search(Query(trace_id=trace_id, limit=MAX_LIMIT))
        return spans, logged

    async def services(self) -> list[ServiceRow]:
        return await rows(self.config, self.state, self.tls, self.now())

    def posture(self) -> dict[str, Any] | None:
        """The newest attack run's report, if one is there and readable."""
        path = posture_path(self.state)
        try:
            if path.stat().st_size > _MAX_POSTURE:
                return None
        except OSError:
            return None
        doc = read_json(path)
        if doc is None or not isinstance(doc.get("controls"), list):
            return None
        return doc

"""The call graph the console draws: what the declaration allows (the gateway's routes
and ``calls``), laid out in columns, with what was decided on each edge lately.

- :func:`declared` — the nodes (``clients``, the gateway, every service) and the
  allowed edges, each with the operations it allows; derived from the one declaration,
  never written twice.
- :class:`EdgeCounts` — sees every event the collector stores and counts, per minute,
  the decisions of each hop: the callee decided (a service's middleware names its
  caller's SPIFFE ID; the gateway's callers are ``clients``) — and only an event the
  callee itself delivered (the collector stamps the reporter). One event per request
  and hop: a service's allow or deny; the gateway's ``policy-allow`` or its deny.
  A refused call on an edge the declaration does not have is counted too: it is drawn
  as an attempt. Memory is bounded (an hour of minutes, a bounded set of pairs).
- :func:`layout` — columns by call depth (Kahn's order; a cycle does not hang it).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trustmesh.config import TrustmeshConfig
from trustmesh.reasons import Reason

__all__ = ["CLIENTS", "UNIDENTIFIED", "EdgeCounts", "Graph", "Placed", "declared", "layout"]

CLIENTS = "clients"  # whoever calls the gateway: browsers and API clients
UNIDENTIFIED = "unidentified"  # a caller with no valid SVID
_MINUTE_MS = 60_000
_KEEP_MINUTES = 60
_MAX_PAIRS = 1024


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    allows: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.source}->{self.target}"


@dataclass(frozen=True)
class Graph:
    nodes: tuple[str, ...]
    edges: tuple[Edge, ...]
    #: SPIFFE ID -> node
    nodes_by_id: Mapping[str, str] = field(default_factory=dict)


def declared(config: TrustmeshConfig) -> Graph:
    nodes: list[str] = []
    ids: dict[str, str] = {}
    allows: OrderedDict[tuple[str, str], list[str]] = OrderedDict()
    if config.gateway is not None:
        nodes += [CLIENTS, "gateway"]
        ids[config.component_spiffe_id("gateway")] = "gateway"
        allows[(CLIENTS, "gateway")] = [route.path for route in config.gateway.routes]
        for route in config.gateway.routes:
            methods = [str(m) for m in route.methods]
            ops = [str(p) for p in route.paths or ()] or [f"{m} {route.path}" for m in methods]
            allows.setdefault(("gateway", route.to), []).extend(ops)
    for name in config.services:
        nodes.append(name)
        ids[config.spiffe_id(name)] = name
    for call in config.calls:
        allows.setdefault((call.from_, call.to), []).extend(call.allow)
    edges = tuple(
        Edge(s, t, tuple(dict.fromkeys(str(op) for op in ops))) for (s, t), ops in allows.items()
    )
    return Graph(tuple(nodes), edges, ids)


@dataclass(frozen=True)
class Placed:
    name: str
    x: int
    y: int


def layout(graph: Graph, *, column: int = 200, row: int = 80) -> dict[str, Placed]:
    """Each node's place: its column is its longest declared call depth."""
    incoming: dict[str, set[str]] = {n: set() for n in graph.nodes}
    for edge in graph.edges:
        if edge.source in incoming and edge.target in incoming and edge.source != edge.target:
            incoming[edge.target].add(edge.source)
    depth: dict[str, int] = {}
    ready = [n for n in graph.nodes if not incoming[n]]
    remaining = {n: set(s) for n, s in incoming.items()}
    while ready:
        node = ready.pop(0)
        depth[node] = max((depth[s] + 1 for s in incoming[node] if s in depth), default=0)
        for other, sources in remaining.items():
            if node in sources:
                sources.discard(node)
                if not sources and other not in depth and other not in ready:
                    ready.append(other)
    for node in graph.nodes:  # in a cycle: after the deepest placed
        depth.setdefault(node, max(depth.values(), default=0) + 1)
    columns: dict[int, list[str]] = {}
    for node in graph.nodes:
        columns.setdefault(depth[node], []).append(node)
    placed: dict[str, Placed] = {}
    for level, names in sorted(columns.items()):
        for index, name in enumerate(names):
            placed[name] = Placed(name, 80 + level * column, 50 + index * row)
    return placed


class EdgeCounts:
    """Decisions per edge and minute (see the module docstring). ``clock``: epoch
    seconds, the collector's; an event is counted in its own minute, or in the present
    one if it claims a later time (a workload's clock cannot push the present out)."""

    def __init__(
        self,
        graph: Graph,
        gateway_id: str | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.graph = graph
        self._gateway = gateway_id
        self._clock = clock
        self._minutes: OrderedDict[int, dict[tuple[str, str], list[int]]] = OrderedDict()
        self.total: dict[tuple[str, str], list[int]] = {}

    def observe(self, event: Mapping[str, Any]) -> None:
        hop = self._hop(event)
        if hop is None:
            return
        pair, denied = hop
        now_ms = int(self._clock() * 1000)
        claimed = event.get("time")
        minute = min(claimed if type(claimed) is int else now_ms, now_ms) // _MINUTE_MS
        bucket = self._minutes.get(minute)
        if bucket is None:
            if self._minutes and minute < next(iter(self._minutes)):
                bucket = {}  # older than anything kept: totals only
            else:
                bucket = self._minutes[minute] = {}
                while len(self._minutes) > _KEEP_MINUTES:
                    self._minutes.popitem(last=False)
        for table in (bucket, self.total):
            if pair in table or len(table) < _MAX_PAIRS:
                table.setdefault(pair, [0, 0])[1 if denied else 0] += 1

    def _hop(self, event: Mapping[str, Any]) -> tuple[tuple[str, str], bool] | None:
        unmapped = event.get("unmapped")
        mine = unmapped.get("trustmesh") if isinstance(unmapped, dict) else None
        if not isinstance(mine, dict):
            return None
        callee, decision = mine.get("spiffe_id"), mine.get("decision")
        if decision not in ("allow", "deny") or not isinstance(callee, str):
            return None
        if mine.get("reporter") != callee:  # only the callee's own word about its calls
            return None
        target = self.graph.nodes_by_id.get(callee)
        if target is None:
            return None
        denied = decision == "deny"
        peer = mine.get("peer_spiffe_id")
        if callee == self._gateway:
            if not denied and mine.get("reason") != Reason.POLICY_ALLOW:
                return None  # the request's other steps: one count per request
            source = CLIENTS
        else:
            attributes = mine.get("attributes")
            if not isinstance(attributes, dict) or "method" not in attributes:
                return None  # not a request's decision
            source = (
                self.graph.nodes_by_id.get(peer, UNIDENTIFIED)
                if isinstance(peer, str)
                else UNIDENTIFIED
            )
        return (source, target), denied

    def recent(self, now_ms: int, minutes: int = 15) -> dict[str, tuple[int, int]]:
        """``source->target``: (allowed, denied) in the last ``minutes`` (to ``now_ms``)."""
        first = now_ms // _MINUTE_MS - minutes + 1
        found: dict[str, list[int]] = {}
        for minute, bucket in self._minutes.items():
            if minute < first:
                continue
            for (source, target), (allowed, denied) in bucket.items():
                counts = found.setdefault(f"{source}->{target}", [0, 0])
                counts[0] += allowed
                counts[1] += denied
        return {key: (a, d) for key, (a, d) in found.items()}

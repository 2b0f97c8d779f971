"""The gateway's blocks at runtime (:mod:`trustmesh.gateway.blocklist`), on its mTLS admin
listener, for the operator and for the audit collector's automated responses — nothing
else of the admin API is open to the collector:

- ``GET /admin/v1/blocks``: the blocks in force;
- ``POST /admin/v1/blocks`` {"address", "seconds", "reason"?}: ``201``, the block (an
  address blocked already keeps the later end);
- ``DELETE /admin/v1/blocks/{address}``: ``200`` {"lifted": true|false}.

Every change is an event naming who made it (``block-added``, ``block-removed``); a
refusal is an ``admin-denied`` event. Bodies are strict (``400``, nothing changed).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trustmesh import events
from trustmesh.config import TrustmeshConfig
from trustmesh.gateway.blocklist import MAX_SECONDS, Block, Blocklist
from trustmesh.platform.admin import (
    Actor,
    Handler,
    guarded,
    named_by,
    operator_or_responder,
    read_body,
    record_read,
)
from trustmesh.reasons import Activity

__all__ = ["BlockAdmin", "NewBlock", "block_doc"]

MAX_BODY = 4 * 1024


class NewBlock(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    address: str = Field(max_length=64)
    seconds: int = Field(gt=0, le=MAX_SECONDS)
    reason: str = Field(default="", max_length=256)


def block_doc(block: Block) -> dict[str, Any]:
    return {
        "address": block.address,
        "until": datetime.fromtimestamp(block.until, UTC).isoformat(),
        "reason": block.reason,
        "by": block.by,
    }


class BlockAdmin:
    def __init__(
        self,
        config: TrustmeshConfig,
        blocks: Blocklist,
        sink: events.EventSink,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.blocks = blocks
        self.recorder = events.Recorder(sink, component="gateway")
        self.clock = clock
        self.operator = config.component_spiffe_id("operator")
        self.responder = config.component_spiffe_id("audit")

    def routes(self) -> list[Route]:
        base = "/admin/v1/blocks"
        return [
            Route(base, self._guarded("list-blocks", self.list_blocks), methods=["GET"]),
            Route(base, self._guarded("add-block", self.add), methods=["POST"]),
            Route(
                base + "/{address}", self._guarded("remove-block", self.remove), methods=["DELETE"]
            ),
        ]

    def _guarded(self, action: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return guarded(action, self._who, handler, self.recorder)

    async def _who(self, request: Request) -> Actor:
        return operator_or_responder(request, self.operator, self.responder)

    async def list_blocks(self, _: Request, actor: Actor) -> Response:
        found = self.blocks.active(self.clock())
        record_read(self.recorder, "list-blocks", actor)
        return JSONResponse({"blocks": [block_doc(b) for b in found]})

    async def add(self, request: Request, actor: Actor) -> Response:
        body = await read_body(request, NewBlock, MAX_BODY)
        block = self.blocks.block(
            body.address, seconds=body.seconds, reason=body.reason, by=actor.name, now=self.clock()
        )
        self._record(Activity.BLOCK_ADDED, f"address blocked for {body.seconds}s", block, actor)
        return JSONResponse(block_doc(block), status_code=201)

    async def remove(self, request: Request, actor: Actor) -> Response:
        block = self.blocks.unblock(request.path_params["address"], self.clock())
        if block is not None:
            self._record(Activity.BLOCK_REMOVED, "address block lifted", block, actor)
        return JSONResponse({"lifted": block is not None})

    def _record(self, code: Activity, message: str, block: Block, actor: Actor) -> None:
        peer, attributes = named_by(
            actor, {"address": block.address, "until": int(block.until), "reason": block.reason}
        )
        self.recorder.record(code, message, peer_spiffe_id=peer, attributes=attributes)

"""A real OTLP/HTTP receiver for the length of a fixture: it takes ``POST /v1/traces``
(protobuf ``ExportTraceServiceRequest``, as an OpenTelemetry Collector or Jaeger would),
decodes every span with OpenTelemetry's own protobuf messages, and answers an
``ExportTraceServiceResponse``. What arrived is kept, with each span's resource."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from trustmesh._proto.otlp import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass
class OtlpReceiver:
    server: http.server.ThreadingHTTPServer
    #: every span received: its fields as hex and text, and its resource's attributes
    spans: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def take(self, raw: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(raw)
        got = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    got.append(
                        {
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex() or None,
                            "name": span.name,
                            "resource": resource,
                            "attributes": {a.key: a.value for a in span.attributes},
                        }
                    )
        with self.arrived:
            self.spans += got
            self.arrived.notify_all()

    def trace(self, trace_id: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The spans of ``trace_id`` once at least ``count`` arrived (or the timeout)."""

        def of() -> list[dict[str, Any]]:
            return [s for s in self.spans if s["trace_id"] == trace_id]

        with self.arrived:
            self.arrived.wait_for(lambda: len(of()) >= count, timeout)
            return of()


def otlp_receiver() -> Iterator[OtlpReceiver]:
    box: list[OtlpReceiver] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status, answer = 200, ExportTraceServiceResponse().SerializeToString()
            if self.path != "/v1/traces" or self.headers.get("Content-Type") != (
                "application/x-protobuf"
            ):
                status, answer = 404, b""
                box[0].refused.append(f"{self.path} {self.headers.get('Content-Type')}")
            else:
                box[0].take(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    box.append(OtlpReceiver(server))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield box[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

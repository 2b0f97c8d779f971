"""What the admin APIs (the identity provider's, the identity service's) do alike: who
is asking — the operator's SVID, or an admin user — and how a refusal is answered."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.responses import JSONResponse

from trustmesh.errors import TrustmeshError

__all__ = ["OPERATOR", "Actor", "Refused", "failure_response"]

#: How events name the operator (an admin user is ``user:<name>``).
OPERATOR = "operator"


@dataclass(frozen=True)
class Actor:
    """Who made an admin request: the peer's SPIFFE ID, and a name for the record."""

    peer_spiffe_id: str | None
    name: str = OPERATOR

    @classmethod
    def user(cls, peer_spiffe_id: str | None, username: str) -> Actor:
        return cls(peer_spiffe_id, f"user:{username}")


class Refused(Exception):
    """An admin request refused: ``status`` and ``error`` go out, ``why`` goes out and
    into the event, ``sub`` (the user, when known) into the event only."""

    def __init__(self, status: int, error: str, why: str, sub: str | None = None) -> None:
        super().__init__(why)
        self.status, self.error, self.why, self.sub = status, error, why, sub

    def response(self) -> JSONResponse:
        headers = (
            {"WWW-Authenticate": 'Bearer error="invalid_token"'} if self.status == 401 else None
        )
        return JSONResponse(
            {"error": self.error, "message": self.why}, status_code=self.status, headers=headers
        )


def failure_response(exc: TrustmeshError) -> JSONResponse:
    """An admin action that failed on its input or its target: the error's own code and
    status (400 invalid_request, 404 not_found, 409 conflict…) and what was wrong."""
    return JSONResponse({"error": exc.code, "message": exc.detail}, status_code=exc.status)

"""One exception tree for all of trustmesh, each class with a stable ``code``.

::

    TrustmeshError                      code               status
    ├── ConfigError                     invalid_config     (exit 2)
    ├── UsageError                      invalid_request    400
    │   ├── PayloadTooLargeError        request_too_large  413
    │   └── UnsupportedMediaTypeError   unsupported_media_type 415
    ├── NotFoundError                   not_found          404
    ├── ConflictError                   conflict           409
    ├── AuthenticationError             unauthenticated    401
    │   ├── InvalidTokenError           invalid_token      401
    │   └── AttestationError            forbidden          403
    ├── PermissionDeniedError           forbidden          403
    ├── CryptoError                     crypto_error       500
    │   ├── SealError                   seal_error         500
    │   └── KeySourceError              key_source_error   500
    ├── StateError                      state_error        500
    └── UnavailableError                unavailable        503

Opaque outward, precise inward: ``code`` and ``public_message`` are what a client may see;
``detail`` (never a token, key or secret) is what an audit event records.
"""

from __future__ import annotations

from typing import ClassVar

from trustmesh.reasons import Reason

__all__ = [
    "AttestationError",
    "AuthenticationError",
    "ConfigError",
    "ConflictError",
    "CryptoError",
    "InvalidTokenError",
    "KeySourceError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "SealError",
    "StateError",
    "TrustmeshError",
    "UnavailableError",
    "UnsupportedMediaTypeError",
    "UsageError",
]


class TrustmeshError(Exception):
    """Root of every error trustmesh raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    public_message: ClassVar[str] = "internal error"

    def __init__(self, detail: str = "", *, reason: Reason | None = None) -> None:
        super().__init__(detail or self.public_message)
        self.detail = detail or self.public_message
        self.reason = reason

    def to_dict(self) -> dict[str, str]:
        """The outward, structured form: code and a message safe to show a client."""
        return {"error": self.code, "message": self.public_message}


class ConfigError(TrustmeshError):
    """The declaration or another input file is invalid. Carries every problem found."""

    code = "invalid_config"
    status = 400
    public_message = "invalid configuration"

    def __init__(self, detail: str, *, problems: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.problems = problems or (detail,)


class UsageError(TrustmeshError):
    code = "invalid_request"
    status = 400
    public_message = "invalid request"


class PayloadTooLargeError(UsageError):
    """A request body past its bound (read no further than the bound)."""

    code = "request_too_large"
    status = 413
    public_message = "request too large"


class UnsupportedMediaTypeError(UsageError):
    code = "unsupported_media_type"
    status = 415
    public_message = "unsupported media type"


class NotFoundError(TrustmeshError):
    code = "not_found"
    status = 404
    public_message = "not found"


class ConflictError(TrustmeshError):
    code = "conflict"
    status = 409
    public_message = "conflict"


class AuthenticationError(TrustmeshError):
    code = "unauthenticated"
    status = 401
    public_message = "authentication required"


class InvalidTokenError(AuthenticationError):
    code = "invalid_token"
    public_message = "invalid token"


class AttestationError(AuthenticationError):
    """A workload could not be attested, or matches no registration entry."""

    code = "forbidden"
    status = 403
    public_message = "no identity issued for this workload"


class PermissionDeniedError(TrustmeshError):
    code = "forbidden"
    status = 403
    public_message = "permission denied"


class CryptoError(TrustmeshError):
    code = "crypto_error"
    public_message = "cryptographic operation failed"


class SealError(CryptoError):
    """A sealed blob failed to open: wrong key, wrong context, or tampered bytes."""

    code = "seal_error"


class KeySourceError(CryptoError):
    """No usable sealing key: missing environment variable, weak key file permissions."""

    code = "key_source_error"


class StateError(TrustmeshError):
    """The state directory is missing, corrupt, or held by another process."""

    code = "state_error"


class UnavailableError(TrustmeshError):
    code = "unavailable"
    status = 503
    public_message = "service unavailable"

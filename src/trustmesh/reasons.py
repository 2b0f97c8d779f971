"""The closed vocabulary every component speaks: why a request was allowed or refused
(:class:`Reason`), what was done (:class:`Activity`), and how a refusal is answered
(:func:`answer`: one status and one public error code per reason, so a 403 is spelled
the same on every component).

The codes are kebab-case and stable: they are what an event's ``reason`` carries and
what detection rules match on. Nothing outside this module spells one as a literal
(``tests/test_reasons.py`` fails on it); every member is exercised by a test.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, TypeAlias

__all__ = [
    "ANSWERS",
    "LISTENER_REFUSALS",
    "STATUS_CODES",
    "Activity",
    "Answer",
    "Code",
    "Reason",
    "answer",
    "parse",
]


class Reason(enum.StrEnum):
    """Why a decision was made: an allow, a deny, or an error that refused closed."""

    OK = "ok"
    # workload identity
    ATTESTED = "attested"
    NO_MATCHING_ENTRY = "no-matching-entry"
    ATTESTATION_FAILED = "attestation-failed"
    PROCESS_EXITED = "process-exited"
    JOIN_TOKEN_INVALID = "join-token-invalid"
    JOIN_TOKEN_USED = "join-token-used"
    JOIN_TOKEN_EXPIRED = "join-token-expired"
    MISSING_SECURITY_HEADER = "missing-security-header"
    IDENTITY_NOT_HELD = "identity-not-held"
    DISCOVERY_LOOKUP = "discovery-lookup"
    DISCOVERY_REFUSED = "discovery-refused"
    # tokens
    TOKEN_EXPIRED = "token-expired"
    TOKEN_NOT_YET_VALID = "token-not-yet-valid"
    TOKEN_BAD_SIGNATURE = "token-bad-signature"
    TOKEN_WRONG_AUDIENCE = "token-wrong-audience"
    TOKEN_MALFORMED = "token-malformed"
    TOKEN_UNKNOWN_KEY = "token-unknown-key"
    TOKEN_REVOKED = "token-revoked"
    TOKEN_MISSING = "token-missing"
    TOKEN_WRONG_ISSUER = "token-wrong-issuer"
    TOKEN_NOT_BOUND = "token-not-bound"
    TOKEN_INACTIVE = "token-inactive"
    # identity provider
    TOKEN_ISSUED = "token-issued"
    TOKEN_REFUSED = "token-refused"
    TOKEN_INTROSPECTED = "token-introspected"
    SIGNING_KEY_UNAVAILABLE = "signing-key-unavailable"
    CLIENT_AUTH_FAILED = "client-auth-failed"
    ADMIN_DENIED = "admin-denied"
    ADMIN_READ = "admin-read"
    LOGIN_FAILED = "login-failed"
    LOGIN_SUCCEEDED = "login-succeeded"
    REVOCATION_FEED_DENIED = "revocation-feed-denied"
    # requests
    UNAUTHENTICATED = "unauthenticated"
    PEER_CERTIFICATE_MISSING = "no-peer-certificate"
    PEER_SVID_INVALID = "invalid-peer-svid"
    PATH_NON_CANONICAL = "path-non-canonical"
    ROUTE_NOT_FOUND = "route-not-found"
    METHOD_NOT_ALLOWED = "method-not-allowed"
    ROUTE_MATCHED = "route-matched"
    REQUEST_FORWARDED = "request-forwarded"
    IP_DENIED = "ip-denied"
    #: The client's address is blocked for a while (an automated response, or the operator).
    ADDRESS_BLOCKED = "address-blocked"
    FORWARDED_FOR_INVALID = "forwarded-for-invalid"
    CORS_DENIED = "cors-denied"
    API_KEY_VALID = "api-key-valid"
    API_KEY_MALFORMED = "api-key-malformed"
    API_KEY_UNKNOWN = "api-key-unknown"
    API_KEY_INVALID = "api-key-invalid"
    API_KEY_SUPERSEDED = "api-key-superseded"
    API_KEY_REVOKED = "api-key-revoked"
    API_KEY_EXPIRED = "api-key-expired"
    API_KEY_OUT_OF_SCOPE = "api-key-out-of-scope"
    KEY_STORE_UNAVAILABLE = "key-store-unavailable"
    VERIFICATION_UNAVAILABLE = "token-verification-unavailable"
    REQUEST_TOO_LARGE = "request-too-large"
    #: The request breaks its route's contract (OpenAPI document or JSON Schema).
    REQUEST_INVALID = "request-invalid"
    #: The request's content type is not one its route's contract accepts.
    MEDIA_TYPE_UNSUPPORTED = "media-type-unsupported"
    #: The injection filter found SQL injection, XSS, traversal or command injection.
    REQUEST_INJECTION = "request-injection"
    #: The injection filter gave no verdict in time (its crs workers failed or were late).
    INSPECTION_UNAVAILABLE = "inspection-unavailable"
    REQUEST_INCOMPLETE = "request-incomplete"
    UPSTREAM_UNAVAILABLE = "upstream-unavailable"
    UPSTREAM_TIMEOUT = "upstream-timeout"
    UPSTREAM_ANSWER_TOO_LARGE = "upstream-answer-too-large"
    # connections and request heads at a public listener
    CONNECTION_LIMIT = "connection-limit"
    CONNECTION_LIMIT_ADDRESS = "connection-limit-address"
    TLS_HANDSHAKE_TIMEOUT = "tls-handshake-timeout"
    TLS_HANDSHAKE_FAILED = "tls-handshake-failed"
    HEADER_TIMEOUT = "header-timeout"
    BODY_TIMEOUT = "body-timeout"
    HEADERS_TOO_LARGE = "headers-too-large"
    REQUEST_LINE_TOO_LONG = "request-line-too-long"
    REQUEST_MALFORMED = "request-malformed"
    HOST_INVALID = "host-invalid"
    UPGRADE_UNSUPPORTED = "upgrade-unsupported"
    # authorization
    POLICY_ALLOW = "policy-allow"
    POLICY_DENY = "policy-deny"
    RATE_LIMITED = "rate-limited"
    # the secrets service
    SECRETS_SEALED = "secrets-sealed"
    UNSEAL_SHARE_INVALID = "unseal-share-invalid"
    AUDIT_UNAVAILABLE = "audit-unavailable"
    #: its database cannot be reached (down, restarting): the request is refused, not lost
    STORE_UNAVAILABLE = "store-unavailable"
    #: any server: the request was still running at the drain's deadline (SIGTERM, then
    #: ``listen.drain``) and was cut: answered 503, or its connection closed
    SHUTTING_DOWN = "shutting-down"
    STORED_VALUE_CORRUPT = "stored-value-corrupt"
    #: The SPIFFE ID is suspended (an automated response, or the operator): the identity
    #: service issues it no SVID, and services refuse a peer presenting it.
    SPIFFE_ID_SUSPENDED = "suspended-spiffe-id"
    # runtime protection (trustmesh.sdk.guard): what a service's process did against its
    # declared runtime profile (blocked in enforce mode, recorded as would-deny in monitor)
    RUNTIME_CONNECT_DENIED = "runtime-connect-denied"
    RUNTIME_SUBPROCESS_DENIED = "runtime-subprocess-denied"
    RUNTIME_WRITE_DENIED = "runtime-write-denied"
    RUNTIME_DESERIALIZE_DENIED = "runtime-deserialize-denied"
    RUNTIME_DYNAMIC_CODE_DENIED = "runtime-dynamic-code-denied"
    RUNTIME_NATIVE_LIBRARY_DENIED = "runtime-native-library-denied"
    #: violations flood control counted and did not record one by one (their counts)
    RUNTIME_FLOOD = "runtime-flood"


class Activity(enum.StrEnum):
    """What a component did or saw happen: a thing created, changed or removed, a key
    rotated, an upstream taken out of rotation. Not a decision on a request."""

    SVID_ISSUED = "svid-issued"
    #: A process's own X.509-SVID has less than a fifth of its lifetime left and was not
    #: renewed (the identity service unreachable): it stops working at its expiry.
    SVID_EXPIRING = "svid-expiring"
    CA_PREPARED = "ca-prepared"
    CA_ACTIVATED = "ca-activated"
    CA_RETIRED = "ca-retired"
    CA_RENEWED = "ca-renewed"
    ENTRY_CREATED = "entry-created"
    #: A TLS server certificate (a database's, a cache's) issued by the workload CA.
    SERVER_CERT_ISSUED = "server-cert-issued"
    ENTRY_REMOVED = "entry-removed"
    JOIN_TOKEN_CREATED = "token-created"
    CLIENT_CREATED = "client-created"
    CLIENT_REMOVED = "client-removed"
    KEYS_ROTATED = "keys-rotated"
    KEY_CREATED = "key-created"
    KEY_ACTIVATED = "key-activated"
    KEY_RETIRED = "key-retired"
    KEY_REMOVED = "key-removed"
    TOKEN_REVOKED = "token-revoked"
    USER_CREATED = "user-created"
    USER_LOCKED = "user-locked"
    USER_UNLOCKED = "user-unlocked"
    MFA_RESET = "mfa-reset"
    PASSWORD_CHANGED = "password-changed"
    LOGOUT = "logout"
    API_KEY_CREATED = "api-key-created"
    API_KEY_ROTATED = "api-key-rotated"
    API_KEY_REVOKED = "api-key-revoked"
    UPSTREAM_EJECTED = "upstream-ejected"
    UPSTREAM_RESTORED = "upstream-restored"
    UPSTREAM_UNHEALTHY = "upstream-unhealthy"
    UPSTREAM_HEALTHY = "upstream-healthy"
    RATE_LIMIT_STORE_DOWN = "rate-limit-store-down"
    RATE_LIMIT_STORE_BACK = "rate-limit-store-back"
    BLOCK_ADDED = "block-added"
    BLOCK_REMOVED = "block-removed"
    #: An automated response action taken (or, in a dry run, planned), or undone.
    RESPONSE_TAKEN = "response-taken"
    RESPONSE_UNDONE = "response-undone"
    #: A component applied a changed declaration while serving (the gateway's reload).
    CONFIG_RELOADED = "config-reloaded"
    #: A producer's spool was full and events were dropped (the ``drop`` policy).
    EVENTS_DROPPED = "events-dropped"
    #: An alert or checkpoint copy the audit collector could not deliver to a receiver
    #: (a webhook, syslog) after every retry: stored still, but that copy is missing.
    EXPORT_FAILED = "export-failed"
    #: A detection rule matched: an alert (OCSF Detection Finding, class 2004).
    ALERT_RAISED = "alert-raised"
    #: A SPIFFE ID suspended (no SVID issued, refused by services), or the suspension lifted.
    SPIFFE_ID_SUSPENDED = "spiffe-id-suspended"
    SPIFFE_ID_RESTORED = "spiffe-id-restored"
    #: Records past their class's retention were removed from the audit log, under a
    #: signed prune checkpoint that names each one's link hash.
    RECORDS_PRUNED = "records-pruned"


#: What an event's ``reason`` carries: a decision's reason, or an activity.
Code: TypeAlias = Reason | Activity
_BY_VALUE: Final[dict[str, Code]] = {
    **{a.value: a for a in Activity},
    **{r.value: r for r in Reason},
}


def parse(value: str) -> Code:
    """The member spelled ``value`` (a decision's reason where a reason and an activity
    share a spelling); ValueError for anything else: the vocabulary is closed."""
    try:
        return _BY_VALUE[value]
    except (KeyError, TypeError):
        raise ValueError("not a reason or activity of trustmesh.reasons") from None


#: Every reason a public listener refuses a connection or a request head for.
LISTENER_REFUSALS: Final = frozenset(
    {
        Reason.CONNECTION_LIMIT,
        Reason.CONNECTION_LIMIT_ADDRESS,
        Reason.TLS_HANDSHAKE_TIMEOUT,
        Reason.TLS_HANDSHAKE_FAILED,
        Reason.HEADER_TIMEOUT,
        Reason.BODY_TIMEOUT,
        Reason.HEADERS_TOO_LARGE,
        Reason.REQUEST_LINE_TOO_LONG,
        Reason.REQUEST_MALFORMED,
        Reason.HOST_INVALID,
        Reason.UPGRADE_UNSUPPORTED,
    }
)


@dataclass(frozen=True)
class Answer:
    """How a refusal is answered to a client: HTTP status and the public ``error`` code
    (snake_case, as OAuth 2.0 spells its errors)."""

    status: int
    code: str


_BAD_REQUEST = Answer(400, "invalid_request")
_UNAUTHENTICATED = Answer(401, "unauthenticated")
_INVALID_TOKEN = Answer(401, "invalid_token")
_FORBIDDEN = Answer(403, "forbidden")
_UNAVAILABLE = Answer(503, "unavailable")

#: Every refusal reason, answered one way wherever it is answered.
ANSWERS: Final = MappingProxyType(
    {
        Reason.NO_MATCHING_ENTRY: _FORBIDDEN,
        Reason.ATTESTATION_FAILED: _FORBIDDEN,
        Reason.PROCESS_EXITED: _FORBIDDEN,
        Reason.JOIN_TOKEN_INVALID: _FORBIDDEN,
        Reason.JOIN_TOKEN_USED: _FORBIDDEN,
        Reason.JOIN_TOKEN_EXPIRED: _FORBIDDEN,
        Reason.MISSING_SECURITY_HEADER: _BAD_REQUEST,
        Reason.IDENTITY_NOT_HELD: _FORBIDDEN,
        Reason.DISCOVERY_REFUSED: _FORBIDDEN,
        **dict.fromkeys(
            (
                Reason.TOKEN_EXPIRED,
                Reason.TOKEN_NOT_YET_VALID,
                Reason.TOKEN_BAD_SIGNATURE,
                Reason.TOKEN_WRONG_AUDIENCE,
                Reason.TOKEN_MALFORMED,
                Reason.TOKEN_UNKNOWN_KEY,
                Reason.TOKEN_REVOKED,
                Reason.TOKEN_WRONG_ISSUER,
                Reason.TOKEN_NOT_BOUND,
                Reason.TOKEN_INACTIVE,
            ),
            _INVALID_TOKEN,
        ),
        Reason.TOKEN_MISSING: _UNAUTHENTICATED,
        Reason.TOKEN_REFUSED: Answer(400, "invalid_grant"),
        Reason.SIGNING_KEY_UNAVAILABLE: _UNAVAILABLE,
        Reason.CLIENT_AUTH_FAILED: Answer(401, "invalid_client"),
        Reason.ADMIN_DENIED: _FORBIDDEN,
        Reason.LOGIN_FAILED: _UNAUTHENTICATED,
        Reason.REVOCATION_FEED_DENIED: _FORBIDDEN,
        Reason.UNAUTHENTICATED: _UNAUTHENTICATED,
        Reason.PEER_CERTIFICATE_MISSING: _UNAUTHENTICATED,
        Reason.PEER_SVID_INVALID: _UNAUTHENTICATED,
        Reason.PATH_NON_CANONICAL: _BAD_REQUEST,
        Reason.ROUTE_NOT_FOUND: Answer(404, "not_found"),
        Reason.METHOD_NOT_ALLOWED: Answer(405, "method_not_allowed"),
        Reason.IP_DENIED: _FORBIDDEN,
        Reason.ADDRESS_BLOCKED: _FORBIDDEN,
        Reason.FORWARDED_FOR_INVALID: _BAD_REQUEST,
        Reason.CORS_DENIED: _FORBIDDEN,
        **dict.fromkeys(
            (
                Reason.API_KEY_MALFORMED,
                Reason.API_KEY_UNKNOWN,
                Reason.API_KEY_INVALID,
                Reason.API_KEY_SUPERSEDED,
                Reason.API_KEY_REVOKED,
                Reason.API_KEY_EXPIRED,
                Reason.API_KEY_OUT_OF_SCOPE,
            ),
            Answer(401, "invalid_key"),
        ),
        Reason.KEY_STORE_UNAVAILABLE: _UNAVAILABLE,
        Reason.VERIFICATION_UNAVAILABLE: _UNAVAILABLE,
        Reason.REQUEST_TOO_LARGE: Answer(413, "request_too_large"),
        Reason.REQUEST_INVALID: _BAD_REQUEST,
        Reason.MEDIA_TYPE_UNSUPPORTED: Answer(415, "unsupported_media_type"),
        Reason.REQUEST_INJECTION: _FORBIDDEN,
        Reason.INSPECTION_UNAVAILABLE: _UNAVAILABLE,
        Reason.REQUEST_INCOMPLETE: _BAD_REQUEST,
        Reason.UPSTREAM_UNAVAILABLE: _UNAVAILABLE,
        Reason.UPSTREAM_TIMEOUT: Answer(504, "timeout"),
        Reason.UPSTREAM_ANSWER_TOO_LARGE: Answer(502, "bad_gateway"),
        Reason.CONNECTION_LIMIT: _UNAVAILABLE,
        Reason.CONNECTION_LIMIT_ADDRESS: Answer(429, "rate_limited"),
        Reason.TLS_HANDSHAKE_TIMEOUT: Answer(408, "request_timeout"),
        Reason.TLS_HANDSHAKE_FAILED: _BAD_REQUEST,
        Reason.HEADER_TIMEOUT: Answer(408, "request_timeout"),
        Reason.BODY_TIMEOUT: Answer(408, "request_timeout"),
        Reason.HEADERS_TOO_LARGE: Answer(431, "headers_too_large"),
        Reason.REQUEST_LINE_TOO_LONG: Answer(414, "uri_too_long"),
        Reason.REQUEST_MALFORMED: _BAD_REQUEST,
        Reason.HOST_INVALID: _BAD_REQUEST,
        Reason.UPGRADE_UNSUPPORTED: Answer(501, "not_implemented"),
        Reason.POLICY_DENY: _FORBIDDEN,
        Reason.RATE_LIMITED: Answer(429, "rate_limited"),
        Reason.SECRETS_SEALED: _UNAVAILABLE,
        Reason.UNSEAL_SHARE_INVALID: _BAD_REQUEST,
        Reason.AUDIT_UNAVAILABLE: _UNAVAILABLE,
        Reason.STORE_UNAVAILABLE: _UNAVAILABLE,
        Reason.SHUTTING_DOWN: _UNAVAILABLE,
        Reason.STORED_VALUE_CORRUPT: Answer(500, "service_error"),
        Reason.SPIFFE_ID_SUSPENDED: _FORBIDDEN,
        **dict.fromkeys(
            (
                Reason.RUNTIME_CONNECT_DENIED,
                Reason.RUNTIME_SUBPROCESS_DENIED,
                Reason.RUNTIME_WRITE_DENIED,
                Reason.RUNTIME_DESERIALIZE_DENIED,
                Reason.RUNTIME_DYNAMIC_CODE_DENIED,
                Reason.RUNTIME_NATIVE_LIBRARY_DENIED,
                Reason.RUNTIME_FLOOD,
            ),
            _FORBIDDEN,
        ),
    }
)
#: The code of a status that did not come from a reason here: a service's own error the
#: gateway answers in its place, a listener's answer to a request it cannot parse.
STATUS_CODES: Final = MappingProxyType(
    {
        400: "invalid_request",
        401: "unauthenticated",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        408: "request_timeout",
        413: "request_too_large",
        414: "uri_too_long",
        429: "rate_limited",
        431: "headers_too_large",
        500: "service_error",
        501: "not_implemented",
        502: "bad_gateway",
        503: "unavailable",
        504: "timeout",
    }
)


def answer(reason: Reason) -> Answer:
    """How ``reason`` is answered (KeyError for a reason that allows)."""
    return ANSWERS[reason]

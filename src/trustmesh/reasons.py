"""The shared vocabulary of decision reasons (kebab-case), spoken by every component."""

from __future__ import annotations

import enum

__all__ = ["Reason"]


class Reason(enum.StrEnum):
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
    SVID_ISSUED = "svid-issued"
    SVID_ROTATED = "svid-rotated"
    CA_PREPARED = "ca-prepared"
    CA_ACTIVATED = "ca-activated"
    CA_RETIRED = "ca-retired"
    CA_RENEWED = "ca-renewed"
    ENTRY_CREATED = "entry-created"
    ENTRY_REMOVED = "entry-removed"
    TOKEN_CREATED = "token-created"
    DISCOVERY_LOOKUP = "discovery-lookup"
    DISCOVERY_REFUSED = "discovery-refused"
    # tokens
    TOKEN_VALID = "token-valid"
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
    # identity provider
    TOKEN_ISSUED = "token-issued"
    TOKEN_REFUSED = "token-refused"
    TOKEN_INTROSPECTED = "token-introspected"
    CLIENT_AUTH_FAILED = "client-auth-failed"
    CLIENT_CREATED = "client-created"
    CLIENT_REMOVED = "client-removed"
    ADMIN_DENIED = "admin-denied"
    ADMIN_READ = "admin-read"
    KEYS_ROTATED = "keys-rotated"
    LOGIN_FAILED = "login-failed"
    LOGIN_SUCCEEDED = "login-succeeded"
    LOGOUT = "logout"
    USER_CREATED = "user-created"
    USER_LOCKED = "user-locked"
    USER_UNLOCKED = "user-unlocked"
    MFA_RESET = "mfa-reset"
    KEY_CREATED = "key-created"
    KEY_ACTIVATED = "key-activated"
    KEY_RETIRED = "key-retired"
    KEY_REMOVED = "key-removed"
    # requests
    UNAUTHENTICATED = "unauthenticated"
    PATH_NON_CANONICAL = "path-non-canonical"
    # authorization
    POLICY_ALLOW = "policy-allow"
    POLICY_DENY = "policy-deny"
    RATE_LIMITED = "rate-limited"

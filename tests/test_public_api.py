"""The public facades: a change to what they export is a deliberate, reviewed change."""

from __future__ import annotations

import importlib

import pytest

EXPECTED = {
    "trustmesh.crypto": [
        "ALLOWED_ALGORITHMS",
        "BACKDATE",
        "DEV_KEY_WARNING",
        "EDGE_CA_TTL",
        "FORBIDDEN_HEADERS",
        "KEY_TYPES",
        "LOCAL_NAMES",
        "MAX_PASSWORD_LENGTH",
        "MAX_TOKEN_LENGTH",
        "MIN_PASSWORD_LENGTH",
        "SEAL_KEY_ENV",
        "SEAL_PASSPHRASE_ENV",
        "TOTP_STEP",
        "Expect",
        "Issuer",
        "PrivateKey",
        "PublicKey",
        "SealKey",
        "ServerCertificate",
        "SigningKey",
        "cert_der",
        "cert_pem",
        "certs_from_der",
        "certs_from_pem",
        "certs_to_der",
        "certificate_request",
        "check_password_policy",
        "create_edge_ca",
        "create_intermediate_ca",
        "create_root_ca",
        "csr_public_key",
        "edge_ca_path",
        "fingerprint_sha256",
        "generate_key",
        "generate_signing_key",
        "hash_password",
        "is_sealed",
        "issue_server_certificate",
        "issue_x509_svid",
        "jwk_set",
        "jwks_document",
        "key_id",
        "leaf_spiffe_id",
        "load_or_create_sealed",
        "load_or_create_sealed_key",
        "load_or_create_signing_key",
        "load_seal_key",
        "load_server_certificate",
        "local_server_certificate",
        "needs_rehash",
        "new_totp_secret",
        "open_sealed",
        "prepare_password_checks",
        "private_key_from_der",
        "private_key_to_der",
        "private_key_to_pem",
        "public_jwk",
        "reseal",
        "seal",
        "replace_file",
        "server_certificate",
        "server_certificate_for",
        "sign_detached",
        "sign_jwt",
        "signing_key_from_seed",
        "signing_key_id",
        "signing_public_key",
        "svid_dns_name",
        "totp_code",
        "totp_uri",
        "unsigned_claims",
        "unverified_header",
        "unverified_issuer",
        "uri_sans",
        "verify_detached",
        "verify_jws",
        "verify_jwt",
        "verify_password",
        "verify_svid_chain",
        "verify_totp",
        "verifying_keys",
    ],
    "trustmesh.k8s": [
        "Edge",
        "RenderOptions",
        "Workload",
        "check_image",
        "edges",
        "render",
        "to_yaml",
        "workloads",
        "write_files",
    ],
    "trustmesh.sdk": [
        "ENDPOINT_ENV",
        "AuthenticationError",
        "UnavailableError",
        "JOIN_TOKEN_ENV",
        "ObjectPolicy",
        "OnBehalfClient",
        "Runtime",
        "ServiceClient",
        "User",
        "authorize",
        "client",
        "current",
        "redeem_join_token",
        "redeem_join_token_from_env",
        "request_token",
        "run_service",
        "secret",
        "secrets",
    ],
    "trustmesh.testing": [
        "FakeClock",
        "FixedSVIDSource",
        "PrivateRedis",
        "RunningIdentityServer",
        "identity_server_in_thread",
        "run_cli",
        "until",
        "until_async",
    ],
}


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_all_is_pinned(module: str) -> None:
    mod = importlib.import_module(module)
    exported = list(mod.__all__)
    assert sorted(exported) == sorted(EXPECTED[module])
    for name in exported:
        assert hasattr(mod, name), name


def test_only_crypto_imports_hazmat() -> None:
    """STYLE: trustmesh.crypto is the only importer of cryptography.hazmat."""
    from pathlib import Path

    import trustmesh

    root = Path(trustmesh.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "hazmat" in path.read_text() and path.parent.name != "crypto"
    ]
    assert offenders == []


def test_sdk_never_imports_components() -> None:
    """ARCHITECTURE: the SDK speaks protocols; it never imports identity, auth, secrets or
    gateway internals, so a team can swap those for SPIRE, Keycloak or Vault."""
    from pathlib import Path

    import trustmesh

    sdk = Path(trustmesh.__file__).parent / "sdk"
    for path in sdk.rglob("*.py"):
        text = path.read_text()
        for component in ("identity", "auth", "secrets", "gateway"):
            assert f"trustmesh.{component}" not in text, (path.name, component)

"""An optional admission policy: Kyverno admits a pod of the namespace only when each of
its images carries a cosign signature made with the given key (``verifyImages``), and
only by digest (``verifyDigest``; ``mutateDigest`` is off: the renderer already refuses a
reference without one).

The key is a *public* key; a private key given by mistake is refused, so that it never
lands in a manifest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from trustmesh.errors import UsageError

__all__ = ["POLICY_NAME", "check_public_key", "verify_images_policy"]

POLICY_NAME: Final = "trustmesh-verify-images"
_BEGIN: Final = "-----BEGIN PUBLIC KEY-----"
_END: Final = "-----END PUBLIC KEY-----"


def check_public_key(text: str, *, source: str) -> str:
    """The PEM public key in ``text`` (read from ``source``), or a :class:`UsageError`."""
    if "PRIVATE KEY" in text:
        raise UsageError(
            f"{source} holds a private key; verify-images takes the signer's public key "
            "(cosign.pub), and a private key must never be written into a manifest"
        )
    stripped = text.strip()
    if not stripped.startswith(_BEGIN) or not stripped.endswith(_END):
        raise UsageError(f"{source} is not a PEM public key (expected {_BEGIN} … {_END})")
    return stripped + "\n"


def _repository(image: str) -> str:
    """``registry:5000/org/trustmesh`` of ``registry:5000/org/trustmesh:1.0@sha256:…``."""
    name = image.partition("@")[0]
    head, slash, last = name.rpartition("/")
    return f"{head}{slash}{last.partition(':')[0]}"


def verify_images_policy(images: Iterable[str], ns: str, public_key: str) -> dict[str, Any]:
    references = sorted({f"{_repository(image)}*" for image in images})
    return {
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": POLICY_NAME, "labels": {"app.kubernetes.io/part-of": "trustmesh"}},
        "spec": {
            "validationFailureAction": "Enforce",
            "background": False,
            "webhookTimeoutSeconds": 30,
            "rules": [
                {
                    "name": "signed-by-the-release-key",
                    "match": {"any": [{"resources": {"kinds": ["Pod"], "namespaces": [ns]}}]},
                    "verifyImages": [
                        {
                            "imageReferences": references,
                            "attestors": [
                                {"count": 1, "entries": [{"keys": {"publicKeys": public_key}}]}
                            ],
                            "mutateDigest": False,
                            "verifyDigest": True,
                            "required": True,
                        }
                    ],
                }
            ],
        },
    }

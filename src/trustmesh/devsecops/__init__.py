"""The CI gates' own checks (``make gates``): what a tool's answer means, decided here.

- :mod:`~trustmesh.devsecops.depaudit` — pip-audit over the lock: ``clean``,
  ``vulnerable``, ``incomplete`` or ``not-run`` (never "clean" when nothing was audited);
- :mod:`~trustmesh.devsecops.sbom` — the CycloneDX SBOM checked against the lock;
- :mod:`~trustmesh.devsecops.secretscan` — detect-secrets against the audited baseline.

Each is run as ``python -m trustmesh.devsecops audit LOCK``, ``… sbom-check SBOM LOCK``
and ``… secrets-check .secrets.baseline``. Development tooling: it needs the ``dev`` extra
(pip-audit, cyclonedx-bom, detect-secrets), and nothing at run time imports it.
"""

from __future__ import annotations

__all__: list[str] = []

"""A workload, run as its own process by the tests: redeems a join token if given one,
then asks the Workload API for an X.509-SVID with py-spiffe, and prints what happened as JSON."""

from __future__ import annotations

import json
import os
import sys

from spiffe import WorkloadApiClient


def main() -> int:
    address, action = sys.argv[1], sys.argv[2]
    result: dict[str, object] = {"pid": os.getpid()}
    try:
        token = os.environ.get("TRUSTMESH_JOIN_TOKEN")
        if token:
            import asyncio

            from trustmesh.sdk import redeem_join_token

            result["joined"] = asyncio.run(redeem_join_token(address, token))
        if action == "x509":
            with WorkloadApiClient(address) as client:
                svid = client.fetch_x509_svid()
                result["spiffe_id"] = str(svid.spiffe_id)
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - reported to the test
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Workload identity: the SPIFFE CA, the Workload API, attestation and rotation."""

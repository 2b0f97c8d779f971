"""The secrets service: Vault's HTTP API (KV v2, transit, cert auth, ``sys/``) over mTLS,
envelope encryption at rest under a Shamir-split key, path policies per SPIFFE ID, and
every request audited. See :mod:`trustmesh.secrets.app` for the request stages."""

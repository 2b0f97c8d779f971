"""Wire definitions shared by servers and clients (generated; see ``make proto``).

The SPIFFE Workload API messages live here, outside both the identity service and the
SDK, because they are a protocol, not either side's internals.
"""

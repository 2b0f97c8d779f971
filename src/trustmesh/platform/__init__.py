"""The platform every server component stands on (the identity service, the identity
provider, the gateway, and the components still to come): the process entry and its
exit codes (:mod:`.process`), the listeners (:mod:`.listeners`: mTLS, public TLS,
loopback; bounded by :mod:`.guard` and :mod:`.protocol`), the admin API's guard and its
error answers (:mod:`.admin`), and the names components agree on (:mod:`.names`).

A service imports the SDK (:mod:`trustmesh.sdk`); a component imports the SDK's public
modules and this package; this package imports the SDK and the foundation, never a
component. ``tests/test_layers.py`` holds the rule; ``docs/architecture.md`` draws it.
"""

"""How an OAuth client authenticates (RFC 7591 §2 ``token_endpoint_auth_method``): the
one list that registration, the endpoints, discovery and the CLI derive theirs from.
A client authenticates only the way it was registered. Light to import (the CLI does).

- ``tls_client_auth`` (RFC 8705 §2.1.2): its certificate's URI SAN is its SPIFFE ID;
- ``private_key_jwt`` (RFC 7523 §2.2, OIDC Core §9): an assertion signed with a
  registered key;
- ``client_secret_basic`` (RFC 6749 §2.3.1): a generated secret, in HTTP Basic only
  (``client_secret_post`` puts it in the body, which §2.3.1 does not recommend);
- ``none``: a public client (a browser or native app) has no credentials; PKCE
  (RFC 7636) protects its authorization codes. It may use the code and refresh grants
  and revoke its own tokens (RFC 7009 §5), nothing else.
"""

from __future__ import annotations

__all__ = ["AUTH_METHODS", "CLIENT_METHODS", "PUBLIC_METHOD"]

#: How a confidential client authenticates.
AUTH_METHODS = ("tls_client_auth", "private_key_jwt", "client_secret_basic")
#: A public client's method.
PUBLIC_METHOD = "none"
#: Every method a client can be registered with.
CLIENT_METHODS = (*AUTH_METHODS, PUBLIC_METHOD)

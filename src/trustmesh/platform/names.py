"""Names two components agree on, and no service needs."""

#: The client id of the gateway at the provider (a managed client, authenticated by its
#: SVID): it introspects the tokens addressed to it. Not a valid service name.
GATEWAY_CLIENT_ID = "trustmesh/gateway"

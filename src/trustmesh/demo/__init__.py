"""A small shop built on the SDK, as any team's services would be: orders calls inventory
and payments; nobody may call orders but what the declaration allows; payments may not
call orders. Each service imports only ``trustmesh.sdk`` (and FastAPI)."""

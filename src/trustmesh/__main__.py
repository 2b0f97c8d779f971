"""``python -m trustmesh`` is the ``trustmesh`` command."""

from trustmesh.cli import main

main()

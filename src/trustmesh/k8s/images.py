"""Which image each pod runs: only references pinned by digest.

A tag names whatever was pushed under it last; only ``@sha256:<64 hex>`` names the bytes
that were built, scanned and signed. So every image is refused unless it carries a
digest (a tag may stay beside it, for people: ``repo:1.2@sha256:…``).

``--image REF`` sets the image of every pod; ``--image NAME=REF`` that of one component or
service (an unknown NAME is refused, naming the known ones).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

from trustmesh.errors import UsageError

__all__ = ["DEFAULT", "IMAGE_EXPECTED", "check_image", "images_for"]

#: The key of the image every pod runs unless its own is given.
DEFAULT: Final = "*"

IMAGE_EXPECTED: Final = (
    "an image pinned by digest, such as "
    "registry.example/trustmesh:1.0@sha256:<64 lower-case hex digits>"
)

_COMPONENT: Final = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY: Final = re.compile(
    # an optional registry (a host, with a port), then the path (distribution's grammar)
    rf"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{{1,5}})?/)?"
    rf"{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?",
    re.A,
)
_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}", re.A)


def check_image(reference: str, *, name: str = DEFAULT) -> str:
    """``reference`` when it is pinned by digest; raise :class:`UsageError` naming it
    (and the pod it was meant for) otherwise."""
    where = "" if name == DEFAULT else f" (for {name})"
    repository, at, digest = reference.partition("@")
    if not at:
        raise UsageError(
            f"image {reference!r}{where} is not pinned by digest: a tag can be moved to "
            f"other bytes; expected {IMAGE_EXPECTED}"
        )
    if _DIGEST.fullmatch(digest) is None:
        raise UsageError(
            f"image {reference!r}{where} has digest {digest!r}, which is not sha256:<64 hex>; "
            f"expected {IMAGE_EXPECTED}"
        )
    if _REPOSITORY.fullmatch(repository) is None:
        raise UsageError(
            f"image {reference!r}{where}: {repository!r} is not an image repository; "
            f"expected {IMAGE_EXPECTED}"
        )
    return reference


def images_for(options: Iterable[str], names: Iterable[str]) -> Mapping[str, str]:
    """Each pod's image from ``--image`` options (``REF`` or ``NAME=REF``); every pod in
    ``names`` must end up with one."""
    known = sorted(names)
    chosen: dict[str, str] = {}
    for option in options:
        name, eq, reference = option.partition("=")
        if not eq:
            name, reference = DEFAULT, option
        elif name not in known:
            raise UsageError(
                f"--image {option!r}: {name!r} is not a component or service of this "
                f"declaration (one of: {', '.join(known)})"
            )
        if name in chosen:
            raise UsageError(
                f"--image is given twice for {'every pod' if name == DEFAULT else name}"
            )
        chosen[name] = check_image(reference, name=name)
    missing = [name for name in known if name not in chosen and DEFAULT not in chosen]
    if missing:
        raise UsageError(
            f"no image for {', '.join(missing)}: give --image REF (every pod) or "
            f"--image NAME=REF, {IMAGE_EXPECTED}"
        )
    return {name: chosen.get(name, chosen.get(DEFAULT, "")) for name in known}

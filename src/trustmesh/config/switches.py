"""Test-only defence switches: the declaration's ``testing: {defences_off: [...]}``.

Each control ``trustmesh attack`` judges must be proven to matter: a test turns that
one defence off and shows that the attack then reports the failure (issue 20). These
switches are how, and they are built so that no real stack can run with one on:

- the names are a closed set (:data:`DEFENCES`); any other is a config error naming it;
- a switch is honoured only in a process whose environment has
  ``TRUSTMESH_TESTING_SWITCHES=1`` (:data:`SWITCHES_ENV`). Every process that loads a
  declaration naming one without it refuses to start (:func:`check_switches`: a
  ConfigError, exit 2) — ``trustmesh up``, each component, each declared service,
  ``trustmesh attack`` — rather than run with the defence on while the declaration
  says off, or off where nobody asked;
- ``trustmesh config check --strict`` refuses the section, naming each switch
  (:mod:`trustmesh.config.strict`);
- each switch is honoured by one component, at the one point where it decides that
  defence, when that part is built: nothing is asked per request, so a stack without
  switches pays nothing. The component says so on stderr at start, one loud line per
  defence it turns off (:func:`defences_off`). A reload changes none of them.

This module lives in the foundation (the components read it); the tests' helpers are in
:mod:`trustmesh.testing.switches`. What each switch turns off, and where:

- ``token-signature`` (gateway): its token verifier
  (:class:`~trustmesh.sdk.tokens.TokenVerifier`) takes a token naming an allowed
  algorithm without checking its key or signature;
- ``token-algorithms`` (gateway): the same verifier takes a token whose header names
  ``none`` unsigned (the algorithm allow-list off);
- ``token-format`` (gateway): ``GatewayApp._bearer`` lets a request whose bearer
  credential is not a JWT on as an anonymous caller's (failing open), not ``401``;
- ``token-audience`` (gateway): its token verifier does not check ``aud``;
- ``token-binding`` (gateway): its token verifier does not check ``cnf.x5t#S256``
  (RFC 8705 §3);
- ``path-normalisation`` (gateway): ``GatewayApp._path`` resolves a non-canonical path
  as a lenient server would (escapes decoded once, ``\\`` read as ``/``, dot segments
  resolved) instead of refusing it;
- ``request-framing`` (gateway): its public listener's parser (llhttp) takes a request
  with both Content-Length and Transfer-Encoding (its ``lenient_chunked_length``)
  instead of refusing it;
- ``service-mtls`` (service): a declared service's listener asks for a client
  certificate but does not require one;
- ``service-token`` (service): a declared service's middleware has no token verifier:
  a call its call policy allows needs no token;
- ``call-policy`` (service): a declared service's call authorizer
  (:class:`~trustmesh.policy.calls.CallAuthorizer`) allows every call;
- ``secrets-policy`` (secrets): the compiled secrets policies let every identity of the
  trust domain log in and do anything;
- ``audit-chain`` (attack): the audit log's verifier, as ``trustmesh attack`` runs it,
  does not check each record's link to the one before (the checkpoints still are).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from trustmesh.errors import ConfigError

if TYPE_CHECKING:
    from trustmesh.config.models import TrustmeshConfig

__all__ = [
    "DEFENCES",
    "SWITCHES_ENV",
    "SwitchesConfig",
    "check_switches",
    "defences_off",
]

SWITCHES_ENV: Final = "TRUSTMESH_TESTING_SWITCHES"

#: Every switch: the component that honours it, and what goes off.
DEFENCES: Final[Mapping[str, tuple[str, str]]] = {
    "token-signature": ("gateway", "tokens are taken without their signature checked"),
    "token-algorithms": ("gateway", 'a token naming "alg": "none" is taken unsigned'),
    "token-format": ("gateway", "a bearer credential that is not a JWT passes as anonymous"),
    "token-audience": ("gateway", "a token's audience is not checked"),
    "token-binding": ("gateway", "a token's certificate binding (cnf) is not checked"),
    "path-normalisation": ("gateway", "non-canonical paths are resolved, not refused"),
    "request-framing": ("gateway", "Content-Length with Transfer-Encoding is parsed"),
    "service-mtls": ("service", "a client certificate is not required"),
    "service-token": ("service", "no bearer token is required"),
    "call-policy": ("service", "the call policy allows every call"),
    "secrets-policy": ("secrets", "every identity may log in and do anything"),
    "audit-chain": ("attack", "the verifier does not check the records' links"),
}


def _known(names: list[str]) -> list[str]:
    for name in names:
        if name not in DEFENCES:
            raise PydanticCustomError(
                "invalid",
                "{problem} (expected {expected})",
                {
                    "problem": f"{name!r} is not a defence switch",
                    "expected": "one of: " + ", ".join(DEFENCES),
                },
            )
    if len(set(names)) != len(names):
        raise PydanticCustomError(
            "invalid",
            "{problem} (expected {expected})",
            {"problem": "a switch is named twice", "expected": "each switch once"},
        )
    return names


class SwitchesConfig(BaseModel):
    """Test-only: the defences turned off, honoured only with ``TRUSTMESH_TESTING_SWITCHES=1``
    (never ship it: ``config check --strict`` refuses it)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    defences_off: Annotated[list[str], AfterValidator(_known)] = Field(
        default_factory=list,
        description="Defences turned off for a test (each a name of "
        "trustmesh.config.switches.DEFENCES); a process without "
        "TRUSTMESH_TESTING_SWITCHES=1 refuses to start.",
    )


def _declared(config: TrustmeshConfig) -> list[str]:
    return list(config.testing.defences_off) if config.testing is not None else []


def check_switches(config: TrustmeshConfig, environ: Mapping[str, str] | None = None) -> None:
    """Refuse (ConfigError) a declaration that names a switch in a process whose
    environment does not allow them: what every process loading a declaration calls
    before it starts anything."""
    declared = _declared(config)
    allowed = (os.environ if environ is None else environ).get(SWITCHES_ENV) == "1"
    if declared and not allowed:
        raise ConfigError(
            f"testing.defences_off: test-only switches ({', '.join(declared)}) turn defences "
            f"off; they are refused unless {SWITCHES_ENV}=1 is set (never in production)"
        )


def defences_off(
    config: TrustmeshConfig, component: str, environ: Mapping[str, str] | None = None
) -> frozenset[str]:
    """The switches ``component`` honours in this process (after :func:`check_switches`),
    each announced loudly on stderr: call it once, where the component is built."""
    check_switches(config, environ)
    off = frozenset(name for name in _declared(config) if DEFENCES[name][0] == component)
    for name in sorted(off):
        line = f"{component}: TESTING SWITCH {name}: DEFENCE OFF — {DEFENCES[name][1]}"
        print(f"WARNING: {line}", file=sys.stderr, flush=True)
    return off

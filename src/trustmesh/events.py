"""The OCSF-shaped security event every trustmesh component emits.

An :class:`Event` is a frozen value built with :func:`event` and written by an
:class:`EventSink`. ``Event.to_ocsf()`` maps it onto an OCSF 1.3 object; the trustmesh
facts (SPIFFE IDs, ``sub``, ``client_id``, ``jti``, ``trace_id``, decision, reason code)
live under ``unmapped.trustmesh``. Until the audit service exists, events are written as
JSON lines by :class:`JsonLinesSink` and read back with :func:`read_events`.

Never a secret inside. Every string is checked when the event is built, and an event
that carries one is refused (:class:`~trustmesh.errors.UsageError` from :func:`event`,
a pydantic ``ValidationError`` from ``Event(...)``; neither repeats the offending value):

* a compact JWS/JWE anywhere in a string: base64url segments joined by dots whose
  first segment decodes to a JSON object with ``alg`` (a ``jti`` is an id, not a token,
  and is accepted);
* a PEM block (``-----BEGIN``) or an RFC 6750 bearer credential (``Bearer <b64token>``);
* an attribute key naming a secret: it contains (case-insensitive, ``-`` and ``.`` read
  as ``_``) one of ``password passwd passphrase secret token authorization private_key
  api_key apikey cookie credential bearer totp``, unless it is one of the names that
  describe a secret without holding it: ``token_type``, ``token_type_hint``,
  ``secret_path``, ``secret_version``. Attribute *values* get the checks above too.

Log injection: identifiers (component, activity name, reason, SPIFFE IDs, ``sub``,
``client_id``, ``jti``, ``trace_id``, endpoint names, attribute keys) refuse control,
format and line-separator characters. Free text (``message``, attribute values) may hold
them: the JSON encoding escapes them, and it is ASCII-only, so one event is one line.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import ipaddress
import json
import os
import re
import stat
import threading
import time
import types
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import (
    Annotated,
    Any,
    Final,
    Protocol,
    Self,
    TypedDict,
    Unpack,
    runtime_checkable,
)

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from trustmesh import __version__
from trustmesh.errors import StateError, UsageError
from trustmesh.reasons import ANSWERS, LISTENER_REFUSALS, Activity, Code, Reason, parse

__all__ = [
    "OCSF_VERSION",
    "AttributeValue",
    "Decision",
    "Endpoint",
    "Event",
    "EventClass",
    "EventSink",
    "FanoutSink",
    "JsonLinesSink",
    "MemorySink",
    "Recorder",
    "Severity",
    "Shape",
    "Status",
    "event",
    "new_uid",
    "read_events",
    "restamp",
    "set_trace_source",
    "shape_of",
]

OCSF_VERSION = "1.3.0"
_MAX_ID = 2048  # SPIFFE IDs may be up to 2048 bytes
_MAX_TEXT = 4096
_MAX_ATTRIBUTES = 32
_MAX_LINE = 1 << 20
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: A rendered event with holes: the literal text around them, and which value fills each
#: (see ``_skeleton``).
_Skeleton = tuple[tuple[str, ...], tuple[int, ...]]


class EventClass(enum.IntEnum):
    """The OCSF 1.3 event classes trustmesh emits; the value is ``class_uid``.

    Common activities (``activity_id`` / ``activity_name``):

    * ``AUTHENTICATION`` (3002): 1 Logon, 2 Logoff, 3 Authentication Ticket,
      4 Service Ticket Request, 99 Other.
    * ``AUTHORIZE_SESSION`` (3003): 1 Assign Privileges, 2 Assign Groups, 99 Other.
    * ``ENTITY_MANAGEMENT`` (3004): 1 Create, 2 Read, 3 Update, 4 Delete, 5 Move,
      6 Enroll, 7 Unenroll, 8 Enable, 9 Disable, 99 Other.
    * ``API_ACTIVITY`` (6003): 1 Create, 2 Read, 3 Update, 4 Delete, 99 Other.
    * ``DETECTION_FINDING`` (2004): 1 Create, 2 Update, 3 Close, 99 Other.
    """

    class_name: str
    category_uid: int
    category_name: str

    def __new__(cls, class_uid: int, class_name: str, category_uid: int, category: str) -> Self:
        member = int.__new__(cls, class_uid)
        member._value_ = class_uid
        member.class_name = class_name
        member.category_uid = category_uid
        member.category_name = category
        return member

    DETECTION_FINDING = (2004, "Detection Finding", 2, "Findings")
    AUTHENTICATION = (3002, "Authentication", 3, "Identity & Access Management")
    AUTHORIZE_SESSION = (3003, "Authorize Session", 3, "Identity & Access Management")
    ENTITY_MANAGEMENT = (3004, "Entity Management", 3, "Identity & Access Management")
    API_ACTIVITY = (6003, "API Activity", 6, "Application Activity")


class Decision(enum.StrEnum):
    """What the emitting component decided: let it through, refuse it, or fail (closed);
    or, for a control in dry-run, that it would have refused what it let through."""

    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"
    WOULD_DENY = "would-deny"


class Status(enum.IntEnum):
    """OCSF ``status_id``."""

    UNKNOWN = 0
    SUCCESS = 1
    FAILURE = 2
    OTHER = 99


class Severity(enum.IntEnum):
    """OCSF ``severity_id``."""

    UNKNOWN = 0
    INFORMATIONAL = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4
    CRITICAL = 5
    FATAL = 6
    OTHER = 99


# --- the secret and injection checks ------------------------------------------------

_SECRET_KEY_WORDS = (
    *("password", "passwd", "passphrase", "secret", "token", "authorization"),
    *("private_key", "api_key", "apikey", "cookie", "credential", "bearer", "totp"),
)
_SAFE_KEYS = frozenset({"token_type", "token_type_hint", "secret_path", "secret_version"})
_JOSE_RUN = re.compile(r"[A-Za-z0-9_.-]+")
_BEARER = re.compile(r"\bbearer[ \t]+[A-Za-z0-9._~+/-]{16,}", re.IGNORECASE)  # RFC 6750 §2.1
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MIN_HEADER = 14  # len(base64url('{"alg":"x"}')) rounded down


def _looks_like_jose_header(segment: str) -> bool:
    if len(segment) < _MIN_HEADER or len(segment) % 4 == 1:
        return False
    try:
        raw = base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)
        header = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return False
    return isinstance(header, dict) and "alg" in header


def _has_jose(value: str) -> bool:
    """A compact JWS (RFC 7515 §7.1, 3 segments) or JWE (RFC 7516 §7.1, 5) in ``value``."""
    if value.count(".") < 2:  # fast path: no compact serialization has fewer dots
        return False
    for match in _JOSE_RUN.finditer(value):
        parts = match.group().split(".")
        if any(_looks_like_jose_header(part) for part in parts[:-2]):
            return True
    return False


def _check_no_secret(value: str) -> str:
    if "-----BEGIN" in value:
        raise ValueError("looks like a PEM block; events never carry keys or certificates")
    if _has_jose(value):
        raise ValueError("looks like a JWT/JOSE object; events never carry tokens")
    if _BEARER.search(value):
        raise ValueError("looks like a bearer credential; events never carry tokens")
    return value


@functools.lru_cache(maxsize=8192)  # pure; attribute values (methods, routes) repeat a lot
def _check_short_text(value: str) -> str:
    return _check_text(value)


def _check_text(value: str) -> str:
    if len(value) > _MAX_TEXT:
        raise ValueError(f"longer than {_MAX_TEXT} characters")
    if not value.isascii() and any(unicodedata.category(ch) == "Cs" for ch in value):
        raise ValueError("contains a lone surrogate")
    return _check_no_secret(value)


@functools.lru_cache(maxsize=4096)  # pure; ids (SPIFFE IDs, clients) repeat a lot
def _check_id(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    if len(value) > _MAX_ID:
        raise ValueError(f"longer than {_MAX_ID} characters")
    # Cc: control (\n, \r, ESC...), Cf: format (bidi overrides), Cs: surrogates,
    # Zl/Zp: U+2028/U+2029, which some readers treat as line breaks.
    if value.isascii():
        if _ASCII_CONTROL.search(value):
            raise ValueError("contains a control, format or line-separator character")
    elif any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for ch in value):
        raise ValueError("contains a control, format or line-separator character")
    return _check_no_secret(value)


def _check_reason(value: object) -> Code:
    """A member of the closed vocabulary, given as itself or by its value."""
    if isinstance(value, Reason | Activity):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a trustmesh.reasons member")
    return parse(value)


@functools.lru_cache(maxsize=1024)  # pure; attribute names are a small set
def _check_key(key: str) -> str:
    _check_id(key)
    if len(key) > 64 or not (key.isascii() and key[0].isalpha()):
        raise ValueError("attribute keys are ASCII names of at most 64 characters")
    if not all(ch.isalnum() or ch in "_.-" for ch in key):
        raise ValueError("attribute keys hold only letters, digits, '_', '.' and '-'")
    lowered = key.lower().replace("-", "_").replace(".", "_")
    if lowered not in _SAFE_KEYS and any(word in lowered for word in _SECRET_KEY_WORDS):
        raise ValueError("attribute key names a secret; events never carry secret values")
    return key


AttributeValue = str | int | bool | None


def _check_attributes(value: object) -> Mapping[str, AttributeValue]:
    # One plain validator, keys first: a pydantic error location never names a key.
    if not isinstance(value, Mapping):
        raise ValueError("must be a mapping of names to str, int, bool or None")
    if len(value) > _MAX_ATTRIBUTES:
        raise ValueError(f"at most {_MAX_ATTRIBUTES} attributes")
    checked: dict[str, AttributeValue] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ValueError("attribute keys must be strings")
        _check_key(key)
        if isinstance(item, str):
            _check_short_text(item) if len(item) <= 512 else _check_text(item)
        elif isinstance(item, int):  # bool included
            if not -(2**63) <= item < 2**63:
                raise ValueError("attribute integers must fit in 64 bits")
        elif item is not None:
            raise ValueError("attribute values must be str, int, bool or None")
        checked[key] = item
    return types.MappingProxyType(checked)


_Id = Annotated[str, AfterValidator(_check_id)]
_Text = Annotated[str, AfterValidator(_check_text)]
_Attributes = Annotated[
    Mapping[str, AttributeValue], PlainValidator(_check_attributes), PlainSerializer(dict)
]
_MODEL_CONFIG = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


# --- the model ----------------------------------------------------------------------


class Endpoint(BaseModel):
    """An OCSF network endpoint: the source or destination of a request."""

    model_config = _MODEL_CONFIG

    ip: str | None = None
    port: int | None = Field(default=None, ge=0, le=65535)
    hostname: _Id | None = None
    svc_name: _Id | None = None
    uid: _Id | None = None
    _json: str | None = PrivateAttr(default=None)

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError("not an IPv4 or IPv6 address") from None

    def to_ocsf(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)

    def to_json(self) -> str:
        private = self.__pydantic_private__
        assert private is not None  # noqa: S101 - pydantic sets it: the model has private attributes
        if private["_json"] is None:  # frozen: render once
            private["_json"] = _dumps(self.to_ocsf())
        return str(private["_json"])

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        copied._json = None
        return copied


#: a UUID's variant bits (10) over a random hex digit's low two
_VARIANT: Final = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def new_uid(at: float | None = None) -> str:
    """A new event uid: 32 hex digits laid out as a UUIDv7 (RFC 9562 §5.7): the Unix time
    in milliseconds (``at``, seconds; now by default), the version, and 74 random bits.
    Uids made later sort later, so the audit log's uid index grows at its end, where a
    random uid lands anywhere in it (on a log of 300,000 records, each such insert cost
    the collector ≈ 10 µs more: benchmarks/audit.py ``--prefill``). The random part
    keeps uids unguessable and distinct (2^74 a millisecond)."""
    ms = round((time.time() if at is None else at) * 1000) & 0xFFFF_FFFF_FFFF
    rand = os.urandom(10).hex()
    return f"{ms:012x}7{rand[:3]}{_VARIANT[rand[3]]}{rand[4:19]}"


class Event(BaseModel):
    """One security event. Build it with :func:`event`; render it with :meth:`to_ocsf`."""

    model_config = _MODEL_CONFIG

    event_class: EventClass
    activity_id: int = Field(ge=0, le=99)  # type_uid = class_uid * 100 + activity_id
    activity_name: _Id
    time: datetime
    component: _Id
    decision: Decision
    reason: Annotated[
        Code, PlainValidator(_check_reason), PlainSerializer(lambda c: c.value, return_type=str)
    ]
    message: _Text
    status: Status
    severity: Severity
    uid: str = Field(default_factory=lambda: new_uid(), pattern=r"^[0-9a-f]{32}$")
    spiffe_id: _Id | None = None
    peer_spiffe_id: _Id | None = None
    sub: _Id | None = None
    client_id: _Id | None = None
    jti: _Id | None = None
    trace_id: _Id | None = None
    src: Endpoint | None = None
    dst: Endpoint | None = None
    attributes: _Attributes = Field(default_factory=lambda: types.MappingProxyType({}))
    # shared with the template a restamped event came from: its JSON with holes
    _skeletons: dict[tuple[bool, bool, bool, bool], _Skeleton] | None = PrivateAttr(default=None)
    # its JSON once rendered (frozen: every sink it goes to writes the same text)
    _json: str | None = PrivateAttr(default=None)

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("must be timezone-aware")
        return value.astimezone(UTC)

    @property
    def type_uid(self) -> int:
        return int(self.event_class) * 100 + self.activity_id

    @property
    def time_ms(self) -> int:
        """Milliseconds since the Unix epoch (OCSF ``time``), exact, no float rounding."""
        return (self.time - _EPOCH) // timedelta(milliseconds=1)

    def to_ocsf(self) -> dict[str, Any]:
        """The OCSF 1.3 object; absent (None) fields are omitted."""
        cls = self.event_class
        metadata: dict[str, Any] = {
            "version": OCSF_VERSION,
            "uid": self.uid,
            "product": {
                "name": "trustmesh",
                "vendor_name": "trustmesh",
                "version": __version__,
                "feature": {"name": self.component},
            },
        }
        if self.trace_id is not None:
            metadata["correlation_uid"] = self.trace_id
        actor: dict[str, Any] = {"app_name": self.component}
        if self.spiffe_id is not None:
            actor["app_uid"] = self.spiffe_id
        if self.sub is not None:
            actor["user"] = {"uid": self.sub}
        trustmesh: dict[str, Any] = {
            name: value
            for name in ("spiffe_id", "peer_spiffe_id", "sub", "client_id", "jti", "trace_id")
            if (value := getattr(self, name)) is not None
        }
        trustmesh["decision"] = self.decision.value
        trustmesh["reason"] = self.reason.value
        if self.attributes:
            trustmesh["attributes"] = dict(self.attributes)
        ocsf: dict[str, Any] = {
            "class_uid": int(cls),
            "class_name": cls.class_name,
            "category_uid": cls.category_uid,
            "category_name": cls.category_name,
            "activity_id": self.activity_id,
            "activity_name": self.activity_name,
            "type_uid": self.type_uid,
            "time": self.time_ms,
            "severity_id": int(self.severity),
            "severity": self.severity.name.title(),
            "status_id": int(self.status),
            "status": self.status.name.title(),
            "status_detail": self.reason.value,
            "message": self.message,
            "metadata": metadata,
            "actor": actor,
        }
        if self.src is not None:
            ocsf["src_endpoint"] = self.src.to_ocsf()
        if self.dst is not None:
            ocsf["dst_endpoint"] = self.dst.to_ocsf()
        ocsf["unmapped"] = {"trustmesh": trustmesh}
        return ocsf

    def to_json(self) -> str:
        """Compact, ASCII-only JSON on one line (every control character escaped).

        An event made by :func:`restamp` is rendered from its template's pre-rendered
        skeleton (the same text, far cheaper: the hot path of every service call), and
        once: the event log and the audit spool write the same text."""
        private = self.__pydantic_private__  # not self._x: pydantic's lookup is slow
        if private is None:
            return _dumps(self.to_ocsf())
        rendered: str | None = private.get("_json")
        if rendered is None:
            rendered = private["_json"] = self._render(private.get("_skeletons"))
        return rendered

    def _render(self, skeletons: dict[tuple[bool, bool, bool, bool], _Skeleton] | None) -> str:
        if skeletons is None:
            return _dumps(self.to_ocsf())
        src, attributes, trace_id, jti = self.src, self.attributes, self.trace_id, self.jti
        shape = (trace_id is not None, src is not None, bool(attributes), jti is not None)
        skeleton = skeletons.get(shape)
        if skeleton is None:
            skeleton = skeletons[shape] = _skeleton(self.to_ocsf(), shape)
        since = self.time - _EPOCH  # time_ms, without timedelta division
        values = (
            str(since.days * 86_400_000 + since.seconds * 1000 + since.microseconds // 1000),
            self.uid,  # checked hex: no escaping needed
            _escape(trace_id) if trace_id is not None else "",
            src.to_json() if src is not None else "",
            _dumps_flat(attributes) if attributes else "",
            _escape(jti) if jti is not None else "",
        )
        literals, holes = skeleton
        out = [literals[0]]
        for hole, literal in zip(holes, literals[1:], strict=True):
            out.append(values[hole])
            out.append(literal)
        return "".join(out)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        copied._json = None
        if update:  # a changed field may be one the skeleton holds: render it anew
            copied._skeletons = None
        return copied


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)
_dumps = _ENCODER.encode
_escape = json.encoder.encode_basestring_ascii  # a str as _dumps renders it
# _dumps without its per-call set-up, for the flat mappings of a hot path (attributes:
# str, int, bool, None values; never circular). The same text: the same C encoder.
_c_encoder = json.encoder.c_make_encoder  # type: ignore[attr-defined]
_FLAT = (
    _c_encoder(None, _ENCODER.default, _escape, None, ":", ",", False, False, False)
    if _c_encoder is not None
    else None
)


def _dumps_flat(value: Mapping[str, AttributeValue]) -> str:
    if _FLAT is None:
        return _dumps(dict(value))
    return "".join(_FLAT(dict(value), 0))


# A hole in a skeleton: a string no event can hold (a per-process random marker)
_HOLE = "\x00" + os.urandom(8).hex()
_HOLE_JSON = re.compile(re.escape(_dumps(_HOLE)[:-1]) + r'([TUCSAJ])"')
_HOLE_INDEX = {name: i for i, name in enumerate("TUCSAJ")}  # order of to_json's values
_UID_HOLE = _HOLE_INDEX["U"]


def _skeleton(ocsf: dict[str, Any], shape: tuple[bool, bool, bool, bool]) -> _Skeleton:
    """The JSON text of ``ocsf`` cut at each per-occurrence value (``to_json`` fills them
    in). ``ocsf`` is rendered from an event of this shape (trace id, source, attributes,
    jti present), so every key is in its place."""
    has_trace, has_src, has_attributes, has_jti = shape
    ocsf["time"] = _HOLE + "T"
    ocsf["metadata"]["uid"] = _HOLE + "U"
    trustmesh = ocsf["unmapped"]["trustmesh"]
    if has_trace:
        ocsf["metadata"]["correlation_uid"] = trustmesh["trace_id"] = _HOLE + "C"
    if has_src:
        ocsf["src_endpoint"] = _HOLE + "S"
    if has_attributes:
        trustmesh["attributes"] = _HOLE + "A"
    if has_jti:
        trustmesh["jti"] = _HOLE + "J"
    pieces = _HOLE_JSON.split(_dumps(ocsf))  # each hole's quotes go with it
    literals, holes = list(pieces[0::2]), tuple(_HOLE_INDEX[name] for name in pieces[1::2])
    for i, hole in enumerate(holes):
        if hole == _UID_HOLE:  # the uid is filled in unquoted (it is checked hex)
            literals[i] += '"'
            literals[i + 1] = '"' + literals[i + 1]
    return tuple(literals), holes


_STATUS_OF = {
    Decision.ALLOW: Status.SUCCESS,
    Decision.DENY: Status.FAILURE,
    Decision.WOULD_DENY: Status.SUCCESS,  # it went through: the control only watched
}
_SEVERITY_OF = {Decision.ALLOW: Severity.INFORMATIONAL, Decision.WOULD_DENY: Severity.LOW}


def event(
    cls: EventClass,
    *,
    activity_id: int,
    activity_name: str,
    component: str,
    decision: Decision,
    reason: Code,
    message: str,
    now: datetime | None = None,
    severity: Severity | None = None,
    status: Status | None = None,
    spiffe_id: str | None = None,
    peer_spiffe_id: str | None = None,
    sub: str | None = None,
    client_id: str | None = None,
    jti: str | None = None,
    trace_id: str | None = None,
    src: Endpoint | None = None,
    dst: Endpoint | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Event:
    """Build an :class:`Event`, or raise :class:`UsageError` naming the bad fields.

    ``now`` defaults to ``datetime.now(UTC)`` and must be timezone-aware. ``status``
    defaults from ``decision`` (allow: Success; deny, error: Failure); ``severity``
    defaults to Informational for allow and Medium otherwise. The error never repeats
    the refused value, so a token passed by mistake does not leak through it.
    """
    try:
        decision = Decision(decision)
    except ValueError:
        raise UsageError("invalid event: decision: must be allow, deny or error") from None
    try:
        return Event(
            event_class=cls,
            activity_id=activity_id,
            activity_name=activity_name,
            time=datetime.now(UTC) if now is None else now,
            component=component,
            decision=decision,
            reason=reason,
            message=message,
            status=_STATUS_OF.get(decision, Status.FAILURE) if status is None else status,
            severity=_SEVERITY_OF.get(decision, Severity.MEDIUM) if severity is None else severity,
            spiffe_id=spiffe_id,
            peer_spiffe_id=peer_spiffe_id,
            sub=sub,
            client_id=client_id,
            jti=jti,
            trace_id=trace_id,
            src=src,
            dst=dst,
            attributes={} if attributes is None else attributes,
        )
    except ValidationError as exc:
        raise UsageError(f"invalid event: {_problems(exc)}") from None


def _problems(exc: ValidationError) -> str:
    """Where each problem is and what it is; never the refused value."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    )


# --- the one recorder -------------------------------------------------------------------
#: An event's OCSF shape: its class and activity (id, name).
Shape = tuple["EventClass", int, str]
_OTHER_API: Shape = (EventClass.API_ACTIVITY, 99, "Other")
_MANAGE = EventClass.ENTITY_MANAGEMENT
_AUTHN = EventClass.AUTHENTICATION
_VERBS: tuple[tuple[tuple[int, str], tuple[Activity, ...]], ...] = (
    (
        (1, "Create"),
        (
            Activity.SVID_ISSUED,
            Activity.CA_PREPARED,
            Activity.CA_RENEWED,
            Activity.ENTRY_CREATED,
            Activity.SERVER_CERT_ISSUED,
            Activity.JOIN_TOKEN_CREATED,
            Activity.CLIENT_CREATED,
            Activity.KEY_CREATED,
            Activity.KEYS_ROTATED,
            Activity.USER_CREATED,
            Activity.API_KEY_CREATED,
            Activity.BLOCK_ADDED,
        ),
    ),
    ((3, "Update"), (Activity.MFA_RESET, Activity.PASSWORD_CHANGED, Activity.API_KEY_ROTATED)),
    (
        (4, "Delete"),
        (
            Activity.ENTRY_REMOVED,
            Activity.CLIENT_REMOVED,
            Activity.KEY_REMOVED,
            Activity.BLOCK_REMOVED,
        ),
    ),
    (
        (8, "Enable"),
        (
            Activity.CA_ACTIVATED,
            Activity.KEY_ACTIVATED,
            Activity.USER_UNLOCKED,
            Activity.SPIFFE_ID_RESTORED,
        ),
    ),
    (
        (9, "Disable"),
        (
            Activity.CA_RETIRED,
            Activity.KEY_RETIRED,
            Activity.USER_LOCKED,
            Activity.API_KEY_REVOKED,
            Activity.SPIFFE_ID_SUSPENDED,
        ),
    ),
)
_TICKET: Shape = (_AUTHN, 4, "Service Ticket Request")
#: What each code records, where it is not an API decision (API Activity, Other).
_SHAPES: Mapping[Code, Shape] = types.MappingProxyType(
    {
        **{a: (_MANAGE, *verb) for verb, codes in _VERBS for a in codes},
        Reason.LOGIN_SUCCEEDED: (_AUTHN, 1, "Logon"),
        Reason.LOGIN_FAILED: (_AUTHN, 1, "Logon"),
        Activity.LOGOUT: (_AUTHN, 2, "Logoff"),
        Reason.TOKEN_ISSUED: _TICKET,
        Reason.TOKEN_REFUSED: _TICKET,
        Reason.CLIENT_AUTH_FAILED: _TICKET,
        Reason.SIGNING_KEY_UNAVAILABLE: _TICKET,
        Activity.TOKEN_REVOKED: _TICKET,
        Activity.ALERT_RAISED: (EventClass.DETECTION_FINDING, 1, "Create"),
        Reason.DISCOVERY_LOOKUP: (EventClass.API_ACTIVITY, 2, "Read"),
        # refused at an API, whichever component's default says otherwise
        Reason.ADMIN_DENIED: _OTHER_API,
        Reason.REVOCATION_FEED_DENIED: _OTHER_API,
        **dict.fromkeys(LISTENER_REFUSALS, _OTHER_API),
    }
)


#: The table by the code's own type, then its spelling: a reason and an activity may
#: share a spelling (token-revoked), and so a hash.
_SHAPES_BY_TYPE: dict[type, dict[str, Shape]] = {
    kind: {k.value: v for k, v in _SHAPES.items() if isinstance(k, kind)}
    for kind in (Reason, Activity)
}


def shape_of(code: Code, default: Shape = _OTHER_API) -> Shape:
    """The OCSF class and activity an event recording ``code`` takes."""
    return _SHAPES_BY_TYPE[type(code)].get(code.value, default)


def _decision_of(code: Code) -> Decision:
    """An activity happened (allow); a reason with an answer refused (deny)."""
    return Decision.DENY if isinstance(code, Reason) and code in ANSWERS else Decision.ALLOW


class _Occurrence(TypedDict, total=False):
    """What :meth:`Recorder.record` takes besides the code and message (see
    :meth:`Recorder.build`)."""

    decision: Decision | None
    shape: Shape | None
    sub: str | None
    client_id: str | None
    peer_spiffe_id: str | None
    spiffe_id: str | None
    jti: str | None
    trace_id: str | None
    src: Endpoint | None
    attributes: Mapping[str, AttributeValue] | None
    now: datetime | None
    uid: str | None
    strict: bool


def _no_trace() -> str | None:
    return None


#: Where a :class:`Recorder` finds the trace of the work in hand (see
#: :func:`set_trace_source`).
_trace_source: Callable[[], str | None] = _no_trace


def set_trace_source(source: Callable[[], str | None] | None) -> None:
    """Where every :class:`Recorder` finds the trace id of the work in hand when its
    caller names none — the request being served (:mod:`trustmesh.sdk.trace` sets it) —
    so that each decision made while a request is served carries its trace, whichever
    component made it. None: no trace unless named."""
    global _trace_source
    _trace_source = source or _no_trace


class Recorder:
    """The one way a component records what it decided or did: it builds the event
    (validated once per shape: code, message, decision and who), keeps it as a
    template, and emits each occurrence restamped with its own time, uid, trace, token
    id, source and attributes — cheap enough for a hot path. An attribute that fails
    the event's checks (a secret pasted into a path) is withheld, never the event; a
    subject no event may carry leaves the decision recorded without it. A change that
    is checked before it is made builds its event first (:meth:`build`, ``strict``:
    a value no event may carry refuses the change) and writes it once made (:meth:`write`).

    ``default`` is the shape of codes :func:`shape_of` does not know (the gateway's and
    the middleware's decisions: API Activity, Other; the provider's: Service Ticket
    Request)."""

    def __init__(
        self,
        sink: EventSink,
        *,
        component: str,
        spiffe_id: str | None = None,
        default: Shape = _OTHER_API,
        clock: Callable[[], datetime] | None = None,
        cache_size: int = 4096,
    ) -> None:
        self.sink = sink
        self.component = component
        self.spiffe_id = spiffe_id
        self.default = default
        self.clock = clock
        self._templates: dict[tuple[object, ...], Event] = {}
        self._cache_size = cache_size

    def build(
        self,
        code: Code,
        message: str,
        *,
        decision: Decision | None = None,
        shape: Shape | None = None,
        sub: str | None = None,
        client_id: str | None = None,
        peer_spiffe_id: str | None = None,
        spiffe_id: str | None = None,
        jti: str | None = None,
        trace_id: str | None = None,
        src: Endpoint | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
        now: datetime | None = None,
        uid: str | None = None,
        strict: bool = False,
    ) -> Event:
        """One occurrence, not written: for a change whose event is made (and so checked)
        before the change, and written (:meth:`write`) once it is done. ``spiffe_id``: the
        workload the event is about, where it is not the recorder's own (an SVID issued
        to it); ``now``: the occurrence's time, where the caller has one (default: the
        recorder's clock); ``trace_id``: default, the trace of the request being served
        (:func:`set_trace_source`); ``uid``: the event's id where the occurrence has one of its
        own (32 hex digits: recorded again, it is stored once), else a random one.
        ``strict``: a value no event may carry raises
        :class:`~trustmesh.errors.UsageError` (the caller refuses its input, and changes
        nothing) instead of being withheld."""
        decided = _decision_of(code) if decision is None else decision
        if trace_id is None:
            trace_id = _trace_source()
        template = self.template(
            code, message, decided, shape, sub, client_id, peer_spiffe_id, spiffe_id, strict
        )
        if now is None and self.clock is not None:
            now = self.clock()
        try:
            return restamp(
                template,
                now=now,
                trace_id=trace_id,
                src=src,
                attributes=attributes,
                jti=jti,
                uid=uid,
            )
        except UsageError:  # a value no event may carry: withhold it, keep the decision
            if strict:
                raise
        kept = _withheld(attributes)
        try:
            return restamp(
                template, now=now, trace_id=trace_id, src=src, attributes=kept, jti=jti, uid=uid
            )
        except UsageError:  # the trace or token id itself: the decision, without them
            return restamp(template, now=now, src=src, attributes=kept, uid=uid)

    def write(self, event: Event) -> None:
        """Write an occurrence made by :meth:`build`."""
        self.sink.emit(event)

    def record(self, code: Code, message: str, **fields: Unpack[_Occurrence]) -> Event:
        """Build one occurrence (:meth:`build`) and write it; the event, as written."""
        event = self.build(code, message, **fields)
        self.sink.emit(event)
        return event

    def template(
        self,
        code: Code,
        message: str,
        decision: Decision,
        shape: Shape | None = None,
        sub: str | None = None,
        client_id: str | None = None,
        peer_spiffe_id: str | None = None,
        spiffe_id: str | None = None,
        strict: bool = False,
    ) -> Event:
        """The validated fixed part of an event of this shape (built once, kept).
        ``strict``: a subject no event may carry raises, rather than being left out."""
        key = (
            type(code),
            code,
            message,
            decision,
            shape,
            sub,
            client_id,
            peer_spiffe_id,
            spiffe_id,
            strict,
        )
        template = self._templates.get(key)
        if template is not None:
            return template
        if len(self._templates) >= self._cache_size:
            self._templates.clear()
        cls, activity_id, activity_name = shape or shape_of(code, self.default)
        fields: dict[str, Any] = {
            "activity_id": activity_id,
            "activity_name": activity_name,
            "component": self.component,
            "decision": decision,
            "reason": code,
            "message": message,
            "spiffe_id": spiffe_id or self.spiffe_id,
            "peer_spiffe_id": peer_spiffe_id,
            "now": _EPOCH,  # every occurrence is restamped
        }
        try:
            template = event(cls, sub=sub, client_id=client_id, **fields)
        except UsageError:  # a subject no event may carry: the decision, without it
            if strict:
                raise
            template = event(cls, **fields)
        self._templates[key] = template
        return template


def _withheld(attributes: Mapping[str, AttributeValue] | None) -> dict[str, AttributeValue]:
    """``attributes`` with every value the event's checks refuse replaced."""
    kept: dict[str, AttributeValue] = {}
    for key, value in (attributes or {}).items():
        try:
            _check_attributes({key: value})
        except ValueError:
            try:
                _check_key(key)
            except ValueError:
                continue
            value = "<withheld>"
        kept[key] = value
    return kept


# --- sinks --------------------------------------------------------------------------


def restamp(
    template: Event,
    *,
    now: datetime | None = None,
    trace_id: str | None = None,
    src: Endpoint | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
    jti: str | None = None,
    uid: str | None = None,
) -> Event:
    """A new occurrence of an already-validated event: new time and uid (``uid``: the
    occurrence's own, 32 hex digits), and these per-occurrence fields, each checked as
    :func:`event` would. For hot paths that emit many events of one shape (the SDK
    middleware): far cheaper than building anew."""
    if now is None:
        when = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise UsageError("now must be timezone-aware")
    else:
        when = now.astimezone(UTC)
    fields = template.__dict__.copy()
    fields["time"] = when
    if uid is None:
        fields["uid"] = new_uid()
    elif len(uid) == 32 and all(c in "0123456789abcdef" for c in uid):
        fields["uid"] = uid
    else:
        raise UsageError("invalid event field: uid is 32 lower-case hex digits")
    try:
        if trace_id is not None:
            fields["trace_id"] = _check_id(trace_id)
        if attributes is not None:
            fields["attributes"] = _check_attributes(attributes)
        if jti is not None:
            fields["jti"] = _check_id(jti)
    except ValueError as exc:
        raise UsageError(f"invalid event field: {exc}") from None
    if src is not None:
        fields["src"] = src
    private = template.__pydantic_private__
    assert private is not None  # noqa: S101 - the model has private attributes
    skeletons = private["_skeletons"]
    if skeletons is None:
        skeletons = private["_skeletons"] = {}
    # what model_copy does, without its generic overhead: every value here is checked
    stamped = Event.__new__(Event)
    object.__setattr__(stamped, "__dict__", fields)
    object.__setattr__(stamped, "__pydantic_fields_set__", _stamped_fields(template))
    object.__setattr__(stamped, "__pydantic_extra__", None)
    # shared with the template: only per-occurrence fields changed
    object.__setattr__(stamped, "__pydantic_private__", {"_skeletons": skeletons, "_json": None})
    return stamped


_STAMPED = frozenset({"time", "uid", "trace_id", "attributes", "jti", "src"})


def _stamped_fields(template: Event) -> set[str]:
    # pydantic's "fields set": the template's, and what a restamp may set (a superset
    # is harmless: it only matters to exclude_unset, which no renderer uses)
    return template.model_fields_set | _STAMPED


@runtime_checkable
class EventSink(Protocol):
    """Where events go. ``emit`` either records the event or raises: never drops it."""

    def emit(self, event: Event) -> None: ...


class MemorySink:
    """Keeps events in ``events``, in order: for tests and in-process consumers."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)


class FanoutSink:
    """Emits to every sink in turn. If some fail, the others still get the event and
    the first error is raised (the rest attached as notes)."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks: tuple[EventSink, ...] = sinks

    def emit(self, event: Event) -> None:
        errors: list[Exception] = []
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception as exc:  # noqa: BLE001 - re-raised below, once the others have it
                errors.append(exc)
        if errors:
            first = errors[0]
            for other in errors[1:]:
                first.add_note(f"also failed: {type(other).__name__}: {other}")
            raise first


class JsonLinesSink:
    """Appends one compact JSON object per line to ``path``.

    The file is opened ``O_APPEND`` (never a symlink, only a regular file), created
    0600 with missing parent directories 0700, and an existing file is narrowed to
    0600. Each ``emit`` is one ``write(2)`` under a lock, so the kernel has the whole
    line when it returns (no user-space buffer); with ``fsync=True`` it is also on disk.
    An ``OSError`` propagates: an event is never dropped silently.
    """

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self.path, flags, 0o600)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise StateError(f"event log {self.path} is not a regular file")
            if info.st_mode & 0o077:
                os.fchmod(fd, 0o600)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def emit(self, event: Event) -> None:
        self._write((event.to_json() + "\n").encode("ascii"))

    def write_lines(self, lines: Sequence[bytes]) -> None:
        """Append events already rendered (each ``Event.to_json()`` as ASCII bytes, no
        newline) in one ``write(2)``: what a batching producer calls instead of
        ``emit`` per event."""
        if lines:
            self._write(b"\n".join(lines) + b"\n")

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._fd is None:
                raise ValueError("emit on a closed event sink")
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if self._fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- reading ------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def read_events(path: Path, *, max_line_bytes: int = _MAX_LINE) -> Iterator[dict[str, Any]]:
    """Parse a JSON-lines event log, one object per line; blank lines are skipped.

    Refuses (:class:`StateError` naming the line) a line over ``max_line_bytes``, a
    line that is not a JSON object, duplicate keys and NaN/Infinity.
    """
    with open(path, "rb") as file:
        number = 0
        while line := file.readline(max_line_bytes + 1):
            number += 1
            if len(line) > max_line_bytes:
                raise StateError(f"{path}:{number}: line longer than {max_line_bytes} bytes")
            if not line.strip():
                continue
            try:
                obj = json.loads(
                    line, object_pairs_hook=_no_duplicates, parse_constant=_no_constant
                )
            except (ValueError, RecursionError) as exc:
                raise StateError(f"{path}:{number}: not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise StateError(f"{path}:{number}: not a JSON object")
            yield obj

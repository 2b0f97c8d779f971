"""Envoy's own schema for a rendered bootstrap, without Envoy: its v3 protos as Python
(PyPI ``xds-protos``, generated from envoyproxy/data-plane-api).

:func:`check` does what Envoy does with a bootstrap before it runs it, as far as Python
can: it parses the dict into ``envoy.config.bootstrap.v3.Bootstrap`` (protobuf's JSON
mapping: an unknown field, a value of the wrong type or an enum name that does not
exist is an error, and each ``typed_config`` is parsed as the message its ``@type``
names), then walks every message, each ``Any`` unpacked, and refuses a deprecated field
or enum value and a value that breaks the field's ``validate.rules`` (the
protoc-gen-validate constraints Envoy checks at load: required messages and oneofs,
string lengths, prefixes and well-known patterns, numeric and duration bounds, defined
enum values, repeated item counts and item rules). Not checked: what only Envoy's C++
checks (that a route's cluster exists, that an extension is compiled in, that a file can
be read), and the rarer rules (maps' keys, ``pattern`` with RE2-only syntax, bytes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

# the messages an Any in the bootstrap names: imported, they are in the default pool
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2  # noqa: F401
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2  # noqa: F401
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from validate import validate_pb2

__all__ = ["SchemaError", "check", "check_message"]

_WELL_KNOWN = {
    validate_pb2.HTTP_HEADER_NAME: re.compile(r"^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+$"),
    validate_pb2.HTTP_HEADER_VALUE: re.compile(r"^[^\x00-\x08\x0a-\x1f\x7f]*$"),
}
_WRAPPERS = {
    f"google.protobuf.{kind}Value"
    for kind in ("UInt32", "UInt64", "Int32", "Int64", "Double", "Float", "Bool", "String")
}
_NUMERIC = ("uint32", "uint64", "int32", "int64", "sint32", "sint64", "double", "float")
_NUMERIC += ("fixed32", "fixed64", "sfixed32", "sfixed64")


class SchemaError(ValueError):
    """Where (a field path) and what breaks Envoy's schema."""


def check(bootstrap: Mapping[str, Any]) -> Any:
    """The bootstrap as Envoy's ``Bootstrap`` message; :class:`SchemaError` if it is not one."""
    message = bootstrap_pb2.Bootstrap()
    try:
        json_format.ParseDict(bootstrap, message)
    except json_format.ParseError as exc:
        raise SchemaError(str(exc)) from None
    _walk(message, "bootstrap")
    return message


def check_message(message: Message) -> None:
    """Any message of Envoy's (an ext_authz ``CheckResponse``, say) against the same rules:
    :class:`SchemaError` naming the field that breaks one."""
    _walk(message, message.DESCRIPTOR.name)


def _walk(message: Message, where: str) -> None:
    descriptor = message.DESCRIPTOR
    if descriptor.full_name == "google.protobuf.Any":
        _walk(_unpacked(message, where), where)
        return
    for oneof in descriptor.oneofs:
        if (
            oneof.GetOptions().Extensions[validate_pb2.required]
            and message.WhichOneof(oneof.name) is None
        ):
            raise SchemaError(f"{where}: one of {oneof.name} is required")
    for field in descriptor.fields:
        path = f"{where}.{field.name}"
        repeated = _repeated(field)
        present = len(getattr(message, field.name)) > 0 if repeated else _has(message, field)
        if present and field.GetOptions().deprecated:
            raise SchemaError(f"{path}: deprecated")
        rules = field.GetOptions().Extensions[validate_pb2.rules]
        value = getattr(message, field.name)
        if repeated:
            _repeated_rules(rules, field, value, path)
            items = value.values() if _is_map(field) else value
            for position, item in enumerate(items):
                _value(field, rules.repeated.items, item, f"{path}[{position}]")
        else:
            if field.containing_oneof is not None and not present:
                continue  # a oneof's rules hold for the member that is set
            if rules.HasField("message") and rules.message.required and not present:
                raise SchemaError(f"{path}: required")
            if field.type == FieldDescriptor.TYPE_MESSAGE and not present:
                _absent_message(rules, path)
                continue
            _value(field, rules, value, path)


def _value(field: FieldDescriptor, rules: Any, value: Any, path: str) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        name = field.message_type.full_name
        if name in _WRAPPERS:
            _scalar(rules, value.value, path)
        elif name == "google.protobuf.Duration":
            _duration(rules, value.ToTimedelta(), path)
        elif name == "google.protobuf.Any" and rules.HasField("any"):
            allowed = list(getattr(rules.any, "in"))
            if allowed and value.type_url not in allowed:
                raise SchemaError(f"{path}: {value.type_url} not one of {allowed}")
        if not (rules.HasField("message") and rules.message.skip):
            _walk(value, path)
        return
    if field.type == FieldDescriptor.TYPE_ENUM:
        _enum(field, rules, value, path)
        return
    _scalar(rules, value, path)


def _scalar(rules: Any, value: Any, path: str) -> None:
    kind = rules.WhichOneof("type")
    if kind is None:
        return
    specific = getattr(rules, kind)
    if kind == "string":
        _string(specific, value, path)
    elif kind in _NUMERIC:
        if specific.ignore_empty and not value:
            return
        _bounds(specific, value, path, lambda bound: bound)


def _string(rules: Any, value: str, path: str) -> None:
    if rules.ignore_empty and not value:
        return
    size = len(value)
    if rules.HasField("min_len") and size < rules.min_len:
        raise SchemaError(f"{path}: shorter than {rules.min_len}")
    if rules.HasField("max_len") and size > rules.max_len:
        raise SchemaError(f"{path}: longer than {rules.max_len}")
    if rules.HasField("min_bytes") and len(value.encode()) < rules.min_bytes:
        raise SchemaError(f"{path}: fewer bytes than {rules.min_bytes}")
    if rules.HasField("max_bytes") and len(value.encode()) > rules.max_bytes:
        raise SchemaError(f"{path}: more bytes than {rules.max_bytes}")
    if rules.HasField("prefix") and not value.startswith(rules.prefix):
        raise SchemaError(f"{path}: does not start with {rules.prefix!r}")
    if rules.HasField("const") and value != rules.const:
        raise SchemaError(f"{path}: not {rules.const!r}")
    allowed = list(getattr(rules, "in"))
    if allowed and value not in allowed:
        raise SchemaError(f"{path}: not one of {allowed}")
    if value in rules.not_in:
        raise SchemaError(f"{path}: {value!r} is not allowed")
    pattern = _WELL_KNOWN.get(rules.well_known_regex)
    if pattern is not None and rules.strict is not False and not pattern.fullmatch(value):
        raise SchemaError(f"{path}: {value!r} is not a valid HTTP header name or value")


def _bounds(rules: Any, value: Any, path: str, read: Any) -> None:
    bounds = {
        name: read(getattr(rules, name))
        for name in ("lt", "lte", "gt", "gte", "const")
        if rules.HasField(name)
    }
    if "const" in bounds and value != bounds["const"]:
        raise SchemaError(f"{path}: not {bounds['const']}")
    low = ("gt", bounds["gt"]) if "gt" in bounds else ("gte", bounds.get("gte"))
    high = ("lt", bounds["lt"]) if "lt" in bounds else ("lte", bounds.get("lte"))
    below = low[1] is not None and (value <= low[1] if low[0] == "gt" else value < low[1])
    above = high[1] is not None and (value >= high[1] if high[0] == "lt" else value > high[1])
    if low[1] is not None and high[1] is not None and high[1] < low[1]:
        ok = not below or not above  # an exclusive range: outside (high, low)
    else:
        ok = not below and not above
    if not ok:
        raise SchemaError(f"{path}: {value} is out of bounds {bounds}")


def _duration(rules: Any, value: timedelta, path: str) -> None:
    if rules.HasField("duration"):
        _bounds(rules.duration, value, path, lambda bound: bound.ToTimedelta())


def _enum(field: FieldDescriptor, rules: Any, value: int, path: str) -> None:
    known = field.enum_type.values_by_number.get(value)
    if known is None:
        if rules.HasField("enum") and rules.enum.defined_only:
            raise SchemaError(f"{path}: {value} is not a value of {field.enum_type.full_name}")
        return
    if value and known.GetOptions().deprecated:
        raise SchemaError(f"{path}: {known.name} is deprecated")
    if rules.HasField("enum"):
        if getattr(rules.enum, "in") and value not in getattr(rules.enum, "in"):
            raise SchemaError(f"{path}: {known.name} is not allowed here")
        if value in rules.enum.not_in:
            raise SchemaError(f"{path}: {known.name} is not allowed here")


def _repeated_rules(rules: Any, field: FieldDescriptor, value: Any, path: str) -> None:
    if not rules.HasField("repeated"):
        if rules.HasField("map") and rules.map.min_pairs and len(value) < rules.map.min_pairs:
            raise SchemaError(f"{path}: fewer than {rules.map.min_pairs} entries")
        return
    counted = rules.repeated
    if counted.ignore_empty and not value:
        return
    if counted.HasField("min_items") and len(value) < counted.min_items:
        raise SchemaError(f"{path}: fewer than {counted.min_items} items")
    if counted.HasField("max_items") and len(value) > counted.max_items:
        raise SchemaError(f"{path}: more than {counted.max_items} items")
    unique = counted.unique and field.type != FieldDescriptor.TYPE_MESSAGE
    if unique and len(set(value)) != len(value):
        raise SchemaError(f"{path}: items repeat")


def _absent_message(rules: Any, path: str) -> None:
    if rules.HasField("duration") and rules.duration.required:
        raise SchemaError(f"{path}: required")
    if rules.HasField("any") and rules.any.required:
        raise SchemaError(f"{path}: required")
    if rules.HasField("timestamp") and rules.timestamp.required:
        raise SchemaError(f"{path}: required")


def _unpacked(packed: Any, where: str) -> Message:
    name = packed.type_url.rpartition("/")[2]
    try:
        descriptor: Descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        raise SchemaError(f"{where}: no message {name!r} (@type)") from None
    message = message_factory.GetMessageClass(descriptor)()
    if not packed.Unpack(message):
        raise SchemaError(f"{where}: not a {name}")
    return message


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _is_map(field: FieldDescriptor) -> bool:
    options = field.message_type.GetOptions() if field.message_type else None
    return bool(options and options.map_entry)


def _has(message: Message, field: FieldDescriptor) -> bool:
    if field.has_presence:
        return message.HasField(field.name)
    return bool(getattr(message, field.name))

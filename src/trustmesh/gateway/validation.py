"""Request validation at the edge: a route's OpenAPI 3.x document (``openapi: FILE``) or
a JSON Schema for its body (``schema: FILE``), compiled once when the gateway starts
(:func:`load_validators`), checked on every request of the route
(:meth:`RouteValidator.check`) after its body was read and before anything is forwarded.

**What is checked.** With an OpenAPI document, the operation the route matched (its path
template and method; every operation the route serves must be described — a
:class:`~trustmesh.errors.ConfigError` at start-up otherwise):

- path parameters (the values the route's template bound), query parameters and
  headers, each against its ``schema`` after the one conversion the service will make
  (``integer``, ``number`` and ``boolean`` from their text; an ``array`` from a
  repeated query parameter); a missing ``required`` one is refused;
- the body: its ``Content-Type`` must be one the operation's ``requestBody`` lists
  (``415`` otherwise; ``application/*`` and ``*/*`` ranges allowed); a JSON media type
  (``application/json``, ``…+json``) is parsed by :mod:`trustmesh.gateway.strictjson`
  (limits, duplicate keys refused) and validated against the media type's schema; a form
  (``application/x-www-form-urlencoded``) is read as the service will (one URL decoding,
  a repeated field an array) and validated the same way; a ``required`` body must be
  there, and an operation that describes no body takes none.

With a JSON Schema (``schema: FILE``), a request of a method that carries a body (POST,
PUT, PATCH) must have a JSON body valid against it, and any other method none.

**Answers.** A refusal is a :class:`Violation`: where (``path.<name>``,
``query.<name>``, ``header.<name>``, ``content-type``, or ``body`` and a JSON Pointer
into it, RFC 6901) and which rule (the JSON Schema keyword that failed, such as
``minimum``, ``required``, ``type``; or ``duplicate-key``, ``too-deep``, ``missing``…) —
never the offending value, which may be the attack itself. Names taken from the
request (a query parameter's) are cut to 64 characters.

**Compiled once.** Each schema becomes a ``jsonschema-rs`` validator at load, with
``format`` enforced and no remote reference fetched (a ``$ref`` outside the document is
a ConfigError). OpenAPI 3.0 schemas (their ``nullable``) are converted to the JSON Schema
draft 4 they extend; 3.1 documents are JSON Schema 2020-12 already.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl

import jsonschema_rs
import yaml

from trustmesh.config.gateway import GatewayConfig, GatewayRoute
from trustmesh.errors import ConfigError
from trustmesh.gateway.strictjson import JsonLimits, JsonRefused, Parsed, parse, pointer

__all__ = ["RouteValidator", "Violation", "load_validators"]

#: Methods whose requests carry a body (a ``schema:`` route requires one of them).
_WITH_BODY: Final = frozenset({"POST", "PUT", "PATCH"})
_FORM: Final = "application/x-www-form-urlencoded"
_NAME_LIMIT: Final = 64


@dataclass(frozen=True, slots=True)
class Violation:
    """Why a request is refused: ``location``, ``rule``; ``media`` for a 415."""

    location: str
    rule: str
    media: bool = False

    @property
    def message(self) -> str:
        if self.media:
            return "the request's content type is not accepted here"
        return f"the request is invalid at {self.location}: {self.rule}"


@dataclass(frozen=True, slots=True)
class Checked:
    """What validation found: a refusal, or the parsed JSON body (None: no JSON body)
    for the stages after it."""

    violation: Violation | None = None
    parsed: Parsed | None = None


_OK: Final = Checked()

Validator = Any  # a jsonschema-rs validator


def _uuid(text: str) -> bool:
    return bool(_UUID.fullmatch(text))


#: Formats OpenAPI documents use that a JSON Schema draft may not know (draft 4: uuid).
_FORMATS: Final = {"uuid": _uuid}
_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def _local_only(schema: Any, where: str) -> None:
    """Every reference points inside the document: nothing is fetched, ever."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in ("$ref", "$dynamicRef", "$recursiveRef"):
                ref = node.get(key)
                if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
                    raise ConfigError(
                        f"{where}: only local references (#/...), not {key} {ref!r}"[:300]
                    )
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _compile(schema: Any, where: str, *, draft4: bool = False) -> Validator:
    _local_only(schema, where)
    options: dict[str, Any] = {"validate_formats": True, "offline": True, "formats": _FORMATS}
    try:
        if draft4:
            return jsonschema_rs.Draft4Validator(schema, **options)
        return jsonschema_rs.validator_for(schema, **options)
    except (ValueError, jsonschema_rs.ReferencingError) as exc:
        raise ConfigError(f"{where}: not a schema trustmesh can compile: {exc}") from None


def _first_violation(validator: Validator, instance: Any, prefix: str) -> Violation | None:
    """The first error, as a location and the keyword that failed."""
    error = next(iter(validator.iter_errors(instance)), None)
    if error is None:
        return None
    rule = str(error.schema_path[-1]) if error.schema_path else "schema"
    at = pointer(tuple(error.instance_path))
    if rule == "required":  # the missing name comes from the schema, not the request
        missing = getattr(error.kind, "property", None)
        if isinstance(missing, str):
            at = pointer((*tuple(error.instance_path), missing))
    return Violation(prefix + at if prefix == "body" else prefix, rule)


# --- parameters -------------------------------------------------------------------------


def _convert(kind: str | None, text: str) -> Any:
    """A parameter's text as the type its schema names (ValueError: it is not)."""
    if kind == "integer":
        if not text.lstrip("-").isdigit() or len(text) > 40:
            raise ValueError
        return int(text)
    if kind == "number":
        value = float(text)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError
        return value
    if kind == "boolean":
        if text not in ("true", "false"):
            raise ValueError
        return text == "true"
    return text


@dataclass(frozen=True)
class _Param:
    name: str  # lower-case for a header
    where: str  # path, query, header
    required: bool
    validator: Validator
    kind: str | None  # the schema's type
    items: str | None  # an array's items' type

    def value(self, texts: Sequence[str]) -> Any:
        if self.kind == "array":
            return [_convert(self.items, t) for t in texts]
        return _convert(self.kind, texts[-1])


def _schema_type(schema: Mapping[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):  # ["integer", "null"]: the first that is not null
        kind = next((k for k in kind if k != "null"), None)
    return kind if isinstance(kind, str) else None


# --- operations -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Media:
    range: str  # "application/json", "application/*", "*/*"
    validator: Validator | None
    form_types: Mapping[str, tuple[str | None, str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Operation:
    params: tuple[_Param, ...]
    media: tuple[_Media, ...] | None  # None: no body described
    body_required: bool


def _media_type(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    raw = next((v for k, v in headers if k == b"content-type"), None)
    if raw is None:
        return None
    return raw.decode("latin-1").split(";", 1)[0].strip().lower()


def _is_json(media: str) -> bool:
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _matches(declared: str, media: str) -> bool:
    if declared == "*/*" or declared == media:
        return True
    if declared.endswith("/*"):
        return media.split("/", 1)[0] == declared[:-2]
    return False


class RouteValidator:
    """One route's validation, compiled (module docstring)."""

    def __init__(
        self,
        limits: JsonLimits,
        *,
        operations: Mapping[tuple[str, str], _Operation] | None = None,
        body: Validator | None = None,
    ) -> None:
        self.limits = limits
        self.operations = dict(operations or {})
        self.body = body

    def check(
        self,
        method: str,
        template: str,
        params: Sequence[tuple[str, str]],
        query: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> Checked:
        if self.body is not None:
            return self._check_schema(method, headers, body)
        operation = self.operations.get((method, template))
        if operation is None:  # HEAD of a GET, say: described by its GET
            operation = self.operations.get(("GET", template)) if method == "HEAD" else None
        if operation is None:
            return Checked(Violation("operation", "not-described"))
        found = self._check_params(operation, params, query, headers)
        if found is not None:
            return Checked(found)
        return self._check_body(operation, headers, body)

    def _check_schema(
        self, method: str, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> Checked:
        if method not in _WITH_BODY:
            return Checked(Violation("body", "no-body-expected")) if body else _OK
        media = _media_type(headers)
        if media is None or not _is_json(media):
            return Checked(Violation("content-type", "media-type", media=True))
        return self._json(body, self.body)

    def _json(self, body: bytes, validator: Validator | None) -> Checked:
        try:
            parsed = parse(body, self.limits)
        except JsonRefused as exc:
            return Checked(Violation("body" + exc.location, exc.rule))
        if validator is not None:
            found = _first_violation(validator, parsed.document, "body")
            if found is not None:
                return Checked(found, parsed)
        return Checked(None, parsed)

    def _check_params(
        self,
        operation: _Operation,
        path_params: Sequence[tuple[str, str]],
        query: bytes,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> Violation | None:
        if not operation.params:
            return None
        given: dict[tuple[str, str], list[str]] = {}
        for name, value in path_params:
            given.setdefault(("path", name), []).append(value)
        if query:
            try:
                pairs = parse_qsl(
                    query.decode("latin-1"), keep_blank_values=True, strict_parsing=False
                )
            except ValueError:
                return Violation("query", "malformed")
            for name, value in pairs:
                given.setdefault(("query", name), []).append(value)
        for key, raw in headers:
            name = key.decode("latin-1").lower()
            given.setdefault(("header", name), []).append(raw.decode("latin-1"))
        for param in operation.params:
            texts = given.get((param.where, param.name))
            where = f"{param.where}.{param.name[:_NAME_LIMIT]}"
            if not texts:
                if param.required:
                    return Violation(where, "required")
                continue
            try:
                value = param.value(texts)
            except ValueError:
                return Violation(where, "type")
            if not param.validator.is_valid(value):
                found = _first_violation(param.validator, value, where)
                return found or Violation(where, "schema")
        return None

    def _check_body(
        self, operation: _Operation, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> Checked:
        if operation.media is None:
            return Checked(Violation("body", "no-body-expected")) if body else _OK
        if not body:
            return Checked(Violation("body", "required")) if operation.body_required else _OK
        media = _media_type(headers)
        if media is None:
            return Checked(Violation("content-type", "media-type", media=True))
        declared = next((m for m in operation.media if _matches(m.range, media)), None)
        if declared is None:
            return Checked(Violation("content-type", "media-type", media=True))
        if _is_json(media):
            return self._json(body, declared.validator)
        if media == _FORM:
            return self._form(body, declared)
        return _OK  # declared, and not a structure trustmesh reads

    def _form(self, body: bytes, declared: _Media) -> Checked:
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            return Checked(Violation("body", "malformed"))
        fields: dict[str, list[str]] = {}
        for name, value in pairs:
            fields.setdefault(name, []).append(value)
        document: dict[str, Any] = {}
        for name, texts in fields.items():
            kind, items = declared.form_types.get(name, ("string", None))
            try:
                if kind == "array":
                    document[name] = [_convert(items, t) for t in texts]
                elif len(texts) > 1:
                    return Checked(Violation(f"body{pointer((name[:_NAME_LIMIT],))}", "repeated"))
                else:
                    document[name] = _convert(kind, texts[0])
            except ValueError:
                return Checked(Violation(f"body{pointer((name[:_NAME_LIMIT],))}", "type"))
        if declared.validator is not None:
            found = _first_violation(declared.validator, document, "body")
            if found is not None:
                return Checked(found)
        return _OK


# --- loading ----------------------------------------------------------------------------


def _read(path: Path, key: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{key}: {path.name} is not JSON or YAML: {exc}") from None


def _nullable(schema: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` as JSON Schema draft 4 says it."""
    if isinstance(schema, list):
        return [_nullable(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _nullable(v) for k, v in schema.items()}
    if out.pop("nullable", False) is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        elif "type" not in out and "$ref" not in out:
            pass  # no type: null is valid already
        else:
            return {"anyOf": [out, {"type": "null"}]}
    return out


class _Document:
    """An OpenAPI document, its version's dialect, and a compiler for its schemas."""

    def __init__(self, doc: Any, key: str) -> None:
        if not isinstance(doc, dict) or not isinstance(doc.get("paths"), dict):
            raise ConfigError(f"{key}: not an OpenAPI document (no paths)")
        version = str(doc.get("openapi", ""))
        if version.startswith("3.0"):
            self.draft4 = True
            doc = _nullable(doc)
        elif version.startswith("3.1"):
            self.draft4 = False
        else:
            raise ConfigError(f"{key}: OpenAPI 3.0 or 3.1 expected, not {version or 'none'!r}")
        self.doc, self.key = doc, key
        self.components = doc.get("components") or {}

    def compile(self, schema: Any, where: str) -> Validator:
        root = copy.deepcopy(schema) if isinstance(schema, dict) else schema
        if isinstance(root, dict):
            root = {**root, "components": self.components}
            if not self.draft4:
                root.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
        return _compile(root, f"{self.key} {where}", draft4=self.draft4)

    def resolve(self, item: Any, where: str) -> Any:
        """A ``$ref`` to ``#/components/…`` (a parameter or body object), followed."""
        seen = 0
        while isinstance(item, dict) and "$ref" in item:
            ref = item["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#/") or seen > 16:
                raise ConfigError(f"{self.key} {where}: only local references (#/...)")
            node: Any = self.doc
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(node, dict) or part not in node:
                    raise ConfigError(f"{self.key} {where}: {ref} does not resolve")
                node = node[part]
            item, seen = node, seen + 1
        return item

    def operation(self, method: str, template: str) -> _Operation:
        where = f"paths[{template!r}].{method.lower()}"
        path_item = self.doc["paths"].get(template)
        if not isinstance(path_item, dict):
            raise ConfigError(f"{self.key}: the route serves {method} {template}, not described")
        described = path_item.get(method.lower())
        if not isinstance(described, dict):
            raise ConfigError(f"{self.key}: the route serves {method} {template}, not described")
        declared = [*path_item.get("parameters", ()), *described.get("parameters", ())]
        params: dict[tuple[str, str], _Param] = {}
        for raw in declared:
            param = self._param(self.resolve(raw, where), where)
            params[(param.where, param.name)] = param  # the operation's overrides the path's
        names = {p.name for p in params.values() if p.where == "path"}
        bound = {s[1:-1] for s in template.split("/") if s.startswith("{")}
        if names - bound:
            raise ConfigError(
                f"{self.key} {where}: path parameters {sorted(names - bound)} unbound"
            )
        body = described.get("requestBody")
        if body is None:
            return _Operation(tuple(params.values()), None, False)
        body = self.resolve(body, where)
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, dict) or not content:
            raise ConfigError(f"{self.key} {where}.requestBody: no content")
        media = tuple(self._media(str(r).lower(), m, where) for r, m in content.items())
        return _Operation(tuple(params.values()), media, bool(body.get("required", False)))

    def _param(self, raw: Any, where: str) -> _Param:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ConfigError(f"{self.key} {where}: a parameter without a name")
        name, place = raw["name"], raw.get("in")
        if place not in ("path", "query", "header"):
            raise ConfigError(f"{self.key} {where}: parameters in {place!r} are not validated")
        if "content" in raw or raw.get("style") not in (None, "form", "simple"):
            raise ConfigError(f"{self.key} {where}: parameter {name!r}: only schema, default style")
        schema = self.resolve(raw.get("schema", {}), where)
        kind = _schema_type(schema) if isinstance(schema, dict) else None
        if kind == "object":
            raise ConfigError(f"{self.key} {where}: parameter {name!r}: objects not supported")
        items = None
        if kind == "array":
            if place != "query" or raw.get("explode", True) is not True:
                raise ConfigError(f"{self.key} {where}: {name!r}: arrays only as repeated query")
            inner = self.resolve(schema.get("items", {}), where)
            items = _schema_type(inner) if isinstance(inner, dict) else None
        required = bool(raw.get("required", False)) or place == "path"
        return _Param(
            name.lower() if place == "header" else name,
            place,
            required,
            self.compile(schema, f"{where} parameter {name!r}"),
            kind,
            items,
        )

    def _media(self, media_range: str, media: Any, where: str) -> _Media:
        schema = media.get("schema") if isinstance(media, dict) else None
        validator = None if schema is None else self.compile(schema, f"{where} {media_range}")
        types: dict[str, tuple[str | None, str | None]] = {}
        if media_range == _FORM and isinstance(schema, dict):
            resolved = self.resolve(schema, where)
            for name, prop in (resolved.get("properties") or {}).items():
                prop = self.resolve(prop, where)
                kind = _schema_type(prop) if isinstance(prop, dict) else None
                inner = self.resolve(prop.get("items", {}), where) if kind == "array" else {}
                types[name] = (kind, _schema_type(inner) if isinstance(inner, dict) else None)
        return _Media(media_range, validator, types)


def _route_validator(
    route: GatewayRoute,
    key: str,
    folder: Path,
    limits: JsonLimits,
    documents: dict[Path, _Document],
) -> RouteValidator | None:
    if route.schema_file is not None:
        path = folder / route.schema_file
        return RouteValidator(limits, body=_compile(_read(path, f"{key}.schema"), f"{key}.schema"))
    if route.openapi is None:
        return None
    path = (folder / route.openapi).resolve()
    document = documents.get(path)
    if document is None:
        document = documents[path] = _Document(_read(path, f"{key}.openapi"), f"{key}.openapi")
    operations: dict[tuple[str, str], _Operation] = {}
    for method, template in route.operations():
        if template.endswith("*"):
            raise ConfigError(
                f"{key}.openapi: {template} is not an operation a document can describe "
                "(list the route's operations in paths)"
            )
        operations[(method, template)] = document.operation(method, template)
    return RouteValidator(limits, operations=operations)


def load_validators(gateway: GatewayConfig, folder: Path) -> tuple[RouteValidator | None, ...]:
    """Each route's validator (None: the route validates nothing), compiled now;
    ConfigError naming the route's key and the problem."""
    limits = JsonLimits(**gateway.json_limits.model_dump())
    documents: dict[Path, _Document] = {}
    return tuple(
        _route_validator(route, f"gateway.routes[{i}]", folder, limits, documents)
        for i, route in enumerate(gateway.routes)
    )

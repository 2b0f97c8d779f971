"""Read ``trustmesh.yaml`` safely and turn every mistake into ``file:line: key.path: ...``."""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from trustmesh.config.models import TrustmeshConfig
from trustmesh.errors import ConfigError

__all__ = [
    "CONFIG_FILE_NAME",
    "MAX_CONFIG_BYTES",
    "config_json_schema",
    "default_config_path",
    "load_config",
    "parse_config",
    "resolve_config_path",
]

CONFIG_FILE_NAME: Final = "trustmesh.yaml"
MAX_CONFIG_BYTES: Final = 1024 * 1024
_PLAIN_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_PLAIN_YAML: Final = "plain YAML: mappings, lists, strings, numbers and booleans"

_Loc = Sequence[str | int]


class _RefusedYAMLError(yaml.MarkedYAMLError):
    """Valid YAML that trustmesh refuses anyway; ``expected`` says what to write instead."""

    def __init__(self, problem: str, mark: yaml.Mark | None, expected: str) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.expected = expected


class _StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also refuses duplicate keys and aliases (no billion laughs)."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise _RefusedYAMLError(
                "aliases (*name) are not allowed", event.start_mark, "the value written out"
            )
        return super().compose_node(parent, index)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # A scalar the resolver accepts can still fail to convert: a 5,000-digit integer
        # (int() digit limit), a timestamp like 2024-13-45. Report it at its line.
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            raise _RefusedYAMLError(
                f"cannot read this value: {exc}", node.start_mark, _PLAIN_YAML
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        self.flatten_mapping(node)
        seen: dict[Hashable, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # unhashable key: the base class reports it
                continue
            if first is not key_node:
                raise _RefusedYAMLError(
                    f"duplicate key {key!r} (first on line {first.start_mark.line + 1})",
                    key_node.start_mark,
                    "each key at most once in a mapping",
                )
        return super().construct_mapping(node, deep=deep)


def default_config_path() -> Path:
    """The packaged ``default.yaml`` (trust domain ``trustmesh.local``, dev mode)."""
    return Path(__file__).with_name("default.yaml")


def resolve_config_path(explicit: Path | None) -> Path:
    """``explicit`` if given, else ``./trustmesh.yaml`` if it exists, else the default."""
    if explicit is not None:
        return explicit
    local = Path.cwd() / CONFIG_FILE_NAME
    return local if local.is_file() else default_config_path()


def load_config(path: Path) -> TrustmeshConfig:
    """Read, parse and validate a declaration file; raise ``ConfigError`` listing every problem."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise _error(f"{path}: no such file (expected a {CONFIG_FILE_NAME} file)") from None
    except OSError as exc:
        raise _error(f"{path}: cannot be read: {exc.strerror} (expected a readable file)") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise _error(f"{path}: larger than {MAX_CONFIG_BYTES} bytes (expected a smaller file)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _error(f"{path}:{line}: not valid UTF-8 (expected a UTF-8 text file)") from None
    return parse_config(text, source=str(path))


def parse_config(text: str, *, source: str) -> TrustmeshConfig:
    """Parse and validate declaration text; ``source`` names it in error messages."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise _error(f"{source}: larger than {MAX_CONFIG_BYTES} bytes (expected a smaller file)")
    root, data = _parse_yaml(text.removeprefix("\ufeff"), source)
    if not isinstance(root, yaml.MappingNode) or not isinstance(data, dict):
        kind = "empty" if root is None else f"a {type(data).__name__}, not a mapping"
        line = 1 if root is None else root.start_mark.line + 1
        raise _error(
            f"{source}:{line}: (top level): the document is {kind} "
            "(expected a mapping with trust_domain, services and calls)"
        )
    try:
        return TrustmeshConfig.model_validate(data)
    except ValidationError as exc:
        located = [_describe(error, root, source) for error in exc.errors()]
        located.sort(key=lambda item: item[0])
        problems = tuple(line for _, line in located)
        raise ConfigError("\n".join(problems), problems=problems) from None


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of ``trustmesh.yaml`` (what ``trustmesh config schema`` prints)."""
    schema = TrustmeshConfig.model_json_schema(by_alias=True)
    schema.pop("title", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": CONFIG_FILE_NAME,
        **schema,
    }


def _error(line: str) -> ConfigError:
    return ConfigError(line, problems=(line,))


def _parse_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    try:
        loader = _StrictSafeLoader(text)  # the reader already refuses control characters
        try:
            root = loader.get_single_node()
            return root, (loader.construct_document(root) if root is not None else None)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = ", ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        expected = exc.expected if isinstance(exc, _RefusedYAMLError) else _PLAIN_YAML
        raise _error(f"{source}:{line}: {problem} (expected {expected})") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        problem = f"character #x{exc.character:04x} is not allowed"
        raise _error(f"{source}:{line}: {problem} (expected {_PLAIN_YAML})") from None
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise _error(f"{source}: {problem} (expected {_PLAIN_YAML})") from None
    except RecursionError:
        raise _error(f"{source}: nested too deeply (expected {_PLAIN_YAML})") from None


# --- mapping pydantic errors to file:line: key.path --------------------------------------


def _describe(error: ErrorDetails, root: yaml.Node, source: str) -> tuple[int, str]:
    loc = error["loc"]
    line = _line_of(root, loc)
    problem, expected = _explain(error)
    return line, f"{source}:{line}: {_key_path(loc)}: {problem} (expected {expected})"


def _key_path(loc: _Loc) -> str:
    path = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            path += f".{part}" if path else part
        else:
            path += f"[{json.dumps(part)}]"
    return path or "(top level)"


def _line_of(root: yaml.Node, loc: _Loc) -> int:
    """1-based line of the deepest node of ``loc`` present in the YAML tree."""
    node, line = root, root.start_mark.line
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next(
                (
                    kv
                    for kv in node.value
                    if isinstance(kv[0], yaml.ScalarNode) and kv[0].value == part
                ),
                None,
            )
            if match is None:
                break
            line, node = match[0].start_mark.line, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line
        elif part != "[key]":
            break
    return line + 1


_BUILTIN: Final = {
    "string_type": ("is not a string", "a string"),
    "int_type": ("is not an integer", "an integer"),
    "bool_type": ("is not true or false", "true or false"),
    "list_type": ("is not a list", "a list"),
    "dict_type": ("is not a mapping", "a mapping"),
    "model_type": ("is not a mapping", "a mapping"),
    "model_attributes_type": ("is not a mapping", "a mapping"),
}


def _explain(error: ErrorDetails) -> tuple[str, str]:
    """``(what is wrong, what was expected)`` for one pydantic error."""
    ctx = error.get("ctx") or {}
    loc, kind = error["loc"], error["type"]
    if "problem" in ctx and "expected" in ctx:
        return str(ctx["problem"]), str(ctx["expected"])
    if kind == "missing":
        return f"required key {loc[-1]!r} is missing", f"a value for {loc[-1]!r}"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        problem = f"unknown key {loc[-1]!r}"
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        if close:
            problem += f" (did you mean {close[0]!r}?)"
        return problem, "one of: " + ", ".join(allowed)
    if kind == "too_short":
        return "is empty", f"at least {ctx.get('min_length', 1)} item(s)"
    if kind in _BUILTIN:
        problem, expected = _BUILTIN[kind]
        return f"{_short(error['input'])} {problem}", expected
    return error["msg"], "a valid value"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _allowed_keys(loc: _Loc) -> list[str]:
    """The keys (aliases) of the model found at ``loc``, sorted; empty if none is."""
    current: Any = TrustmeshConfig
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = {f.alias or name: f for name, f in current.model_fields.items()}
            field = fields.get(str(part))
            current = field.annotation if field is not None else None
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) is list:
            current = get_args(current)[0]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(f.alias or name for name, f in current.model_fields.items())
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated[...]`` and ``X | None`` down to the underlying type."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation

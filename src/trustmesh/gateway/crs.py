"""The injection filter's crs mode: libmodsecurity (ModSecurity v3, the PyPI binding
``libmodsecurity``) running the OWASP Core Rule Set 3.3 on a request, with the CRS's own
anomaly scoring.

Pure logic (no sockets, no ASGI): the gateway hands :meth:`CrsFilter.inspect` the request
as the client sent it and gets back a :class:`~trustmesh.gateway.waf.Finding` (category,
where, which rule) or ``None``. A finding never holds the offending value: ModSecurity's
own log lines quote it, so they are parsed for the rule id and the variable's *name*
only, and nothing else of them is kept.

What the engine is given:

- ``SecRuleEngine On``, the request body read (``SecRequestBodyAccess``) up to the
  gateway's own body limit, JSON bodies (``application/json``, ``*+json``) through
  ModSecurity's JSON processor, XML bodies through its XML processor (external entities
  off), multipart bodies strictly; a body that does not parse refused (rules 200002–4,
  as the CRS's ``modsecurity.conf-recommended`` does), more than 1,000 arguments refused
  (200007); PCRE match limits of 1,000 (the CRS's recommended setting): without them
  some of its patterns take seconds on a 10 KB run of ``%3C`` or ``<a ``, holding the
  gateway's event loop (the verdicts on ``vectors/payloads`` are the same at 1,000 and
  100,000; an attack padded with 1,000 ``<`` evaded one more time in 110);
- the CRS's anomaly scoring: ``tx.paranoia_level`` (1–4) and
  ``tx.inbound_anomaly_score_threshold`` (default 5: one critical rule) are set; the CRS
  adds each matching rule's score and rule 949110 refuses at the threshold. The
  methods the gateway serves (PUT, PATCH and DELETE too) and the JSON media types a
  gateway route may validate are allowed by policy (rules 911100, 920420);
- the CRS's request rules (``REQUEST-9xx-*.conf``) but not: 910 (IP reputation:
  GeoIP and DNS block lists, which need a database and the network), 912 (DoS
  protection: persistent collections), 905 (exceptions for Apache's internal dummy
  connection from 127.0.0.1) and the response rules (the gateway inspects requests);
- the request line (method, the target as the client sent it, path and query), every
  header but ``Authorization`` and ``Proxy-Authorization`` (a credential is no place to
  look, nor to leave in an engine's log) and the body.

The CRS's rules are not bundled: Debian's ``modsecurity-crs`` package (3.3.4) installs
them in :data:`DEFAULT_RULES`; ``waf.crs_rules`` names another directory. Loading takes
≈ 30 ms and is done once per distinct ``(rules, paranoia, threshold, body limit)``.

Categories, from the tags of the rules that matched (the one with most score wins):
``attack-sqli`` → sqli, ``attack-xss`` → xss, ``attack-lfi`` → traversal,
``attack-rce`` → cmdi, and the CRS's others as themselves (``rfi``, ``php``, ``java``,
``nodejs``, ``session-fixation``, ``protocol``, ``generic``). The check is
``crs-<rule id>`` of the highest-scoring rule of that category; :attr:`CrsFinding.score`
is the request's anomaly score.

Cost: the binding holds the GIL while the engine runs (0.5 ms for a GET, ≈ 3 ms for a
1 KB form or JSON body of 20 fields at paranoia 1: ``benchmarks/waf_gateway.py --mode
crs``), so the gateway inspects in worker processes of its own
(:mod:`trustmesh.gateway.crs_workers`, ``gateway.crs_workers``), and its event loop
serves other requests meanwhile; some CRS patterns still cost
more than linear time on long inputs, so the rules inspect at most ``waf.max_body``
(32 KiB by default: ≈ 0.1 s at worst here) and a larger body is refused with ``413``
by the gateway, never passed uninspected. A route that needs the gateway's throughput
uses fast mode. Not thread-safe: one filter inspects one request at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from trustmesh.errors import ConfigError
from trustmesh.gateway.waf import Category, Finding

if TYPE_CHECKING:
    from libmodsecurity import RuleMessage

    from trustmesh.config.gateway import GatewayConfig

__all__ = ["DEFAULT_RULES", "CrsFilter", "CrsFinding", "CrsSpec", "find_rules", "load_rule_sets"]

DEFAULT_RULES = Path("/usr/share/modsecurity-crs/rules")
_SKIPPED = ("REQUEST-905-", "REQUEST-910-", "REQUEST-912-")
_NEVER = frozenset({b"authorization", b"proxy-authorization"})
_ARGS_LIMIT = 1000
# the anomaly score each severity adds (crs-setup.conf, tx.critical_anomaly_score …)
_SCORE = {2: 5, 3: 4, 4: 3, 5: 2}
_TAGS = {
    "attack-sqli": Category.SQLI,
    "attack-xss": Category.XSS,
    "attack-lfi": Category.TRAVERSAL,
    "attack-rce": Category.CMDI,
    "attack-rfi": Category.RFI,
    "attack-php": Category.PHP,
    "attack-java": Category.JAVA,
    "attack-nodejs": Category.NODEJS,
    "attack-fixation": Category.FIXATION,
    "attack-protocol": Category.PROTOCOL,
    "attack-reputation-scanner": Category.PROTOCOL,
    "attack-generic": Category.GENERIC,
}
_ID = re.compile(r'\[id "(\d{1,9})"\]')
_TOTAL = re.compile(r"\(Total Score: (\d{1,6})\)")
_WITHIN = re.compile(r" found within ([A-Z_]{2,32})(?::([A-Za-z0-9_.\-\[\]]{1,64}))?: ")
_JSON_TYPES = (
    "|application/merge-patch+json| |application/json-patch+json| |application/problem+json|"
)
_METHODS = "GET HEAD POST OPTIONS PUT PATCH DELETE"


@dataclass(frozen=True, slots=True)
class CrsFinding(Finding):
    """A refusal by the Core Rule Set: the finding and the request's anomaly score."""

    score: int = 0


def find_rules(configured: Path | None = None) -> Path:
    """The directory of the CRS's ``*.conf`` rule files: ``configured`` or
    :data:`DEFAULT_RULES`; ConfigError saying how to get them when it has none."""
    where = configured or DEFAULT_RULES
    if not any(where.glob("REQUEST-9*.conf")):
        raise ConfigError(
            f"waf mode crs needs the OWASP Core Rule Set 3.3 and {where} holds no "
            "REQUEST-9*.conf: install it (Debian: apt-get install modsecurity-crs) or set "
            "waf.crs_rules to its rules directory"
        )
    return where


def _setup(paranoia: int, threshold: int, body_limit: int) -> str:
    """The engine's settings and the CRS's setup (what crs-setup.conf would hold)."""
    return f"""
SecRuleEngine On
SecRequestBodyAccess On
SecRequestBodyLimit {body_limit}
SecRequestBodyNoFilesLimit {body_limit}
SecRequestBodyLimitAction Reject
SecRequestBodyJsonDepthLimit 512
SecPcreMatchLimit 1000
SecPcreMatchLimitRecursion 1000
SecResponseBodyAccess Off
SecAuditEngine Off
SecXmlExternalEntity Off
SecRule REQUEST_HEADERS:Content-Type "@rx ^(?:application(?:/soap\\+|/)|text/)xml" \
    "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "@rx ^application/(?:[a-z0-9.-]+\\+)?json" \
    "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRule REQBODY_ERROR "!@eq 0" \
    "id:200002,phase:2,t:none,log,deny,status:400,tag:'attack-protocol',\
msg:'Failed to parse request body'"
SecRule MULTIPART_STRICT_ERROR "!@eq 0" \
    "id:200003,phase:2,t:none,log,deny,status:400,tag:'attack-protocol',\
msg:'Multipart request body failed strict validation'"
SecRule MULTIPART_UNMATCHED_BOUNDARY "@eq 1" \
    "id:200004,phase:2,t:none,log,deny,status:400,tag:'attack-protocol',\
msg:'Multipart parser detected a possible unmatched boundary'"
SecRule TX:MSC_PCRE_LIMITS_EXCEEDED "@eq 1" \
    "id:200005,phase:2,t:none,log,deny,status:400,tag:'attack-protocol',\
msg:'A rule could not finish matching within the PCRE limits'"
SecRule &ARGS "@ge {_ARGS_LIMIT}" \
    "id:200007,phase:2,t:none,log,deny,status:400,tag:'attack-protocol',\
msg:'Too many arguments'"
SecDefaultAction "phase:1,log,auditlog,pass"
SecDefaultAction "phase:2,log,auditlog,pass"
SecAction "id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level={paranoia}"
SecAction "id:900110,phase:1,nolog,pass,t:none,\
setvar:tx.inbound_anomaly_score_threshold={threshold},\
setvar:tx.outbound_anomaly_score_threshold=4"
SecAction "id:900200,phase:1,nolog,pass,t:none,setvar:'tx.allowed_methods={_METHODS}'"
SecAction "id:900220,phase:1,nolog,pass,t:none,setvar:'tx.allowed_request_content_type=\
|application/x-www-form-urlencoded| |multipart/form-data| |multipart/related| |text/xml| \
|application/xml| |application/soap+xml| |application/json| |application/octet-stream| \
|application/csp-report| |text/plain| {_JSON_TYPES}'"
SecAction "id:900990,phase:1,nolog,pass,t:none,setvar:tx.crs_setup_version=334"
"""


@dataclass(frozen=True)
class CrsSpec:
    """What a :class:`CrsFilter` is built from: its rules folder (None: Debian's), paranoia
    level, anomaly threshold and body limit (the gateway's crs workers build their own
    from it: :mod:`trustmesh.gateway.crs_workers`)."""

    rules: Path | None
    paranoia: int
    threshold: int
    body_limit: int

    def build(self) -> CrsFilter:
        return CrsFilter(
            rules=self.rules,
            paranoia=self.paranoia,
            threshold=self.threshold,
            body_limit=self.body_limit,
        )


class CrsFilter:
    """The Core Rule Set, loaded once (ConfigError when the binding or the rules are
    missing or do not load); :meth:`inspect` per request."""

    __slots__ = (
        "_engine",
        "_messages",
        "_rules",
        "_transaction",
        "body_limit",
        "paranoia",
        "spec",
        "threshold",
    )

    def __init__(
        self,
        *,
        rules: Path | None = None,
        paranoia: int = 1,
        threshold: int = 5,
        body_limit: int = 32 << 10,
    ) -> None:
        try:
            from libmodsecurity import ModSecurity, RulesSet, Transaction
        except ImportError as exc:  # a platform the binding has no wheel for
            raise ConfigError(
                "waf mode crs needs the libmodsecurity package (pip install libmodsecurity), "
                f"which does not import here: {exc}"
            ) from None
        if not 1 <= paranoia <= 4:
            raise ConfigError(f"waf.paranoia must be 1 to 4, not {paranoia}")
        directory = find_rules(rules)
        self.spec = CrsSpec(rules, paranoia, threshold, body_limit)
        self.paranoia = paranoia
        self.threshold = threshold
        self.body_limit = body_limit
        self._messages: list[RuleMessage] = []
        self._engine = ModSecurity()
        self._engine.set_connector_information("trustmesh-gateway")
        self._engine.set_rule_message_callback(self._messages.append)
        self._rules = RulesSet()
        self._load(self._rules.load(_setup(paranoia, threshold, body_limit)), "setup")
        for path in sorted(directory.glob("REQUEST-9*.conf")):
            if not path.name.startswith(_SKIPPED):
                self._load(self._rules.load_from_uri(str(path)), str(path))
        self._transaction = Transaction

    def _load(self, count: int, what: str) -> None:
        if count < 0:
            raise ConfigError(
                f"waf mode crs: {what} does not load: {self._rules.get_parser_error()}"
            )

    def inspect(
        self,
        *,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        client: tuple[str, int] = ("0.0.0.0", 0),  # noqa: S104 - an address, not a bind  # nosec B104 # a placeholder peer address, never bound
        server: tuple[str, int] = ("0.0.0.0", 443),  # noqa: S104  # nosec B104 # a placeholder server address, never bound
    ) -> CrsFinding | None:
        """The CRS's verdict on one request (``target``: the request target as sent, path
        and query), or ``None`` when its anomaly score stays under the threshold."""
        self._messages.clear()
        tx = self._transaction(self._engine, self._rules)
        tx.process_connection(client[0], client[1], server[0], server[1])
        tx.process_uri(target.decode("latin-1"), method, "1.1")
        for name, value in headers:
            if name.lower() not in _NEVER:
                tx.add_request_header(name.decode("latin-1"), value.decode("latin-1"))
        tx.process_request_headers()
        verdict = tx.intervention()
        if verdict is None or not verdict.disruptive:
            if body:
                tx.append_request_body(body)
            tx.process_request_body()
            verdict = tx.intervention()
        if verdict is None or not verdict.disruptive:
            return None
        names = frozenset(
            n.decode("latin-1").lower() for n, _ in headers if n.lower() not in _NEVER
        )
        cookies = b";".join(v for n, v in headers if n.lower() == b"cookie")
        seen = target + b"\n" + body + b"\n" + cookies
        return self._finding(_text(lambda: verdict.log), target, seen, names)

    def _finding(self, log: str, target: bytes, seen: bytes, names: frozenset[str]) -> CrsFinding:
        """What refused the request, from the rules that matched (never their data)."""
        scores: dict[Category, int] = {}
        best: dict[Category, tuple[int, RuleMessage]] = {}
        for message in self._messages:
            category = next((_TAGS[t] for t in message.tags if t in _TAGS), None)
            if category is None:
                continue
            score = _SCORE.get(message.severity, 0)
            scores[category] = scores.get(category, 0) + score
            if category not in best or score > best[category][0]:
                best[category] = (score, message)
        total = _TOTAL.search(log)
        score = int(total.group(1)) if total else sum(scores.values())
        if not scores:  # the engine's own refusal (a body that does not parse, …)
            rule = _ID.search(log)
            check = f"crs-{rule.group(1)}" if rule else "crs"
            return CrsFinding(Category.PROTOCOL, "request", check, score)
        category = max(scores, key=lambda c: scores[c])
        message = best[category][1]
        location = _location(_text(lambda: message.data), seen, names, target)
        return CrsFinding(category, location, f"crs-{message.rule_id}", score)


def load_rule_sets(gateway: GatewayConfig, config_dir: Path) -> tuple[CrsFilter | None, ...]:
    """Each route's Core Rule Set (None: the route's filter is not in crs mode), loaded
    once per distinct setting, as the gateway and ``config check`` do (ConfigError
    naming the route when it cannot be)."""
    loaded: dict[tuple[object, ...], CrsFilter] = {}
    sets: list[CrsFilter | None] = []
    for i, route in enumerate(gateway.routes):
        config = route.waf or gateway.waf
        if config.mode != "crs":
            sets.append(None)
            continue
        rules = config_dir / config.crs_rules if config.crs_rules else None
        body_limit = min(config.max_body, gateway.max_body_bytes)
        key = (rules, config.paranoia, config.threshold, body_limit)
        if key not in loaded:
            try:
                loaded[key] = CrsFilter(
                    rules=rules,
                    paranoia=config.paranoia,
                    threshold=config.threshold,
                    body_limit=body_limit,
                )
            except ConfigError as exc:
                raise ConfigError(f"gateway.routes[{i}].waf: {exc.detail}") from None
        sets.append(loaded[key])
    return tuple(sets)


def _text(read: Callable[[], str | None]) -> str:
    """A text field of the engine's (a log line, a match's data), or "" where it holds
    bytes that are not UTF-8 (the binding decodes strictly: the attacker's bytes)."""
    try:
        return read() or ""
    except UnicodeDecodeError:
        return ""


def _location(data: str, seen: bytes, headers: frozenset[str], target: bytes) -> str:
    """Where a rule matched, in the fast mode's words, from ModSecurity's
    ``found within VARIABLE:name:``. The text before it is the matched data, the
    attacker's: a ``found within`` is believed only where its name is one the request
    holds (a header it sent, a name in its target or body, ``seen``); a name that is not
    a plain identifier is left out (it may be the attack itself)."""
    for found in _WITHIN.finditer(data):
        variable, name = found.group(1), found.group(2) or ""
        if variable in ("REQUEST_HEADERS", "REQUEST_HEADERS_NAMES"):
            if name.lower() in headers:
                return f"header.{name.lower()}"
            continue
        if name and name.rpartition(".")[2].encode("latin-1", "replace") not in seen:
            continue
        if variable in ("REQUEST_COOKIES", "REQUEST_COOKIES_NAMES"):
            return f"header.cookie.{name}" if name else "header.cookie"
        if variable.startswith(
            ("REQUEST_URI", "REQUEST_FILENAME", "REQUEST_BASENAME", "REQUEST_LINE")
        ):
            return "path"
        if variable in ("REQUEST_BODY", "XML", "FILES", "FILES_NAMES"):
            return "body"
        if variable in ("ARGS_GET", "ARGS_GET_NAMES"):
            return f"query.{name}" if name else "query"
        if variable in ("ARGS", "ARGS_NAMES", "ARGS_POST", "ARGS_POST_NAMES"):
            if name.startswith("json."):
                return "body/" + name[5:].replace(".", "/")
            if name and _in_query(name, target):
                return f"query.{name}"
            return f"form.{name}" if name else "form"
    return "request"


def _in_query(name: str, target: bytes) -> bool:
    query = target.partition(b"?")[2].decode("latin-1")
    return any(key == name for key, _ in parse_qsl(query, keep_blank_values=True))

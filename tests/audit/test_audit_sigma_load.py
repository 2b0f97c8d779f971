"""Loading rule files: what is accepted (files, directories, references across files,
log sources, aliases, output), and every construct refused, with the file, the rule and
the construct named."""

from __future__ import annotations

from pathlib import Path

import pytest
from auditkit import write_rules

from trustmesh.audit.behaviour import LocalTime, WorkingHours
from trustmesh.audit.extensions import Action
from trustmesh.audit.ruleset import CorrelationType, Threshold
from trustmesh.audit.sigma_rules import CATEGORIES, load_ruleset
from trustmesh.errors import ConfigError

LOCAL = LocalTime(WorkingHours())

BASE = """\
title: Failed login
id: 0f5b3f0e-1c1a-4a52-9a6e-000000000001
name: failed
logsource: {product: trustmesh, service: auth, category: authentication}
detection:
  sel: {unmapped.trustmesh.reason: login-failed}
  condition: sel
"""


def rule(detection: str, *, extra: str = "", logsource: str = "{product: trustmesh}") -> str:
    return (
        "title: Probe\nid: 0f5b3f0e-1c1a-4a52-9a6e-0000000000aa\n"
        f"logsource: {logsource}\ndetection:\n{detection}\n{extra}"
    )


def correlation(body: str, *, extra: str = "") -> str:
    return (
        BASE
        + "---\ntitle: Many\nid: 0f5b3f0e-1c1a-4a52-9a6e-000000000002\ncorrelation:\n"
        + body
        + extra
    )


def refused(tmp_path: Path, text: str) -> ConfigError:
    path = write_rules(tmp_path, text, "bad.yml")
    with pytest.raises(ConfigError) as caught:
        load_ruleset([path], LOCAL)
    return caught.value


SEL = "  sel: {unmapped.trustmesh.reason: login-failed}\n  condition: sel"

REFUSALS = [
    ("unknown modifier", rule("  sel: {message|sounds_like: x}\n  condition: sel"), "sounds_like"),
    ("expand", rule("  sel: {message|expand: '%x%'}\n  condition: sel"), "modifier 'expand'"),
    ("wide", rule("  sel: {message|wide: x}\n  condition: sel"), "modifier 'wide'"),
    ("utf16", rule("  sel: {message|utf16: x}\n  condition: sel"), "modifier 'utf16'"),
    ("utf16be", rule("  sel: {message|utf16be: x}\n  condition: sel"), "modifier 'utf16be'"),
    (
        "pipe",
        rule("  sel: {message: x}\n  condition: sel | count() > 5"),
        "condition 'sel | count() > 5'",
    ),
    (
        "undefined detection",
        rule("  sel: {message: x}\n  condition: sel and other"),
        "condition 'sel and other'",
    ),
    (
        "selector matching nothing",
        rule("  sel: {message: x}\n  condition: 1 of nope_*"),
        "condition '1 of nope_*'",
    ),
    (
        "unknown reason",
        rule("  sel: {unmapped.trustmesh.reason: login-fail}\n  condition: sel"),
        "value 'login-fail' of unmapped.trustmesh.reason",
    ),
    (
        "unknown reason in status_detail",
        rule("  sel: {status_detail: [ok, nope]}\n  condition: sel"),
        "value 'nope' of status_detail",
    ),
    (
        "unknown derived field",
        rule("  sel: {derived.moon: full}\n  condition: sel"),
        "field 'derived.moon'",
    ),
    ("other product", rule(SEL, logsource="{product: windows}"), "logsource product 'windows'"),
    (
        "unknown category",
        rule(SEL, logsource="{category: process_creation}"),
        "logsource category 'process_creation'",
    ),
    (
        "no id",
        "title: Probe\nlogsource: {product: trustmesh}\ndetection:\n" + SEL,
        "id: a rule needs an id or a name",
    ),
    ("dedup timespan", rule(SEL, extra="dedup: {group-by: [a], timespan: 0s}"), "dedup.timespan"),
    (
        "baseline capacity",
        rule(SEL, extra="baseline: {first-seen: a, capacity: 0}"),
        "baseline.capacity",
    ),
    ("baseline without fields", rule(SEL, extra="baseline: {learning: 1h}"), "baseline.first-seen"),
    (
        "filter",
        BASE
        + "---\ntitle: Quiet\nlogsource: {product: trustmesh}\nfilter:\n  rules: [failed]\n  sel: {message: x}\n  condition: not sel\n",
        "filter 'Quiet'",
    ),
    (
        "value_sum",
        correlation(
            "  type: value_sum\n  rules: [failed]\n  timespan: 1m\n  condition: {gte: 3, field: x}\n"
        ),
        "correlation type 'value_sum'",
    ),
    (
        "unknown correlation type",
        correlation(
            "  type: sometimes\n  rules: [failed]\n  timespan: 1m\n  condition: {gte: 3}\n"
        ),
        "'sometimes' is no valid Sigma correlation type",
    ),
    (
        "missing reference",
        correlation(
            "  type: event_count\n  rules: [nowhere]\n  timespan: 1m\n  condition: {gte: 3}\n"
        ),
        "correlation rule reference 'nowhere': no such rule loaded",
    ),
    (
        "extended not",
        correlation(
            "  type: temporal\n  rules: [failed]\n  timespan: 1m\n  condition: failed and not failed\n"
        ),
        "extended condition 'not'",
    ),
    (
        "ordered condition",
        correlation(
            "  type: temporal_ordered\n  rules: [failed]\n  timespan: 1m\n  condition: {gte: 3}\n"
        ),
        "temporal_ordered condition",
    ),
    (
        "value_count field list",
        correlation(
            "  type: value_count\n  rules: [failed]\n  timespan: 1m\n  condition: {gte: 3, field: [a, b]}\n"
        ),
        "condition field: value_count",
    ),
    (
        "event_count field",
        correlation(
            "  type: event_count\n  rules: [failed]\n  timespan: 1m\n  condition: {gte: 3, field: a}\n"
        ),
        "condition field: event_count counts no field",
    ),
    (
        "dedup on correlation",
        correlation(
            "  type: event_count\n  rules: [failed]\n  timespan: 1m\n  condition: {gte: 3}\n",
            extra="dedup: {timespan: 1m}\n",
        ),
        "dedup: a correlation alerts once",
    ),
    (
        "alias without the rule",
        correlation(
            "  type: event_count\n  rules: [failed]\n  group-by: [who]\n  aliases: {who: {other: x}}\n  timespan: 1m\n  condition: {gte: 3}\n"
        ),
        "alias 'who'",
    ),
    (
        "duplicate id",
        BASE + "---\n" + BASE.replace("name: failed", "name: again"),
        "another rule has this id or name",
    ),
    (
        "duplicate yaml key",
        rule("  sel: {message: x}\n  sel: {message: y}\n  condition: sel"),
        "Duplicate key 'sel'",
    ),
    ("not a mapping", "- a\n- b\n", "every YAML document must be a mapping"),
]


#: (case, the rule's response attribute, the construct named)
RESPONSES = [
    ("response action", "[{action: nuke}]", "response action 'nuke'"),
    ("response key", "[{action: lock-user, when: now}]", "response[0]: unknown key(s) when"),
    ("block without duration", "[{action: block-address}]", "response[0].duration"),
    ("duration too long", "[{action: block-address, duration: 31d}]", "at most 30d"),
    ("duration on lock", "[{action: lock-user, duration: 1h}]", "lock-user takes no duration"),
    ("bad duration", "[{action: block-address, duration: soon}]", "'soon' is not a timespan"),
    ("bad dry-run", "[{action: lock-user, dry-run: maybe}]", "response[0].dry-run"),
    ("bad field", "[{action: lock-user, field: 'a..b'}]", "response[0].field"),
    ("response not a list", "{action: lock-user}", "response: expected a list"),
]
REFUSALS += [(n, rule(SEL, extra=f"response: {r}"), c) for n, r, c in RESPONSES]


@pytest.mark.parametrize(
    ("text", "construct"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refused_with_the_file_and_the_construct_named(
    tmp_path: Path, text: str, construct: str
) -> None:
    error = refused(tmp_path, text)
    assert len(error.problems) == 1, error.problems
    assert str(tmp_path / "bad.yml") in error.problems[0]
    assert construct in error.problems[0]
    assert error.code == "invalid_config"


def test_a_correlation_of_correlations_and_a_baseline_input_are_refused(tmp_path: Path) -> None:
    text = correlation(
        "  type: event_count\n  rules: [failed]\n  timespan: 1m\n  condition: {gte: 3}\n"
    ).replace("title: Many\n", "title: Many\nname: many\n")
    text += "---\ntitle: Outer\nid: 0f5b3f0e-1c1a-4a52-9a6e-000000000003\ncorrelation:\n"
    text += "  type: event_count\n  rules: [many]\n  timespan: 1h\n  condition: {gte: 2}\n"
    assert "a correlation of correlations" in refused(tmp_path, text).problems[0]
    baseline = BASE + "baseline: {first-seen: actor.user.uid}\n"
    text = baseline + "---\ntitle: Many\nid: 0f5b3f0e-1c1a-4a52-9a6e-000000000002\ncorrelation:\n"
    text += "  type: event_count\n  rules: [failed]\n  timespan: 1m\n  condition: {gte: 3}\n"
    assert "a baseline rule feeds no correlation" in refused(tmp_path, text).problems[0]


def test_every_problem_in_every_file_is_reported(tmp_path: Path) -> None:
    write_rules(tmp_path, rule("  sel: {message|expand: '%x%'}\n  condition: sel"), "a.yml")
    write_rules(tmp_path, rule(SEL, logsource="{product: linux}").replace("aa\n", "ab\n"), "b.yml")
    with pytest.raises(ConfigError) as caught:
        load_ruleset([tmp_path], LOCAL)
    problems = caught.value.problems
    assert len(problems) == 2
    assert "a.yml" in problems[0]
    assert "modifier 'expand'" in problems[0]
    assert "b.yml" in problems[1]
    assert "logsource product 'linux'" in problems[1]
    assert "2 problem(s)" in str(caught.value)


def test_a_missing_path_and_a_large_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file or directory"):
        load_ruleset([tmp_path / "nope"], LOCAL)
    big = tmp_path / "big.yml"
    big.write_text("# " + "x" * (1 << 20) + "\n" + BASE)
    with pytest.raises(ConfigError, match="larger than"):
        load_ruleset([big], LOCAL)


def test_directories_are_read_recursively_and_references_cross_files(tmp_path: Path) -> None:
    (tmp_path / "inputs").mkdir()
    write_rules(tmp_path / "inputs", BASE, "failed.yaml")
    write_rules(
        tmp_path,
        "title: Many\nid: 0f5b3f0e-1c1a-4a52-9a6e-000000000002\ncorrelation:\n"
        "  type: event_count\n  rules: [failed]\n  group-by: [unmapped.trustmesh.attributes.login]\n"
        "  timespan: 2m\n  condition: {gt: 4}\nresponse: [{action: lock-user}]\n",
        "many.yml",
    )
    (tmp_path / "notes.txt").write_text("not a rule")
    ruleset = load_ruleset([tmp_path], LOCAL)
    assert [p.name for p in ruleset.files] == ["failed.yaml", "many.yml"]
    (detection,) = ruleset.detections
    (many,) = ruleset.correlations
    assert detection.info.name == "failed"
    assert not detection.output
    assert many.type is CorrelationType.EVENT_COUNT
    assert many.rules == (detection.info.key,)
    assert many.timespan_ms == 120_000
    assert many.threshold == Threshold("gt", 4)
    assert many.extensions.response[0].action is Action.LOCK_USER
    assert many.extensions.response[0].field == "unmapped.trustmesh.attributes.login"


def test_generate_keeps_the_input_rule_alerting(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        correlation(
            "  type: event_count\n  rules: [failed]\n  generate: true\n  timespan: 1m\n"
            "  condition: {gte: 3}\n"
        ),
    )
    assert load_ruleset([path], LOCAL).detections[0].output


def test_aliases_name_a_field_per_rule(tmp_path: Path) -> None:
    text = (
        BASE
        + "---\n"
        + BASE.replace("000000000001", "000000000009")
        .replace("name: failed", "name: denied")
        .replace("login-failed", "policy-deny")
    )
    text += "---\ntitle: Both\nid: 0f5b3f0e-1c1a-4a52-9a6e-000000000002\ncorrelation:\n"
    text += "  type: temporal\n  rules: [failed, denied]\n  group-by: [who]\n"
    text += "  aliases: {who: {failed: actor.user.uid, denied: unmapped.trustmesh.sub}}\n"
    text += "  timespan: 5m\n"
    (both,) = load_ruleset([write_rules(tmp_path, text)], LOCAL).correlations
    failed, denied = both.rules
    assert both.fields == {failed: ("actor.user.uid",), denied: ("unmapped.trustmesh.sub",)}
    assert both.threshold == Threshold("gte", 2)  # temporal: every rule, by default


def test_logsource_category_is_the_ocsf_class(tmp_path: Path) -> None:
    assert CATEGORIES == {
        "detection_finding": 2004,
        "authentication": 3002,
        "authorize_session": 3003,
        "entity_management": 3004,
        "api_activity": 6003,
    }
    (detection,) = load_ruleset(
        [write_rules(tmp_path, BASE.replace("name: failed", "name: f"))], LOCAL
    ).detections
    assert detection.constraints["class_uid"] == frozenset({"3002"})
    assert detection.constraints["metadata.product.feature.name"] == frozenset({"auth"})
    event = {
        "class_uid": 3002,
        "metadata": {"product": {"feature": {"name": "Auth"}}},
        "unmapped": {"trustmesh": {"reason": "login-failed"}},
    }
    assert detection.predicate(event)
    assert not detection.predicate({**event, "class_uid": 6003})
    assert not detection.predicate(
        {**event, "metadata": {"product": {"feature": {"name": "gateway"}}}}
    )


def test_constraints_cover_every_path_to_a_match(tmp_path: Path) -> None:
    text = rule(
        "  a: {unmapped.trustmesh.reason: [policy-deny, token-revoked], class_uid: 6003}\n"
        "  b: {unmapped.trustmesh.reason: rate-limited}\n"
        "  c: {message: x}\n"
        "  condition: (a or b) and not c"
    )
    (detection,) = load_ruleset([write_rules(tmp_path, text)], LOCAL).detections
    assert detection.constraints == {
        "unmapped.trustmesh.reason": frozenset({"policy-deny", "token-revoked", "rate-limited"})
    }
    text = rule(
        "  a: {unmapped.trustmesh.reason: policy-deny}\n  b: {class_uid: 6003}\n  condition: a or b"
    )
    (detection,) = load_ruleset([write_rules(tmp_path, text)], LOCAL).detections
    assert detection.constraints == {}  # either may match alone: nothing is required

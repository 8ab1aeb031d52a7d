"""Annotation templates: checked at Apply (syntax, variables, filters), rendered in a sandbox."""

from __future__ import annotations

from typing import Any

import pytest

from sysmon.core import alert_template as t
from sysmon.core.config_model import validate_resource
from sysmon.core.metrics import InvalidInput

RULE: dict[str, Any] = {"metric": "system.cpu.utilization", "condition": {"op": ">", "threshold": 0.9}}


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("{{ host ", "template error"),
        ("{{ hots }}", "unknown variable 'hots'"),
        ("{{ value | percentage }}", "unknown filter 'percentage'"),
        ("{% if value %}{{ value | nope }}{% endif %}", "unknown filter 'nope'"),
    ],
)
def test_bad_templates_are_refused_naming_the_annotation(source: str, problem: str) -> None:
    with pytest.raises(t.TemplateProblem, match=problem):
        t.check(source)
    with pytest.raises(InvalidInput) as e:
        validate_resource("AlertRule", "r", {**RULE, "annotations": {"summary": source}})
    assert e.value.field == "spec.annotations"
    assert "'summary'" in str(e.value)
    assert problem in str(e.value)


def test_render() -> None:
    ctx = {"host": "db-1", "value": 0.9349, "labels": {"mountpoint": "/"}}
    assert t.render("{{ host }}: {{ labels.mountpoint }} is {{ value | percent }} full", ctx) == "db-1: / is 93% full"
    assert t.render("{{ value | percent(1) }}", ctx) == "93.5%"
    assert t.render("no template", ctx) == "no template"
    assert t.render("{{ threshold }}", ctx) == "None"  # known but not set here


def test_render_never_raises() -> None:
    out = t.render("{{ host.__class__.__mro__ }}", {"host": "x"})  # the sandbox refuses
    assert "template error" in out
    out = t.render("{{ labels['a'] + 1 }}", {"labels": {"a": "text"}})
    assert "template error" in out


@pytest.mark.parametrize(
    ("fn", "value", "text"),
    [
        (t.humanize, 1234567, "1.235M"),
        (t.humanize, 0.002, "2m"),
        (t.humanize, 12, "12"),
        (t.humanize, 0, "0"),
        (t.humanize1024, 3 * 1024**3, "3Gi"),
        (t.humanize1024, 512, "512"),
        (t.humanize_duration, 90061, "1d 1h 1m 1s"),
        (t.humanize_duration, 120, "2m"),
        (t.humanize_duration, 0.5, "0.5s"),
        (t.percent, "n/a", "n/a"),
    ],
)
def test_filters(fn: Any, value: Any, text: str) -> None:
    assert fn(value) == text


def test_credentials_stay_out_of_rules() -> None:
    with pytest.raises(InvalidInput) as e:
        validate_resource("AlertRule", "r", {**RULE, "actions": [{"webhook": {"url": "http://u:secret@h/hook"}}]})
    assert e.value.field == "spec.actions.0.webhook.url"
    assert "bearerTokenEnv" in str(e.value)
    assert "secret" not in str(e.value)
    ok = validate_resource("AlertRule", "r", {**RULE, "actions": [
        {"webhook": {"url": "http://h/hook", "bearerTokenEnv": "HOOK_TOKEN"}}]})
    assert ok.actions[0].webhook is not None  # type: ignore[attr-defined]


@pytest.mark.parametrize(("repeat", "ok"), [("0s", True), ("5s", False), ("10s", True), ("4h", True)])
def test_repeat_interval_bounds(repeat: str, ok: bool) -> None:
    spec = {**RULE, "repeatInterval": repeat}
    if ok:
        validate_resource("AlertRule", "r", spec)
    else:
        with pytest.raises(InvalidInput) as e:
            validate_resource("AlertRule", "r", spec)
        assert e.value.field == "spec.repeatInterval"


@pytest.mark.parametrize(
    "source",
    [
        "{{ host | center(1000000000) }}",
        "{% for a in labels %}{% for b in labels %}{% for c in labels %}x{% endfor %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}x{% endfor %}",
    ],
)
def test_templates_that_could_exhaust_the_service_are_refused(source: str) -> None:
    with pytest.raises(t.TemplateProblem):
        t.check(source)


def test_repetition_is_bounded_at_render() -> None:
    assert t.render("{{ 'ab' * 3 }}", {}) == "ababab"
    assert t.render("{{ 'a' * 1000000000 }}", {}) == ""
    assert t.render("{{ 2 ** 100000 }}", {}) == ""
    loop = "{% for k, v in labels | dictsort %}{{ k }}={{ v }} {% endfor %}"
    assert t.render(loop, {"labels": {"b": "2", "a": "1"}}) == "a=1 b=2 "

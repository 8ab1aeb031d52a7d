"""Rules files for `sysmon up --rules`: kubectl's YAML documents, errors naming file, document, field."""

from __future__ import annotations

from pathlib import Path

import pytest

from sysmon.core.rules_file import RulesFileError, load_rules, parse_rules

GOOD = """
apiVersion: sysmon.dev/v1alpha1
kind: AlertRule
metadata: {name: root-disk-full}
spec:
  metric: system.filesystem.utilization
  match: {mountpoint: /}
  aggregation: avg
  window: 1m
  condition: {op: ">", threshold: 0.9, resolveThreshold: 0.85}
  for: 2m
  severity: critical
  annotations: {summary: "{{ host }}: / is {{ value | percent }} full"}
  actions:
    - webhook: {url: "http://receiver:9000/hook"}
---
apiVersion: sysmon.dev/v1alpha1
kind: AlertRule
metadata: {name: load, generation: 3}
spec:
  metric: system.cpu.load_average.1m
  condition: {op: ">", threshold: 8}
"""


def test_documents_become_rules() -> None:
    rules = parse_rules(GOOD, "rules.yaml")
    assert [(r.name, r.generation) for r in rules] == [("root-disk-full", 1), ("load", 3)]
    assert rules[0].spec["condition"]["resolveThreshold"] == 0.85
    assert rules[1].source == "rules.yaml, document 2"


def test_a_kubectl_list_is_accepted() -> None:
    text = "apiVersion: v1\nkind: List\nitems:\n" + "".join(
        f"- apiVersion: sysmon.dev/v1alpha1\n  kind: AlertRule\n  metadata: {{name: r{i}}}\n"
        f"  spec: {{metric: m, condition: {{op: '>', threshold: {i}}}}}\n" for i in range(3))
    assert [r.name for r in parse_rules(text)] == ["r0", "r1", "r2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [", "not valid YAML"),
        ("- 1\n- 2", "expected a mapping"),
        ("apiVersion: sysmon.dev/v1alpha1\nkind: MonitoredFleet\nmetadata: {name: x}\nspec: {}", "kind is"),
        ("apiVersion: v2\nkind: AlertRule\nmetadata: {name: x}\nspec: {}", "apiVersion is 'v2'"),
        ("apiVersion: sysmon.dev/v1alpha1\nkind: AlertRule\nspec: {}", "metadata.name is required"),
        ("apiVersion: sysmon.dev/v1alpha1\nkind: AlertRule\nmetadata: {name: x}", "spec is required"),
        ("apiVersion: sysmon.dev/v1alpha1\nkind: AlertRule\nmetadata: {name: x}\n"
         "spec: {metric: m, condition: {op: '>', threshold: 1}, window: 2h}", "spec.window"),
        ("apiVersion: sysmon.dev/v1alpha1\nkind: AlertRule\nmetadata: {name: x, generation: -1}\n"
         "spec: {metric: m, condition: {op: '>', threshold: 1}}", "metadata.generation"),
    ],
)
def test_errors_say_where(text: str, message: str) -> None:
    with pytest.raises(RulesFileError) as e:
        parse_rules("---\n" + text, "f.yaml")
    assert message in str(e.value)
    assert str(e.value).startswith("f.yaml")


def test_files_and_duplicates(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text(GOOD)
    b = tmp_path / "b.yaml"
    b.write_text(GOOD.split("---")[1])
    with pytest.raises(RulesFileError, match="'load' is defined twice"):
        load_rules([a, b])
    assert len(load_rules([a])) == 2
    with pytest.raises(RulesFileError, match=r"missing\.yaml"):
        load_rules([tmp_path / "missing.yaml"])

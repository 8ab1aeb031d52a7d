"""deploy/terraform/modules/pipeline, parsed with python-hcl2: what the pipeline needs is there, and
it agrees with the code it deploys."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import hcl2
import pytest

from sysmon.pipeline import lambda_handler, wire

MODULE = Path(__file__).resolve().parent.parent.parent / "deploy" / "terraform" / "modules" / "pipeline"


def _unq(v: Any) -> Any:
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    if isinstance(v, list):
        return [_unq(x) for x in v]
    if isinstance(v, dict):
        return {_unq(k): _unq(x) for k, x in v.items() if k != "__is_block__"}
    return v


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for f in sorted(MODULE.glob("*.tf")):
        with f.open() as fh:
            for kind, blocks in _unq(hcl2.load(fh)).items():
                merged.setdefault(kind, []).extend(blocks)
    return merged


def _resources(tf: dict[str, Any], kind: str = "resource") -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for block in tf.get(kind, []):
        for rtype, named in block.items():
            for name, body in named.items():
                out[f"{rtype}.{name}"] = body
    return out


def test_every_variable_is_typed_and_described_and_every_output_described(tf: dict[str, Any]) -> None:
    variables = {k: v for block in tf["variable"] for k, v in block.items()}
    assert {"lambda_zip", "postgres_secret_arn", "batch_size", "batching_window_seconds", "max_receive_count",
            "log_retention_days"} <= variables.keys()
    for name, v in variables.items():
        assert v.get("type"), f"variable {name} has no type"
        assert len(v.get("description", "")) > 10, f"variable {name} has no description"
    outputs = {k: v for block in tf["output"] for k, v in block.items()}
    assert {"queue_url", "dlq_url", "function_arn", "exporter_policy_json"} <= outputs.keys()
    for name, o in outputs.items():
        assert len(o.get("description", "")) > 10, f"output {name} has no description"


def test_queue_dead_letter_queue_and_event_source_mapping(tf: dict[str, Any]) -> None:
    r = _resources(tf)
    queue = r["aws_sqs_queue.samples"]
    assert "aws_sqs_queue.dlq.arn" in queue["redrive_policy"]
    assert "var.max_receive_count" in queue["redrive_policy"]
    assert queue["max_message_size"] == wire.MAX_MESSAGE_BYTES
    assert queue["sqs_managed_sse_enabled"] is True
    # AWS's advice for a queue a function consumes: visibility at least six times the function's timeout.
    assert queue["visibility_timeout_seconds"] == "${var.timeout_seconds * 6}"
    mapping = r["aws_lambda_event_source_mapping.samples"]
    assert mapping["function_response_types"] == ["ReportBatchItemFailures"]
    assert mapping["batch_size"] == "${var.batch_size}"
    assert mapping["maximum_batching_window_in_seconds"] == "${var.batching_window_seconds}"
    assert mapping["event_source_arn"] == "${aws_sqs_queue.samples.arn}"
    logs = r["aws_cloudwatch_log_group.function"]
    assert logs["retention_in_days"] == "${var.log_retention_days}"
    alarm = r["aws_cloudwatch_metric_alarm.dlq_depth"]
    assert alarm["metric_name"] == "ApproximateNumberOfMessagesVisible"
    assert "aws_sqs_queue.dlq.name" in str(alarm["dimensions"])


def test_the_function_runs_the_handler_with_the_settings_it_reads(tf: dict[str, Any]) -> None:
    fn = _resources(tf)["aws_lambda_function.pipeline"]
    module, _, attr = fn["handler"].rpartition(".")
    assert callable(getattr(importlib.import_module(module), attr))
    assert module == lambda_handler.__name__
    env = fn["environment"][0]["variables"]
    source = Path(lambda_handler.__file__).read_text()
    for name in env:
        if name.startswith("SYSMON_"):
            assert f'"{name}"' in source, f"{name} is set but the handler never reads it"
    assert env["SYSMON_POSTGRES_SECRET"] == "${var.postgres_secret_arn}"
    assert fn["logging_config"][0]["log_group"] == "${aws_cloudwatch_log_group.function.name}"


def test_the_role_grants_only_what_the_function_uses(tf: dict[str, Any]) -> None:
    docs = _resources(tf, "data")
    statements = docs["aws_iam_policy_document.function"]["statement"]
    grants = {}
    for s in statements:
        if "for_each" in s:  # dynamic: its content
            continue
        grants[s["sid"]] = (set(s["actions"]), s["resources"])
    assert grants["ConsumeQueue"] == ({"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes",
                                       "sqs:ChangeMessageVisibility"}, ["${aws_sqs_queue.samples.arn}"])
    assert grants["WriteLogs"][0] == {"logs:CreateLogStream", "logs:PutLogEvents"}
    assert grants["ReadDatabaseSecret"] == ({"secretsmanager:GetSecretValue"}, ["${var.postgres_secret_arn}"])
    text = "\n".join(p.read_text() for p in MODULE.glob("*.tf"))
    # No wildcard action anywhere; the one wildcard resource is EC2's network interfaces in a VPC.
    assert not re.search(r'"[a-z0-9]+:\*"', text)
    assert not re.search(r'"\*"', text.replace('resources = ["*"]', ""))
    assert text.count('resources = ["*"]') == 1
    exporter = docs["aws_iam_policy_document.exporter"]["statement"][0]
    assert exporter["actions"] == ["sqs:SendMessage"]
    assert exporter["resources"] == ["${aws_sqs_queue.samples.arn}"]

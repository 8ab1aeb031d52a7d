"""Shared by the pipeline's tests: samples recorded from a real collector, SQS events as Lambda
passes them, and the 1-minute numbers computed independently of PostgreSQL."""

from __future__ import annotations

import gzip
import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal, localcontext
from pathlib import Path
from typing import Any

from sysmon.core.metrics import series_id
from sysmon.pb.v1 import events_pb2
from sysmon.pipeline import wire

RECORDING = Path(__file__).resolve().parent.parent / "bench" / "data" / "agent-1h.json.gz"
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:sysmon-samples"
_EXACT = Context(prec=1000)


def recording() -> dict[str, Any]:
    with gzip.open(RECORDING, "rt") as f:
        return json.load(f)


def recorded_events(hosts: Sequence[str], frames: int = 24, per_batch: int = 6, start: int = 0,
                    shift: dict[str, float] | None = None) -> list[events_pb2.SamplesEvent]:
    """Batches of the recorded collector's frames as each host would send them: `per_batch` frames to
    a batch, every series described, values moved by `shift[host]` so that hosts differ."""
    rec = recording()
    defs = {s["ref"]: s for s in rec["series"]}
    out = []
    for h in hosts:
        d = (shift or {}).get(h, 0.0)
        ids = {ref: series_id(h, s["name"], s["attributes"]) for ref, s in defs.items()}
        chosen = rec["frames"][start:start + frames]
        for seq, i in enumerate(range(0, len(chosen), per_batch), start=1):
            ev = events_pb2.SamplesEvent(host_id=h, session_id="s1", seq=seq, stored_unix_ms=chosen[i][0])
            refs = sorted({r for f in chosen[i:i + per_batch] for r in f[1]})
            for r in refs:
                s = defs[r]
                ev.series.add(id=ids[r], name=s["name"], attributes=s["attributes"], unit=s["unit"], kind=s["kind"])
            for t, rs, vs in chosen[i:i + per_batch]:
                ev.frames.add(time_unix_ms=t, series_ids=[ids[r] for r in rs], values=[v + d for v in vs])
            out.append(ev)
    return out


def sqs_record(body: str, attributes: dict[str, dict[str, str]], *, receive_count: int = 1,
               message_id: str | None = None) -> dict[str, Any]:
    """One record of the event Lambda's SQS poller passes to a function, in its exact shape."""
    mattrs = {k: {"stringValue": v["StringValue"], "stringListValues": [], "binaryListValues": [],
                  "dataType": v["DataType"]} for k, v in attributes.items()}
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": "AQEB" + hashlib.sha256(body.encode()).hexdigest(),
        "body": body,
        "attributes": {"ApproximateReceiveCount": str(receive_count), "SentTimestamp": "1764870000000",
                       "SenderId": "AIDAEXAMPLE", "ApproximateFirstReceiveTimestamp": "1764870000001"},
        "messageAttributes": mattrs,
        "md5OfMessageAttributes": None,
        "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": "us-east-1",
    }


def sqs_event(messages: Iterable[wire.Encoded | dict[str, Any]]) -> dict[str, Any]:
    return {"Records": [m if isinstance(m, dict) else sqs_record(m.body, m.attributes) for m in messages]}


@dataclass(frozen=True)
class LambdaContext:
    function_name: str = "sysmon-pipeline"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:sysmon-pipeline"
    memory_limit_in_mb: int = 256
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    log_group_name: str = "/aws/lambda/sysmon-pipeline"
    log_stream_name: str = "test"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@dataclass(frozen=True)
class Minute:
    min: float
    max: float
    sum: Decimal
    count: int


def minutes(events: Iterable[events_pb2.SamplesEvent]) -> dict[tuple[int, int], Minute]:
    """(series id, minute start ms) -> the 1-minute tier's numbers: the exact sum of each value's
    shortest decimal form, as PostgreSQL's sum(value::text::numeric)."""
    acc: dict[tuple[int, int], list[float]] = {}
    for ev in events:
        for f in ev.frames:
            for i, v in zip(f.series_ids, f.values, strict=True):
                acc.setdefault((i, f.time_unix_ms - f.time_unix_ms % 60_000), []).append(v)
    with localcontext(_EXACT):
        return {k: Minute(min(vs), max(vs), sum((Decimal(repr(v)) for v in vs), Decimal(0)), len(vs))
                for k, vs in acc.items()}


def percentile_cont(values: Sequence[float], q: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)



# --- SQS through moto's server ----------------------------------------------------------------------------

def lambda_records(messages: Sequence[dict[str, Any]], queue_arn: str, region: str = "us-east-1") -> list[dict]:
    """ReceiveMessage's messages (AttributeNames and MessageAttributeNames "All") as the records of the
    event Lambda's poller builds from them."""
    out = []
    for m in messages:
        out.append({
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": dict(m.get("Attributes", {})),
            "messageAttributes": {
                k: {"stringValue": v.get("StringValue"), "stringListValues": [], "binaryListValues": [],
                    "dataType": v["DataType"]}
                for k, v in m.get("MessageAttributes", {}).items()
            },
            "md5OfMessageAttributes": m.get("MD5OfMessageAttributes"),
            "md5OfBody": m["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": queue_arn,
            "awsRegion": region,
        })
    return out


def poll_like_lambda(sqs: Any, queue_url: str, handler: Any, *, max_polls: int = 1000,
                     visibility_timeout: int | None = None) -> list[dict]:
    """What Lambda's event source mapping does, until the queue gives nothing: receive up to 10
    messages, invoke the function with them, delete those not in batchItemFailures. Returns the
    responses."""
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    responses = []
    for _ in range(max_polls):
        kw: dict[str, Any] = {"VisibilityTimeout": visibility_timeout} if visibility_timeout is not None else {}
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"],
                                  MessageAttributeNames=["All"], WaitTimeSeconds=0, **kw).get("Messages", [])
        if not got:
            break
        response = handler({"Records": lambda_records(got, arn)}, LambdaContext())
        responses.append(response)
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        done = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)
                if m["MessageId"] not in failed]
        if done:
            sqs.delete_message_batch(QueueUrl=queue_url, Entries=done)
    return responses

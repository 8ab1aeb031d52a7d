"""The SQS message form of the samples topic: what the exporter sends and the Lambda handler reads.

A message body is text (SQS rejects most binary), so the payload is base64 of a
sysmon.v1.SamplesEvents, deflated when that makes it smaller. Two message attributes say what the
body is; both sides check them. A message describes every series its frames refer to (once, in the
first event that has it), so that each message can be handled alone, in any order, by any invocation.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from sysmon.pb.v1 import events_pb2

CONTENT_TYPE = "application/vnd.sysmon.samples-events+protobuf"
ATTR_TYPE = "content-type"
ATTR_ENCODING = "content-encoding"
DEFLATE = "deflate"
IDENTITY = "identity"

# SQS: at most 10 messages and 262,144 bytes (body plus attribute names, types and values) in one
# SendMessageBatch call, and the same bytes for one message.
MAX_BATCH_MESSAGES = 10
MAX_CALL_BYTES = 256 * 1024
MAX_MESSAGE_BYTES = 256 * 1024
# A payload is never inflated past this: a small deflated body can otherwise expand 1000-fold.
MAX_DECODED_BYTES = 16 * 1024 * 1024


class WireError(ValueError):
    """A message that is not a sysmon SamplesEvents message; the reason names what is wrong."""


@dataclass(frozen=True)
class Encoded:
    body: str
    encoding: str
    raw_bytes: int  # the protobuf's size before deflate and base64
    samples: int = 0

    @property
    def attributes(self) -> dict[str, dict[str, str]]:
        """MessageAttributes as SendMessageBatch takes them."""
        return {
            ATTR_TYPE: {"DataType": "String", "StringValue": CONTENT_TYPE},
            ATTR_ENCODING: {"DataType": "String", "StringValue": self.encoding},
        }

    @property
    def size(self) -> int:
        """The bytes SQS counts against its limits: body, and each attribute's name, type and value."""
        return len(self.body) + sum(len(k) + len(v["DataType"]) + len(v["StringValue"])
                                    for k, v in self.attributes.items())


def encode(events: Sequence[events_pb2.SamplesEvent], level: int = 6) -> Encoded:
    """One message of complete events; a series is described once, in the first event that has it."""
    msg = events_pb2.SamplesEvents()
    seen: set[int] = set()
    for ev in events:
        e = msg.events.add()
        e.CopyFrom(ev)
        if not seen.isdisjoint(s.id for s in e.series):
            keep = [s for s in e.series if s.id not in seen]
            del e.series[:]
            e.series.extend(keep)
        seen.update(s.id for s in e.series)
    raw = msg.SerializeToString()
    n = sum(len(f.values) for ev in msg.events for f in ev.frames)
    packed = zlib.compress(raw, level)
    if len(packed) < len(raw):
        return Encoded(base64.b64encode(packed).decode("ascii"), DEFLATE, len(raw), n)
    return Encoded(base64.b64encode(raw).decode("ascii"), IDENTITY, len(raw), n)


def _attribute(attributes: Mapping[str, Any], name: str) -> str | None:
    """A string attribute from either shape: SendMessage's (StringValue) or Lambda's event (stringValue)."""
    a = attributes.get(name)
    if a is None:
        return None
    v = a.get("stringValue", a.get("StringValue"))
    return v if isinstance(v, str) else None


def decode(body: str, attributes: Mapping[str, Any]) -> events_pb2.SamplesEvents:
    """The events of one message; WireError says why a message is not one of ours."""
    ctype = _attribute(attributes, ATTR_TYPE)
    if ctype != CONTENT_TYPE:
        raise WireError(f"message attribute {ATTR_TYPE} is {ctype!r}, expected {CONTENT_TYPE!r}")
    encoding = _attribute(attributes, ATTR_ENCODING)
    if encoding not in (DEFLATE, IDENTITY):
        raise WireError(f"message attribute {ATTR_ENCODING} is {encoding!r}, expected {DEFLATE!r} or {IDENTITY!r}")
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as e:
        raise WireError(f"body is not base64: {e}") from None
    if encoding == DEFLATE:
        d = zlib.decompressobj()
        try:
            data = d.decompress(data, MAX_DECODED_BYTES)
        except zlib.error as e:
            raise WireError(f"body is not deflate data: {e}") from None
        if d.unconsumed_tail:
            raise WireError(f"body inflates past {MAX_DECODED_BYTES} bytes")
        if not d.eof:
            raise WireError("body is truncated deflate data")
    elif len(data) > MAX_DECODED_BYTES:
        raise WireError(f"body is over {MAX_DECODED_BYTES} bytes")
    try:
        return events_pb2.SamplesEvents.FromString(data)
    except DecodeError as e:
        raise WireError(f"body is not a sysmon.v1.SamplesEvents: {e}") from None

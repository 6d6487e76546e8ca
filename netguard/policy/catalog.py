"""The registry catalog: registry id -> the host patterns that identify it.

Strategy: parse the TOML text (rules/registries.toml) into frozen Registry values, expand
{region} templates, and reject the same pattern under two registries, so that every host maps to
at most one registry.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from netguard.policy.errors import PolicyError, Problem, locate, toml_problem
from netguard.policy.hosts import HostError, Pattern, parse_pattern

_REGISTRY_KEYS = {"id", "name", "hosts", "host_templates", "regions", "left_out", "note"}


@dataclass(frozen=True, slots=True)
class Registry:
    id: str
    name: str
    patterns: tuple[Pattern, ...]
    left_out: MappingProxyType[str, str]
    note: str


@dataclass(frozen=True, slots=True)
class Catalog:
    registries: MappingProxyType[str, Registry]
    source: str


def parse_catalog(text: str, source: str) -> Catalog:
    """Parse catalog text; raise PolicyError listing every problem found."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError([toml_problem(source, e, text)]) from None
    problems: list[Problem] = []
    registries: dict[str, Registry] = {}
    owner: dict[Pattern, str] = {}
    line = 1
    for raw in doc.get("registry", []):
        line, _ = locate(text, "id", raw.get("id"), line)
        reg = _parse_registry(raw, text, source, line, problems)
        if reg is None:
            continue
        if reg.id in registries:
            problems.append(Problem(source, line, 1, f"registry id {reg.id!r} is listed twice"))
            continue
        registries[reg.id] = reg
        for p in reg.patterns:
            if p in owner:
                problems.append(Problem(source, line, 1, f"{p} is listed under both {owner[p]!r} and {reg.id!r}"))
            owner[p] = reg.id
    for key in doc.keys() - {"registry"}:
        problems.append(Problem(source, *locate(text, key), f"unknown key {key!r}; expected [[registry]] tables"))
    if problems:
        raise PolicyError(problems)
    return Catalog(MappingProxyType(registries), source)


def _parse_registry(raw: dict[str, Any], text: str, source: str, line: int,
                    problems: list[Problem]) -> Registry | None:
    before = len(problems)
    for key in raw.keys() - _REGISTRY_KEYS:
        problems.append(Problem(source, line, 1, f"unknown key {key!r} in [[registry]]"))
    rid, name = raw.get("id"), raw.get("name")
    if not isinstance(rid, str) or not rid or not isinstance(name, str):
        problems.append(Problem(source, line, 1, "each [[registry]] needs string keys 'id' and 'name'"))
        return None
    texts = list(raw.get("hosts", []))
    for template in raw.get("host_templates", []):
        texts += [template.replace("{region}", region) for region in raw.get("regions", [])]
    patterns: list[Pattern] = []
    for host in texts:
        where = locate(text, "hosts", host, line)
        try:
            pattern, warning = parse_pattern(host)
        except HostError as e:
            problems.append(Problem(source, *where, f"{rid}: {e}"))
            continue
        if warning:
            problems.append(Problem(source, *where, f"{rid}: write the host only: {warning}"))
        patterns.append(pattern)
    if not patterns:
        problems.append(Problem(source, line, 1, f"registry {rid!r} lists no hosts"))
    if len(problems) > before:
        return None
    left_out = MappingProxyType(dict(raw.get("left_out", {})))
    return Registry(rid, name, tuple(patterns), left_out, str(raw.get("note", "")))

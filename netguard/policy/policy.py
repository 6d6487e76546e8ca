"""The policy file: what is allowed, what else is blocked, and how the daemon behaves.

Strategy: parse and validate the whole text, collecting every problem with its position; only a
policy with no problems is returned (its table, built while the lists are read, is dropped
otherwise), so a bad file is never partly applied. The result is a frozen Policy holding one
PatternTable in which catalog entries are laid down first and the policy's own entries override
them at the same pattern; `decide` then needs one lookup.
"""

from __future__ import annotations

import contextlib
import difflib
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from netguard.policy.catalog import Catalog
from netguard.policy.errors import PolicyError, Problem, locate, toml_problem
from netguard.policy.hosts import HostError, Pattern, parse_pattern
from netguard.policy.table import PatternTable

DEFAULT_QUEUE = 7413  # an unusual number, so netguard does not share a queue with other NFQUEUE users
# Connection-mark bits: Docker, kube-proxy (0x4000, 0x8000) and Calico (0xffff0000 upper bits in
# some modes) use marks too; the defaults sit in bits 20-22, which none of them use by default.
DEFAULT_MARK_MASK = 0x00700000
DEFAULT_MARK_ALLOWED = 0x00100000
DEFAULT_MARK_BLOCKED = 0x00200000

UnknownHosts = Literal["allow", "deny"]
FailMode = Literal["closed", "open"]
BlockAction = Literal["reset", "tls-alert"]
Mode = Literal["enforce", "monitor"]
# "policy-url": the host an organisation policy is fetched from, always allowed (policy.compose).
Origin = Literal["catalog", "allow", "block", "policy-url"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "unknown_hosts": ("allow", "deny"),
    "fail_mode": ("closed", "open"),
    "block_action": ("reset", "tls-alert"),
    "mode": ("enforce", "monitor"),
}
_FLAGS = ("dns_block", "local_allow")
_KEYS = {"name", "allow", "block", "queue_num", "mark_mask", "mark_allowed", "mark_blocked", *_FLAGS, *_CHOICES}


@dataclass(frozen=True, slots=True)
class Rule:
    """What a table entry says about the hosts it matches. Rules are shared between entries (one per
    registry and origin), so the rule as written is rebuilt from the matching pattern: `text`."""

    allowed: bool
    registry: str | None  # catalog id, or None for a policy pattern outside the catalog
    registry_name: str | None
    origin: Origin
    document: str = ""  # where the entry was written: the policy's source (a file, the policy URL)

    def text(self, pattern: Pattern) -> str:
        """The rule as a person would find it: "allow = ghcr", "block = *.corp.example"."""
        if self.origin == "policy-url":
            return f"policy server {pattern}"
        if self.origin != "catalog":
            return f"{self.origin} = {pattern}"
        return f"allow = {self.registry}" if self.allowed else f"{self.registry} is not in allow"


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    source: str
    catalog: Catalog
    allow_ids: frozenset[str]
    table: PatternTable[Rule] = field(compare=False)
    unknown_hosts: UnknownHosts = "allow"
    fail_mode: FailMode = "closed"
    block_action: BlockAction = "reset"
    dns_block: bool = True
    queue_num: int = DEFAULT_QUEUE
    mark_mask: int = DEFAULT_MARK_MASK
    mark_allowed: int = DEFAULT_MARK_ALLOWED
    mark_blocked: int = DEFAULT_MARK_BLOCKED
    mode: Mode = "enforce"  # "monitor": judge and log everything, block nothing (the daemon's apply point)
    local_allow: bool = False  # under an organisation policy: may a local file's allow entries count?
    warnings: tuple[str, ...] = ()
    keys: frozenset[str] = frozenset()  # the top-level keys the document sets (policy.compose reports them)

    @property
    def label(self) -> str:
        """How reasons name this policy: `default policy [embedded]`, `acme [/etc/netguard/acme.toml]`."""
        return f"{self.name} [{self.source}]"


def parse_policy(text: str, source: str, catalog: Catalog, default_name: str = "policy") -> Policy:
    """Parse and validate policy text; raise PolicyError with every problem found."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError([toml_problem(source, e, text)]) from None
    problems: list[Problem] = []
    warnings: list[str] = []

    def problem(key: str, message: str, value: str | None = None) -> None:
        problems.append(Problem(source, *locate(text, key, value), message))

    settings = _settings(doc, problem)
    name = doc.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        problem("name", "name: expected a non-empty string")
        name = default_name

    # The table is built while the lists are read, catalog entries first: a 100k-entry policy then
    # needs no second copy of its patterns during the load, whose peak is the daemon's peak memory.
    # Catalog entries go in as blocked and are switched once the allow list's ids are known.
    table: PatternTable[Rule] = PatternTable()
    blocked = {reg.id: Rule(False, reg.id, reg.name, "catalog", source) for reg in catalog.registries.values()}
    for reg in catalog.registries.values():
        for p in reg.patterns:
            table.put(p, blocked[reg.id])
    allow_ids: set[str] = set()
    both: dict[Pattern, str] = {}
    rules: dict[Rule, Rule] = {}
    _patterns(doc, "allow", text, source, catalog, problems, warnings, allow_ids, table, rules, both)
    _patterns(doc, "block", text, source, catalog, problems, warnings, None, table, rules, both)
    for p, written in both.items():
        problem("block", f"{p} is in both allow and block", written)
    _check_marks(settings, problem)
    if problems:
        raise PolicyError(problems)
    for reg in catalog.registries.values():
        if reg.id in allow_ids:
            allowed = Rule(True, reg.id, reg.name, "catalog", source)
            for p in reg.patterns:
                if table.get(p) is blocked[reg.id]:
                    table.put(p, allowed)
    return Policy(name=name, source=source, catalog=catalog, allow_ids=frozenset(allow_ids), table=table,
                  warnings=tuple(warnings), keys=frozenset(doc), **settings)


def _settings(doc: dict[str, Any], problem: Callable[[str, str], None]) -> dict[str, Any]:
    """The scalar settings of a policy document, each checked; problems reported through `problem`."""
    for key in sorted(doc.keys() - _KEYS):
        hint = difflib.get_close_matches(key, sorted(_KEYS), n=1)
        problem(key, f"unknown key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else
                                               f"; expected one of {', '.join(sorted(_KEYS))}"))
    settings: dict[str, Any] = {}
    for key, choices in _CHOICES.items():
        if key in doc:
            if doc[key] in choices:
                settings[key] = doc[key]
            else:
                problem(key, f"{key} = {doc[key]!r}: expected " + " or ".join(f'"{c}"' for c in choices))
    for key in _FLAGS:
        if key in doc:
            if isinstance(doc[key], bool):
                settings[key] = doc[key]
            else:
                problem(key, f"{key}: expected true or false")
    for key, limit in (("queue_num", 0xFFFF), ("mark_mask", 0xFFFFFFFF), ("mark_allowed", 0xFFFFFFFF),
                       ("mark_blocked", 0xFFFFFFFF)):
        if key in doc:
            value = doc[key]
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit:
                settings[key] = value
            else:
                problem(key, f"{key}: expected an integer from 0 to {limit:#x}")
    return settings


def _patterns(doc: dict[str, Any], key: str, text: str, source: str, catalog: Catalog, problems: list[Problem],
              warnings: list[str], ids: set[str] | None, table: PatternTable[Rule], rules: dict[Rule, Rule],
              both: dict[Pattern, str]) -> None:
    """Parse the list under `key` into table entries (and, where ids is given, catalog ids).

    Entries go in one by one, so a lookup finds the catalog and the entries before: a policy pattern
    inside a catalog registry (myteam.azurecr.io under *.azurecr.io) keeps that registry's name in
    decisions, and so does one below an earlier policy entry, which inherited its registry too. A
    block pattern also in allow is left out and reported in `both` (with its text as written)."""
    values = doc.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        problems.append(Problem(source, *locate(text, key), f"{key}: expected a list of strings"))
        return
    origin: Origin = "allow" if ids is not None else "block"
    seen: set[str] = set()
    earlier: dict[Pattern, str] | None = None  # pattern -> its last spelling, built at the first duplicate
    as_read: list[str] = []

    def as_written() -> list[str]:
        # The document's list is emptied while it is read (below), so the list as written is
        # parsed again, once, when a position is needed.
        if not as_read:
            as_read.extend(tomllib.loads(text)[key])
        return as_read

    for index in range(len(values)):
        written: str = values[index]
        # Each entry's document string goes as soon as it is read (unless the table keeps it as a
        # name): the load's peak, on top of the old policy during a reload, is the daemon's peak.
        values[index] = None

        # Positions are searched only for entries with a problem: a 100k-entry policy loads in
        # linear time.
        def at(message: str, index: int = index, written: str = written) -> None:
            where = locate(text, key, written, nth=as_written()[:index].count(written))
            problems.append(Problem(source, *where, message))

        if _is_id(written):
            if ids is None:
                at(f"block: {written!r} is a registry id; catalog registries are blocked unless allowed, "
                   "so block takes host patterns only")
            elif written not in catalog.registries:
                hint = difflib.get_close_matches(written, sorted(catalog.registries), n=1)
                at(f"{key}: unknown registry id {written!r}" + (f"; did you mean {hint[0]!r}?" if hint else
                   "; `netguard policy show` lists the ids (a host name needs a dot)"))
            elif written in seen:
                at(f"{key}: {written!r} is listed twice")
            else:
                ids.add(written)
            seen.add(written)
            continue
        try:
            pattern, warning = parse_pattern(written)
        except HostError as e:
            at(f"{key}: {e}")
            continue
        if warning:
            line, col = locate(text, key, written, nth=as_written()[:index].count(written))
            warnings.append(f"{source}:{line}:{col}: {warning}")
        if pattern.name == written:
            pattern = pattern._replace(name=written)  # the table keeps the file's string, not a copy
        u = table.get(pattern)
        if (u is not None and u.origin == origin) or pattern in both:
            if earlier is None:
                earlier = _spellings(as_written()[:index])
            at(f"{key}: {written!r} is listed twice (as {earlier[pattern]!r})")
        elif u is not None and u.origin != "catalog":
            both[pattern] = written
        else:
            u = u or _hit(table.lookup(pattern.name, pattern.port))
            rule = Rule(ids is not None, u.registry if u else None, u.registry_name if u else None, origin, source)
            table.put(pattern, rules.setdefault(rule, rule))
        if earlier is not None:
            earlier[pattern] = written
        if pattern in both:
            both[pattern] = written


def _spellings(values: list[str]) -> dict[Pattern, str]:
    """Each host pattern in values -> its last spelling (read again only once a duplicate shows up)."""
    found: dict[Pattern, str] = {}
    for written in values:
        if not _is_id(written):
            with contextlib.suppress(HostError):
                found[parse_pattern(written)[0]] = written
    return found


def _hit(hit: tuple[Pattern, Rule] | None) -> Rule | None:
    return None if hit is None else hit[1]


def _is_id(text: str) -> bool:
    return not any(c in text for c in ".:*/")


def _free_value(mask: int, taken: tuple[int | None, ...], most: int) -> int | None:
    """The first of 1..most times the mask's lowest bit that lies inside the mask and is not taken."""
    low = mask & -mask
    return next((k * low for k in range(1, most + 1) if not k * low & ~mask and k * low not in taken), None)


def passed_mark(mask: int, allowed: int, blocked: int) -> int | None:
    """The packet mark for "seen, let this one packet go on" (never saved in the connection): the
    first value inside the mask that is neither 0 nor allowed nor blocked; None if there is none."""
    return _free_value(mask, (allowed, blocked), 3)


def follow_mark(mask: int, allowed: int, blocked: int) -> int | None:
    """The connection mark for "allowed so far, keep sending the client's data to the queue" (a
    plain HTTP connection whose every request is judged; a TLS flow after a HelloRetryRequest): the
    next value inside the mask after the passed mark; None if there is none."""
    return _free_value(mask, (allowed, blocked, passed_mark(mask, allowed, blocked)), 7)


def unconfirmed_mark(mask: int, allowed: int, blocked: int) -> int | None:
    """The connection mark for "allowed by its ClientHello, final at the server's first TLS record"
    (a TLS flow whose client data stays queued until then): the next value inside the mask after the
    follow mark; None if there is none (the daemon then confirms in the queue instead)."""
    return _free_value(mask, (allowed, blocked, passed_mark(mask, allowed, blocked),
                              follow_mark(mask, allowed, blocked)), 7)


def _check_marks(settings: dict[str, Any], problem: Callable[[str, str], None]) -> None:
    mask = settings.get("mark_mask", DEFAULT_MARK_MASK)
    allowed = settings.get("mark_allowed", DEFAULT_MARK_ALLOWED)
    blocked = settings.get("mark_blocked", DEFAULT_MARK_BLOCKED)
    if not allowed or not blocked or allowed == blocked:
        problem("mark_allowed", "mark_allowed and mark_blocked must be different and non-zero")
    elif (allowed | blocked) & ~mask:
        problem("mark_mask", f"mark_allowed ({allowed:#x}) and mark_blocked ({blocked:#x}) must lie "
                f"inside mark_mask ({mask:#x})")
    elif passed_mark(mask, allowed, blocked) is None or follow_mark(mask, allowed, blocked) is None:
        problem("mark_mask", f"mark_mask ({mask:#x}) needs a third and a fourth value besides mark_allowed and "
                "mark_blocked (netguard marks packets it lets go on with the third, and connections it keeps "
                "reading with the fourth); use three adjacent bits")

"""Policy and catalog errors that point at the text: FILE:LINE:COL: message."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    source: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}:{self.col}: {self.message}"


class PolicyError(ValueError):
    """One or more problems in a policy or catalog; nothing from that text was applied."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)")


def toml_problem(source: str, error: Exception, text: str) -> Problem:
    """Turn a tomllib error (which carries its position only in the message) into a Problem."""
    message = str(error)
    m = _TOML_POS.search(message)
    if m is not None:
        return Problem(source, int(m[1]), int(m[2]), f"not valid TOML: {message[: m.start()].strip()}")
    lines = text.splitlines() or [""]
    where = message.find("(at end of document)")
    if where != -1:
        return Problem(source, len(lines), len(lines[-1]) + 1, f"not valid TOML: {message[:where].strip()}")
    return Problem(source, 1, 1, f"not valid TOML: {message}")


def locate(text: str, key: str, value: str | None = None, start_line: int = 1, nth: int = 0) -> tuple[int, int]:
    """Line and column of `key = ...` (searching from start_line) and, if given, of the nth quoted
    `value` after it. tomllib keeps no positions, so errors found after parsing are placed by
    searching the text; when the search fails the key's line (or line 1) is used."""
    lines = text.splitlines()
    key_re = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=")
    line_no = next((i for i in range(start_line - 1, len(lines)) if key_re.match(lines[i])), None)
    if line_no is None:
        return start_line, 1
    if value is None:
        return line_no + 1, len(lines[line_no]) - len(lines[line_no].lstrip()) + 1
    for i in range(line_no, len(lines)):
        for quoted in (f'"{value}"', f"'{value}'"):
            col = lines[i].find(quoted, lines[i].index("=") + 1 if i == line_no else 0)
            while col != -1:
                if nth == 0:
                    return i + 1, col + 1
                nth -= 1
                col = lines[i].find(quoted, col + 1)
        if i > line_no and "=" in lines[i].split("#")[0] and not lines[i].lstrip().startswith(('"', "'")):
            break
    return line_no + 1, 1

"""Just enough Dockerfile and .dockerignore parsing for the packaging checks."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, args)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]


def parse(path: Path) -> list[Stage]:
    """Stages in order; continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        ins, _, args = line.partition(" ")
        ins = ins.upper()
        if ins == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append((ins, args.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    """ENTRYPOINT/CMD in JSON (exec) form; shell form is refused (signals would miss PID 1)."""
    value = json.loads(args)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not an exec-form list: {args}")
    return value


def ignored(patterns: list[str], rel: str) -> bool:
    """Whether .dockerignore excludes ``rel`` (last matching pattern wins, '!' re-includes)."""
    result = False
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.rstrip("/")
        # A pattern matching a parent directory covers everything below it.
        # (fnmatch's '*' also crosses '/': looser than Docker, fine for our patterns.)
        if any(fnmatch.fnmatchcase(p, pat)
               or (pat.startswith("**/") and fnmatch.fnmatchcase(p, pat[3:]))
               for p in prefixes):
            result = not neg
    return result


def dockerignore(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]

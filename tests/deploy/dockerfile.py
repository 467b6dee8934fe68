"""A Dockerfile and its .dockerignore read as Docker reads them, for checks without a Docker daemon.

Enough of the syntax for deploy/: line continuations, comments, global `ARG` defaults in `FROM`,
stages, `COPY` with flags, `ENV` pairs, `USER`, `EXPOSE` and exec-form `CMD`.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    destination: str
    from_stage: str | None


@dataclass
class Stage:
    image: str
    name: str | None
    copies: list[Copy] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    user: str | None = None
    exposed: list[str] = field(default_factory=list)
    command: list[str] | None = None


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined and comments left out."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def stages(text: str) -> list[Stage]:
    """The build stages, in order; the last is the image."""
    global_args: dict[str, str] = {}
    parsed: list[Stage] = []
    for keyword, arguments in instructions(text):
        if keyword == "ARG" and not parsed:
            name, _, default = arguments.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            words = [word for word in arguments.split() if not word.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda match: global_args[match[1]], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            parsed.append(Stage(image=image, name=name))
        elif keyword == "COPY":
            words = shlex.split(arguments)
            flags = dict(word[2:].partition("=")[::2] for word in words if word.startswith("--"))
            paths = [word for word in words if not word.startswith("--")]
            parsed[-1].copies.append(Copy(tuple(paths[:-1]), paths[-1], flags.get("from")))
        elif keyword == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                parsed[-1].env[name] = value
        elif keyword == "RUN":
            parsed[-1].runs.append(arguments)
        elif keyword == "USER":
            parsed[-1].user = arguments
        elif keyword == "EXPOSE":
            parsed[-1].exposed += arguments.split()
        elif keyword == "CMD":
            parsed[-1].command = json.loads(arguments) if arguments.startswith("[") else ["/bin/sh", "-c", arguments]
    return parsed


def ignore_patterns(text: str) -> list[str]:
    """The patterns of a .dockerignore file, in order, comments and blank lines left out."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative to the context root) out of the build context.

    As Docker does: the last pattern that matches the path or one of its parent folders decides,
    and a pattern starting with `!` brings back what an earlier one left out.
    """
    parts = Path(path).parts
    candidates = ["/".join(parts[: length + 1]) for length in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    regex = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex, index = regex + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            regex, index = regex + ".*", index + 2
        elif pattern[index] == "*":
            regex, index = regex + "[^/]*", index + 1
        elif pattern[index] == "?":
            regex, index = regex + "[^/]", index + 1
        else:
            regex, index = regex + re.escape(pattern[index]), index + 1
    return re.compile(regex)

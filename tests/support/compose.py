"""The compose file's services as local command lines, the way compose would run them."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
_VARIABLE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")


def load(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""

    def replace(match: re.Match[str]) -> str:
        name, kind, extra = match.groups()
        found = variables.get(name, "")
        if kind == "?" and not found:
            raise KeyError(f"{name}: {extra}")
        return found or (extra if kind == "-" else "")

    return _VARIABLE.sub(replace, value)


def service(
    name: str, variables: Mapping[str, str], addresses: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """A service's command (celery run by this interpreter) and environment.

    ``addresses`` maps compose's network addresses (``redis:6379``) to local ones
    (``127.0.0.1:PORT``).
    """
    spec = load()["services"][name]
    env = {}
    for key, value in (spec.get("environment") or {}).items():
        text = interpolate(str(value), variables)
        for compose_address, local in addresses.items():
            text = text.replace(compose_address, local)
        env[key] = text
    command = [interpolate(str(part), variables) for part in spec["command"]]
    if command[0] == "celery":
        command = [sys.executable, "-m", "celery", *command[1:]]
    return command, env

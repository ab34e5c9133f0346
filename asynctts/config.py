"""The endpoints file: where the policy and the PRM are served, read into `Endpoint`s.

`servers/launch.py start` writes one for the servers it started; write your own to point at
any OpenAI-compatible server. JSON, or TOML when the name ends in ".toml":

    {
      "policy": {"base_url": "http://127.0.0.1:8000/v1",
                 "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "tokenizer": "/path/to/it"},
      "prm": {"base_url": "https://example.com/v1", "model": "my-prm", "scoring": "logprob",
              "api_key_env": "MY_PRM_KEY"}
    }

Rules:
- Top-level keys are roles ("policy" required, "prm" optional); each holds `Endpoint`
  keyword arguments. An unknown key is a `ConfigError` naming it (and the file), as is a bad
  value (the `Endpoint` check's message, prefixed with the file and role).
- Keys never live in the file: `api_key_env` names the environment variable that holds one,
  and a named variable that is not set is an error here, before any request.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from pathlib import Path
from typing import Any

from asynctts.endpoint import Endpoint
from asynctts.errors import ConfigError

ROLES = ("policy", "prm")
REQUIRED_ROLES = ("policy",)
_FIELDS = {f.name for f in dataclasses.fields(Endpoint)}


def load_endpoints(path: str | os.PathLike[str]) -> dict[str, Endpoint]:
    """The endpoints of a JSON or TOML endpoints file, by role ("policy", and "prm" if set).

    Raises:
        ConfigError: the file is missing or unreadable, a key is unknown, a value is bad, or
            a named API key variable is not set.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"endpoints file {source}: cannot read it ({err.strerror})") from err
    document = _parse(text, source)
    return endpoints_from(document, where=str(source))


def endpoints_from(document: object, *, where: str = "endpoints") -> dict[str, Endpoint]:
    """`load_endpoints` for an already parsed document (a mapping of role to fields)."""
    if not isinstance(document, dict):
        raise ConfigError(f"{where}: expected an object of roles, got {type(document).__name__}")
    unknown_roles = sorted(set(document) - set(ROLES))
    if unknown_roles:
        raise ConfigError(f"{where}: unknown role(s) {unknown_roles}; roles are {list(ROLES)}")
    missing = [role for role in REQUIRED_ROLES if role not in document]
    if missing:
        raise ConfigError(f"{where}: no {missing[0]!r} endpoint")
    return {role: _endpoint(document[role], f"{where}: {role}") for role in document}


def _parse(text: str, source: Path) -> object:
    if source.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"endpoints file {source}: not valid TOML ({err})") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"endpoints file {source}: not valid JSON ({err.msg}, line {err.lineno})"
        ) from err


def _endpoint(fields: object, where: str) -> Endpoint:
    if not isinstance(fields, dict):
        raise ConfigError(f"{where}: expected an object of Endpoint fields")
    if "api_key" in fields:
        raise ConfigError(
            f"{where}: 'api_key' does not belong in a file; put the key in an environment "
            "variable and name it with 'api_key_env'"
        )
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(_FIELDS)}")
    for required in ("base_url", "model"):
        if required not in fields:
            raise ConfigError(f"{where}: {required!r} is required")
    env = fields.get("api_key_env")
    if env is not None and (not isinstance(env, str) or not env):
        raise ConfigError(f"{where}: api_key_env {env!r} must name an environment variable")
    if env is not None and env not in os.environ:
        raise ConfigError(f"{where}: api_key_env names {env}, which is not set")
    kwargs: dict[str, Any] = dict(fields)
    try:
        return Endpoint(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    except TypeError as err:  # a wrong type the Endpoint check compares and trips over
        raise ConfigError(f"{where}: {err}") from err

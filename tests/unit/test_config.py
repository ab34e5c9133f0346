"""The endpoints file (`asynctts.config`): JSON and TOML, strict keys, keys from the environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from asynctts import ConfigError, Endpoint
from asynctts.config import endpoints_from, load_endpoints

POLICY = {"base_url": "http://127.0.0.1:8000/v1", "model": "HuggingFaceTB/SmolLM2-135M-Instruct"}
PRM = {"base_url": "http://127.0.0.1:8001/v1", "model": "judge", "scoring": "logprob"}


def write(tmp_path: Path, content: Any, name: str = "endpoints.json") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_json_file_gives_endpoints_by_role(tmp_path: Path) -> None:
    path = write(tmp_path, {"policy": {**POLICY, "tokenizer": "/models/smol"}, "prm": PRM})
    endpoints = load_endpoints(path)
    assert endpoints == {
        "policy": Endpoint(**POLICY, tokenizer="/models/smol"),
        "prm": Endpoint(**PRM),
    }


def test_prm_is_optional(tmp_path: Path) -> None:
    assert list(load_endpoints(write(tmp_path, {"policy": POLICY}))) == ["policy"]


def test_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTE_KEY", "secret")
    text = (
        "[policy]\n"
        'base_url = "https://api.example.com/v1"\n'
        'model = "m"\n'
        'mode = "chat"\n'
        'api_key_env = "REMOTE_KEY"\n'
        "max_in_flight = 32\n"
    )
    (policy,) = load_endpoints(write(tmp_path, text, "endpoints.toml")).values()
    assert policy.mode == "chat" and policy.max_in_flight == 32
    assert policy.api_key() == "secret"
    assert "secret" not in repr(policy)


def test_several_urls_in_json_and_toml(tmp_path: Path) -> None:
    urls = ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]
    from_json = load_endpoints(write(tmp_path, {"policy": {**POLICY, "base_url": urls}}))
    text = f'[policy]\nbase_url = {json.dumps(urls)}\nmodel = "m"\ndown_cooldown_s = 2.5\n'
    from_toml = load_endpoints(write(tmp_path, text, "endpoints.toml"))
    assert from_json["policy"].base_url == from_toml["policy"].base_url == tuple(urls)
    assert from_toml["policy"].down_cooldown_s == 2.5
    with pytest.raises(ConfigError, match=r"f\.json: policy: Endpoint base_url is an empty list"):
        endpoints_from({"policy": {**POLICY, "base_url": []}}, where="f.json")


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, {"policy": {**POLICY, "modle": "x", "temprature": 1}})
    with pytest.raises(ConfigError) as caught:
        load_endpoints(path)
    assert "['modle', 'temprature']" in str(caught.value)
    assert str(path) in str(caught.value) and "policy" in str(caught.value)


def test_unknown_role_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown role\(s\) \['verifier'\]"):
        load_endpoints(write(tmp_path, {"policy": POLICY, "verifier": PRM}))


def test_policy_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no 'policy' endpoint"):
        load_endpoints(write(tmp_path, {"prm": PRM}))


def test_a_key_in_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="api_key_env"):
        load_endpoints(write(tmp_path, {"policy": {**POLICY, "api_key": "sk-123"}}))


def test_a_named_key_variable_must_be_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MISSING_KEY_VAR", raising=False)
    path = write(tmp_path, {"policy": {**POLICY, "api_key_env": "MISSING_KEY_VAR"}})
    with pytest.raises(ConfigError, match="MISSING_KEY_VAR, which is not set"):
        load_endpoints(path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model": "m"}, "'base_url' is required"),
        ({"base_url": "http://h/v1"}, "'model' is required"),
        ({**POLICY, "base_url": "localhost:8000"}, "needs a scheme and a host"),
        ({**POLICY, "mode": "stream"}, "mode 'stream'"),
        ({**POLICY, "max_in_flight": 0}, "max_in_flight=0"),
        ("not an object", "expected an object of Endpoint fields"),
    ],
)
def test_bad_values_name_the_role(fields: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        endpoints_from({"policy": fields}, where="f.json")
    assert str(caught.value).startswith("f.json: policy")


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_endpoints(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match=r"not valid JSON .*line 1"):
        load_endpoints(write(tmp_path, "{policy"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_endpoints(write(tmp_path, "[policy\n", "e.toml"))
    with pytest.raises(ConfigError, match="expected an object of roles, got list"):
        load_endpoints(write(tmp_path, [POLICY]))

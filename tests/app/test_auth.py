"""No open door: `covidct dashboard` serves beyond this machine only with login (or a loudly
named flag), and passes the login requirement on to the app."""

from __future__ import annotations

import os

import pytest

from covidct.cli import main

AUTH = """
[auth]
redirect_uri = "https://ct.hospital.example/oauth2callback"
cookie_secret = "a-long-random-string"
client_id = "covidct"
client_secret = "s3cret"
server_metadata_url = "https://login.hospital.example/.well-known/openid-configuration"
"""


class Exec(Exception):
    pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """Runs `covidct dashboard ARGS` up to the exec of the server; returns (code, env, argv)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("COVIDCT_LOGIN", raising=False)
    seen: dict[str, object] = {}

    def fake_exec(path, argv, env):
        seen.update(argv=argv, env=env)
        raise Exec

    monkeypatch.setattr(os, "execve", fake_exec)

    def run(*args: str):
        try:
            code = main(["dashboard", "--runs", str(tmp_path), *args])
        except Exec:
            return "served", seen["env"], seen["argv"]
        return code, None, None

    return run


def test_the_default_loopback_address_serves_without_login(served):
    code, env, argv = served()
    assert code == "served" and "COVIDCT_LOGIN" not in env
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert served("--address", "::1")[0] == "served"


@pytest.mark.parametrize("address", ["0.0.0.0", "10.1.2.3", "ct-server.hospital.example"])
def test_a_network_address_without_login_is_refused(served, address, capsys):
    code, _, _ = served("--address", address)
    assert code == 2
    err = capsys.readouterr().err
    assert "without login" in err and "--insecure-no-login" in err and "reverse proxy" in err


def test_the_loud_flag_serves_without_login_and_warns(served, capsys):
    code, env, _ = served("--address", "0.0.0.0", "--insecure-no-login")
    assert code == "served" and "COVIDCT_LOGIN" not in env
    assert "WITHOUT LOGIN" in capsys.readouterr().err


def test_login_configured_in_streamlit_secrets_is_required_of_every_user(served, tmp_path):
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(AUTH)
    code, env, _ = served("--address", "0.0.0.0")
    assert code == "served" and env["COVIDCT_LOGIN"] == "required"


def test_an_explicit_secrets_file_is_checked_and_handed_to_streamlit(served, tmp_path, capsys):
    good = tmp_path / "auth.toml"
    good.write_text(AUTH)
    code, env, argv = served("--address", "0.0.0.0", "--auth-secrets", str(good))
    assert code == "served" and env["COVIDCT_LOGIN"] == "required"
    assert argv[argv.index("--secrets.files") + 1] == str(good.resolve())
    bad = tmp_path / "bad.toml"
    bad.write_text(AUTH.replace('client_secret = "s3cret"\n', ""))
    code, _, _ = served("--address", "0.0.0.0", "--auth-secrets", str(bad))
    assert code == 2 and "lacks" in capsys.readouterr().err
    code, _, _ = served("--auth-secrets", str(tmp_path / "missing.toml"))
    assert code == 2 and "not found" in capsys.readouterr().err


def test_a_provider_section_counts_as_login(served, tmp_path):
    named = tmp_path / "named.toml"
    named.write_text(
        '[auth]\nredirect_uri = "https://x/oauth2callback"\ncookie_secret = "c"\n'
        '[auth.microsoft]\nclient_id = "i"\nclient_secret = "s"\n'
        'server_metadata_url = "https://login.example/.well-known/openid-configuration"\n'
    )
    code, env, _ = served("--address", "0.0.0.0", "--auth-secrets", str(named))
    assert code == "served" and env["COVIDCT_LOGIN"] == "required"

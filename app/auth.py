"""The dashboard's login gate: Streamlit's built-in OIDC login (``st.login``).

``covidct dashboard`` sets ``COVIDCT_LOGIN=required`` when it serves with login (always on a
non-loopback address, unless the user passed ``--insecure-no-login``). The identity provider is
the hospital's own, configured in the ``[auth]`` section of ``.streamlit/secrets.toml``
(redirect_uri, cookie_secret, client_id, client_secret, server_metadata_url): see the README.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import streamlit as st

ENV = "COVIDCT_LOGIN"


def login_required() -> bool:
    return os.environ.get(ENV, "") == "required"


def gate() -> None:
    """Stop the script here, showing only a login prompt, unless login is not required or the
    user is logged in (then a log-out button goes to the sidebar)."""
    if not login_required():
        return
    if not st.user.get("is_logged_in", False):  # absent when nobody ever logged in
        st.title("covidct")
        st.info(
            "This dashboard serves models trained on patient data: log in with your hospital "
            "account to continue."
        )
        providers = _providers()
        if not providers:
            st.button("Log in", on_click=st.login, key="login")
        for name in providers:  # [auth.<name>] sections: one button per identity provider
            st.button(f"Log in with {name}", on_click=st.login, args=(name,), key=f"login_{name}")
        st.stop()
    with st.sidebar:
        st.button("Log out", on_click=st.logout, key="logout")


def _providers() -> list[str]:
    """Named providers of ``[auth.<name>]`` sections (empty: one unnamed provider in [auth])."""
    try:
        auth = st.secrets.get("auth", {})
    except FileNotFoundError:  # no secrets file at all
        return []
    return [name for name, value in auth.items() if isinstance(value, Mapping)]

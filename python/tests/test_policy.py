"""The embedded access policy from Python: evaluated on every open path,
before any key is tried; a denial is a clear exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sealtensors
import sealtensors.torch as st
import torch


@pytest.fixture()
def keys(tmp_path: Path) -> dict:
    return {
        "id": tmp_path / "id.jwk",
        "r": sealtensors.keygen(tmp_path / "id.jwk"),
        "sign": tmp_path / "sign.jwk",
        "signer": sealtensors.keygen(tmp_path / "sign.jwk", "ed25519"),
        "dir": tmp_path,
    }


def _seal(keys: dict, policy: str, name: str) -> Path:
    p = keys["dir"] / name
    st.save_file(
        {"w": torch.randn(8, 8), "b": torch.randn(8)},
        p,
        recipients=[keys["r"]],
        sign_key=keys["sign"],
        policy=policy,
    )
    return p


def test_expiry_in_the_past_is_refused_naming_the_date(keys: dict) -> None:
    past = _seal(keys, sealtensors.policy_template("expiry", not_after="2020-01-01T00:00:00Z"), "a")
    with pytest.raises(sealtensors.PolicyDeniedError, match="2020-01-01"):
        st.load_file(past, identities=[keys["id"]], trusted=[keys["signer"]])
    future = _seal(keys, sealtensors.policy_template("expiry", not_after="2999-01-01"), "b")
    got = st.load_file(future, identities=[keys["id"]], trusted=[keys["signer"]])
    assert set(got) == {"w", "b"}


def test_framework_template_sees_the_python_framework(keys: dict) -> None:
    only_numpy = _seal(keys, sealtensors.policy_template("frameworks", frameworks=["numpy"]), "c")
    with pytest.raises(sealtensors.PolicyDeniedError):
        st.load_file(only_numpy, identities=[keys["id"]])
    import sealtensors.numpy as snp

    assert set(snp.load_file(only_numpy, identities=[keys["id"]])) == {"w", "b"}


def test_licence_claims_from_the_caller(keys: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = """package sealtensors
default allow := false
allow if input.licence.tier == "pro"
deny_reasons contains "a pro licence is required" if not allow
"""
    p = _seal(keys, policy, "d")
    with pytest.raises(sealtensors.PolicyDeniedError, match="pro licence"):
        st.load_file(p, identities=[keys["id"]])
    assert "w" in st.load_file(p, identities=[keys["id"]], licence={"tier": "pro"})
    lic = keys["dir"] / "licence.json"
    lic.write_text(json.dumps({"tier": "pro"}))
    assert "w" in st.load_file(p, identities=[keys["id"]], licence=lic)
    monkeypatch.setenv("SEALTENSORS_LICENCE", str(lic))
    assert "w" in st.load_file(p, identities=[keys["id"]])


def test_bad_policies_fail_at_seal_time(keys: dict) -> None:
    with pytest.raises(sealtensors.SealtensorsError):
        _seal(keys, "package sealtensors\nallow if {", "e")
    with pytest.raises(sealtensors.SealtensorsError):
        sealtensors.policy_template("nope")

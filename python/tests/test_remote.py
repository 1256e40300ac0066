"""Sealed models read in place from object storage (docs/object-storage.md):
an S3-compatible server (s3s-fs) on loopback behind a logging, fault-injecting
proxy, and nginx over HTTPS. Loads must equal the local copy; header-only
operations cost at most two requests per file; a slice fetches only its
chunks; every fault ends in the right bytes after retries or in a typed
error, never in wrong bytes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sealtensors
import sealtensors.torch as st
import torch
from conftest import _target_dir
from objstore import FaultProxy, HttpsServer, S3Server, client_env

BUCKET = "models"
CHUNK = 64 << 10


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("s3")
    server = S3Server(root / "data")
    proxy = FaultProxy(server.port)
    client = server.client()
    client.create_bucket(Bucket=BUCKET)
    yield {"server": server, "proxy": proxy, "client": client, "root": root}
    proxy.stop()
    server.stop()


@pytest.fixture()
def proxy(s3: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """sealtensors pointed at the proxy; its log and faults cleared."""
    for k, v in client_env(s3["proxy"].endpoint).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SEALTENSORS_REMOTE_RETRIES", "6")
    p: FaultProxy = s3["proxy"]
    p.reset()
    yield p
    p.reset()


@pytest.fixture(scope="module")
def files(s3: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A plain and a sealed file (64 KiB chunks), uploaded; the identity."""
    d = tmp_path_factory.mktemp("files")
    ident = d / "id.jwk"
    recipient = sealtensors.keygen(ident)
    torch.manual_seed(0)
    tensors = {
        "embed.weight": torch.randn(2048, 256),
        "norm.weight": torch.randn(256),
        "layer.0.weight": torch.randn(256, 256).to(torch.bfloat16),
        "empty": torch.zeros(0, 4),
    }
    st.save_file(tensors, d / "plain.safetensors", metadata={"format": "pt"})
    st.save_file(
        tensors,
        d / "sealed.safetensors",
        metadata={"format": "pt"},
        recipients=[recipient],
        chunk_size=CHUNK,
    )
    c = s3["client"]
    for name in ("plain.safetensors", "sealed.safetensors"):
        c.upload_file(str(d / name), BUCKET, f"one/{name}")
    return {"dir": d, "ident": ident, "recipient": recipient, "tensors": tensors}


def url(key: str) -> str:
    return f"s3://{BUCKET}/{key}"


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def header_span(path: Path, name: str) -> tuple[int, int]:
    """(file offset of the tensor's first byte, its length), from the header."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    h = json.loads(raw[8 : 8 + n])
    begin, end = h[name]["data_offsets"]
    return 8 + n + begin, end - begin


def parse_range(r: str) -> tuple[int, int]:
    a, b = r.removeprefix("bytes=").split("-")
    return int(a), int(b) + 1


# ---- loads ---------------------------------------------------------------------------------


def test_sealed_and_plain_files_load_from_s3_as_locally(proxy: FaultProxy, files: dict) -> None:
    local = st.load_file(files["dir"] / "sealed.safetensors", identities=[files["ident"]])
    remote = st.load_file(url("one/sealed.safetensors"), identities=[files["ident"]])
    same(remote, files["tensors"])
    same(remote, local)
    # A plain file is read through sealtensors (safetensors reads local files only).
    same(st.load_file(url("one/plain.safetensors")), files["tensors"])
    # Every data request asked for the version pinned by the first one.
    gets = proxy.gets("/one/sealed.safetensors")
    assert len(gets) >= 2 and gets[0].if_match is None and gets[1].if_match
    assert all(g.if_match == gets[1].if_match for g in gets[1:])


def test_iter_tensors_streams_from_s3(proxy: FaultProxy, files: dict) -> None:
    with sealtensors.safe_open(
        url("one/sealed.safetensors"), framework="pt", identities=[files["ident"]]
    ) as f:
        got = {k: v.clone() for k, v in f.iter_tensors()}
    same(got, files["tensors"])


def test_no_file_is_written_while_loading(
    proxy: FaultProxy, files: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    st.load_file(url("one/sealed.safetensors"), identities=[files["ident"]])
    assert list(tmp_path.iterdir()) == []


def test_header_only_costs_at_most_two_requests(
    s3: dict, proxy: FaultProxy, files: dict, tmp_path: Path
) -> None:
    # A header larger than the speculative first read: exactly two requests.
    many = {f"t{i:05d}.a_rather_long_tensor_name.weight": torch.zeros(1) for i in range(6000)}
    st.save_file(many, tmp_path / "wide.safetensors", recipients=[files["recipient"]])
    s3["client"].upload_file(str(tmp_path / "wide.safetensors"), BUCKET, "one/wide.safetensors")
    for key, most in (("one/sealed.safetensors", 1), ("one/wide.safetensors", 2)):
        proxy.reset()
        with sealtensors.safe_open(url(key), framework="pt", identities=[files["ident"]]) as f:
            assert f.keys()
            f.metadata()
        # The file itself: one or two ranged reads. Besides it, the one HEAD
        # of the folder check (SPEC §8.5: is there an index beside it?).
        assert len(proxy.gets(key)) == most, proxy.requests
        others = [r for r in proxy.requests if key not in r.path]
        assert [(r.method, r.path.rsplit("/", 1)[1]) for r in others] == [
            ("HEAD", "model.safetensors.index.json")
        ]
        proxy.reset()
        out = subprocess.run(
            [str(cli_path()), "inspect", url(key)], capture_output=True, text=True, check=False
        )
        assert out.returncode == 0, out.stderr
        assert len(proxy.requests) == most, proxy.requests


def test_get_slice_fetches_only_its_chunks(proxy: FaultProxy, files: dict) -> None:
    name = "embed.weight"  # 2048 x 256 f32: 2 MiB, 32 chunks of 64 KiB (64 rows each)
    start, length = header_span(files["dir"] / "sealed.safetensors", name)
    assert length == 32 * CHUNK
    with sealtensors.safe_open(
        url("one/sealed.safetensors"), framework="pt", identities=[files["ident"]]
    ) as f:
        proxy.reset()
        # Rows 1030..1079 lie in chunk 16 (rows 1024..1087), past the
        # header's speculative read.
        rows = f.get_slice(name)[1030:1080]
    assert torch.equal(rows, files["tensors"][name][1030:1080])
    fetched = [parse_range(g.range) for g in proxy.gets() if g.range]
    assert fetched, proxy.requests
    lo, hi = start + 16 * CHUNK, start + 17 * CHUNK
    assert all(lo <= a and b <= hi for a, b in fetched), (fetched, lo, hi)
    assert sum(b - a for a, b in fetched) == CHUNK


# ---- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sealed", "plain"])
@pytest.mark.parametrize("fault", ["503", "429", "reset", "cut"])
def test_transient_faults_are_retried_to_the_right_bytes(
    proxy: FaultProxy, files: dict, fault: str, kind: str
) -> None:
    # The plain file too: nothing but the transfer itself guards its bytes.
    with sealtensors.safe_open(
        url(f"one/{kind}.safetensors"), framework="pt", identities=[files["ident"]]
    ) as f:
        proxy.faults.extend([fault, fault])
        got = f.get_tensors()
    same(got, files["tensors"])
    assert not proxy.faults  # both were served
    if fault in ("503", "429"):
        assert [g.status for g in proxy.gets()].count(int(fault)) == 2


def test_faults_that_do_not_stop_are_a_typed_error(
    proxy: FaultProxy, files: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEALTENSORS_REMOTE_RETRIES", "2")
    with sealtensors.safe_open(
        url("one/sealed.safetensors"), framework="pt", identities=[files["ident"]]
    ) as f:
        proxy.faults.extend(["503"] * 50)
        with pytest.raises(sealtensors.SealtensorsError, match="after its retries"):
            f.get_tensor("embed.weight")
    proxy.faults.clear()
    proxy.faults.extend(["cut"] * 50)
    with pytest.raises(sealtensors.SealtensorsError):
        st.load_file(url("one/sealed.safetensors"), identities=[files["ident"]])


def test_a_server_that_ignores_range_is_refused(
    proxy: FaultProxy, files: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEALTENSORS_REMOTE_RETRIES", "1")
    proxy.faults.extend(["norange"] * 10)
    with pytest.raises(sealtensors.SealtensorsError):
        st.load_file(url("one/plain.safetensors"))
    assert [g.status for g in proxy.gets()][:1] == [200], proxy.requests  # refused


def test_weak_etags_pin_nothing(proxy: FaultProxy, files: dict) -> None:
    proxy.faults.append("weak")
    with pytest.raises(sealtensors.InvalidFileError, match="no ETag or version id"):
        st.load_file(url("one/plain.safetensors"))


def test_urls_that_would_read_something_else_are_refused(proxy: FaultProxy) -> None:
    for bad in (
        url("one/plain.safetensors?versionId=1"),
        url("one/plain.safetensors#frag"),
        url("one/sub%2Fplain.safetensors"),
        "https://user:secret@127.0.0.1:1/x.safetensors",
    ):
        with pytest.raises(sealtensors.ConfigError) as e:
            st.load_file(bad)
        assert "secret" not in str(e.value)
    with pytest.raises(sealtensors.ConfigError, match="outputs are local"):
        sealtensors.unseal(url("one/plain.safetensors"), url("one/out.safetensors"))


def test_an_object_replaced_mid_load_is_an_error_never_a_mix(
    s3: dict, proxy: FaultProxy, files: dict
) -> None:
    d = files["dir"]
    c = s3["client"]
    c.upload_file(str(d / "sealed.safetensors"), BUCKET, "one/moving.safetensors")
    other = {k: v + 1 if v.numel() else v for k, v in files["tensors"].items()}
    st.save_file(other, d / "other.safetensors", recipients=[files["recipient"]], chunk_size=CHUNK)
    with sealtensors.safe_open(
        url("one/moving.safetensors"), framework="pt", identities=[files["ident"]]
    ) as f:
        first = f.get_tensor("norm.weight")
        c.upload_file(str(d / "other.safetensors"), BUCKET, "one/moving.safetensors")
        with pytest.raises(sealtensors.NotAuthenticError, match="changed while it was being read"):
            f.get_tensor("embed.weight")
    assert torch.equal(first, files["tensors"]["norm.weight"])
    # A plain file too (nothing else would catch a mix there).
    c.upload_file(str(d / "plain.safetensors"), BUCKET, "one/moving-plain.safetensors")
    with sealtensors.safe_open(url("one/moving-plain.safetensors"), framework="pt") as f:
        st.save_file(other, d / "other-plain.safetensors")
        c.upload_file(str(d / "other-plain.safetensors"), BUCKET, "one/moving-plain.safetensors")
        with pytest.raises(sealtensors.NotAuthenticError, match="changed"):
            f.get_tensor("embed.weight")


def test_missing_objects_and_bad_urls_are_clear_errors(proxy: FaultProxy, files: dict) -> None:
    with pytest.raises(sealtensors.InvalidFileError, match="no such object"):
        st.load_file(url("one/nothing.safetensors"), identities=[files["ident"]])
    with pytest.raises(sealtensors.ConfigError, match="plain http://"):
        st.load_file("http://10.0.0.1:1/x.safetensors")


def test_wrong_credentials_are_refused(
    proxy: FaultProxy, files: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(sealtensors.SealtensorsError, match="refused access|403"):
        st.load_file(url("one/sealed.safetensors"), identities=[files["ident"]])


# ---- model folders -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(s3: dict, files: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny Llama sealed in 3+ shards, uploaded under model/ with its index and config."""
    import sealtensors.hf
    from conftest import tiny_llama

    d = tmp_path_factory.mktemp("sharded")
    model = tiny_llama(3)
    model.save_pretrained(d / "plain", max_shard_size="40KB")
    sealtensors.hf.save_pretrained(
        model, d / "sealed", recipients=[files["recipient"]], max_shard_size="40KB"
    )
    names = sorted(p.name for p in (d / "sealed").iterdir())
    assert sum(n.endswith(".safetensors") for n in names) >= 3
    for n in names:
        s3["client"].upload_file(str(d / "sealed" / n), BUCKET, f"model/{n}")
    return {"dir": d, "model": model}


def test_a_sharded_model_folder_loads_from_s3(
    proxy: FaultProxy, files: dict, sharded: dict
) -> None:
    remote = st.load_folder(url("model"), identities=[files["ident"]])
    local = st.load_folder(sharded["dir"] / "sealed", identities=[files["ident"]])
    plain = st.load_folder(sharded["dir"] / "plain")
    same(remote, local)
    same(remote, plain)


def test_from_pretrained_with_weights_in_the_bucket(
    proxy: FaultProxy, files: dict, sharded: dict
) -> None:
    """The documented transformers path: config local, weights read in place."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(sharded["dir"] / "sealed")
    model = AutoModelForCausalLM.from_config(cfg).eval()
    state = st.load_folder(url("model"), identities=[files["ident"]])
    model.load_state_dict(state, strict=True)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, sharded["model"](ids).logits)


def test_a_listing_that_changes_during_a_load_is_refused(
    proxy: FaultProxy, files: dict, sharded: dict
) -> None:
    """A store that serves the folder's listing without its last shard once
    (then whole, to the folder check): `load_folder` must not return the
    model without that shard's tensors."""
    last = sorted(p.name for p in (sharded["dir"] / "sealed").glob("*.safetensors"))[-1]
    proxy.hidden = last
    proxy.fault_path = "list-type=2"
    proxy.faults.append("hide")
    with pytest.raises(sealtensors.NotAuthenticError, match=last):
        st.load_folder(url("model"), identities=[files["ident"]])
    assert not proxy.faults  # the fault was used


def test_a_folder_missing_a_shard_is_refused(
    s3: dict, proxy: FaultProxy, files: dict, sharded: dict
) -> None:
    names = sorted(p.name for p in (sharded["dir"] / "sealed").glob("*.safetensors"))
    for n in names[1:]:
        s3["client"].upload_file(str(sharded["dir"] / "sealed" / n), BUCKET, f"cut/{n}")
    with pytest.raises(sealtensors.NotAuthenticError, match="shard"):
        st.load_folder(url("cut"), identities=[files["ident"]])


def cli_path() -> Path:
    return _target_dir() / "release" / "sealtensors"


@pytest.fixture(scope="module")
def cli() -> Path:
    root = Path(__file__).resolve().parents[2]
    subprocess.run(["cargo", "build", "--release", "-p", "sealtensors-cli"], cwd=root, check=True)
    return cli_path()


def test_cli_inspects_verifies_and_unseals_a_folder_url(
    cli: Path, proxy: FaultProxy, files: dict, sharded: dict, tmp_path: Path
) -> None:
    def run(*args: str) -> str:
        r = subprocess.run(
            [str(cli), "--quiet", *args], capture_output=True, text=True, check=False
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert "encrypted" in run("inspect", url("model"))
    assert "OK" in run("verify", "-i", str(files["ident"]), url("model"))
    run("unseal", "-i", str(files["ident"]), "-o", str(tmp_path / "out"), url("model"))
    plain = st.load_folder(sharded["dir"] / "plain")
    same(st.load_folder(tmp_path / "out"), plain)
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()


# ---- HTTPS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory, files: dict) -> Iterator[HttpsServer]:
    server = HttpsServer(tmp_path_factory.mktemp("nginx"))
    for n in ("plain.safetensors", "sealed.safetensors"):
        shutil.copy(files["dir"] / n, server.www / n)
    yield server
    server.stop()


def test_https_range_server(
    https: HttpsServer, files: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEALTENSORS_CA_FILE", str(https.ca))
    got = st.load_file(https.url("sealed.safetensors"), identities=[files["ident"]])
    same(got, files["tensors"])
    same(st.load_file(https.url("plain.safetensors")), files["tensors"])
    assert any('"bytes=' in line for line in https.log_lines())


def test_an_https_folder_is_read_through_its_index_once(
    cli: Path,
    https: HttpsServer,
    files: dict,
    sharded: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store without listing: the shards are those the index names, and
    opening the folder as one model (the CLI's verify) checks that same read
    of the index (one version, one request)."""
    monkeypatch.setenv("SEALTENSORS_CA_FILE", str(https.ca))
    shutil.copytree(sharded["dir"] / "sealed", https.www / "model")
    got = st.load_folder(https.url("model"), identities=[files["ident"]])
    same(got, st.load_folder(sharded["dir"] / "plain"))
    before = len(https.log_lines())
    r = subprocess.run(
        [str(cli), "--quiet", "verify", "-i", str(files["ident"]), https.url("model")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    lines = https.log_lines()[before:]
    assert sum("/model/model.safetensors.index.json" in line for line in lines) == 1, lines


def test_https_refuses_an_unknown_certificate(
    https: HttpsServer, files: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SEALTENSORS_CA_FILE", raising=False)
    monkeypatch.setenv("SEALTENSORS_REMOTE_RETRIES", "1")
    with pytest.raises(sealtensors.SealtensorsError):
        st.load_file(https.url("sealed.safetensors"), identities=[files["ident"]])


def test_https_if_match_catches_a_replaced_file(
    https: HttpsServer, files: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEALTENSORS_CA_FILE", str(https.ca))
    target = https.www / "moving.safetensors"
    shutil.copy(files["dir"] / "plain.safetensors", target)
    with sealtensors.safe_open(https.url("moving.safetensors"), framework="pt") as f:
        f.get_tensor("norm.weight")
        other = {k: v * 2 for k, v in files["tensors"].items()}
        st.save_file(other, https.folder / "other.safetensors")
        os.replace(https.folder / "other.safetensors", target)
        os.utime(target, (1, 1))  # another ETag even within the same second
        with pytest.raises(sealtensors.NotAuthenticError, match="changed"):
            f.get_tensor("embed.weight")
    assert any(" 412 " in line for line in https.log_lines())


def test_parallel_loads_share_the_store(proxy: FaultProxy, files: dict) -> None:
    errors: list[BaseException] = []

    def load() -> None:
        try:
            same(
                st.load_file(url("one/sealed.safetensors"), identities=[files["ident"]]),
                files["tensors"],
            )
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a load hung"
    assert not errors, errors


# ---- writing to a bucket -------------------------------------------------------------------

PART = 5 << 20


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A plain file of about 12 MiB: more than two 5 MiB upload parts."""
    d = tmp_path_factory.mktemp("big")
    torch.manual_seed(1)
    tensors = {
        "a.weight": torch.randn(1024, 2048),
        "b.weight": torch.randn(1536, 1024).to(torch.bfloat16),
        "c.bias": torch.randn(7),
    }
    st.save_file(tensors, d / "big.safetensors", metadata={"format": "pt"})
    return {"path": d / "big.safetensors", "tensors": tensors}


def test_cli_seals_into_a_bucket_in_parts(
    cli: Path,
    proxy: FaultProxy,
    files: dict,
    big: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`seal -o s3://...`: a multipart upload whose parts are bounded, the
    header last as part 1; nothing written to disk; the object loads back."""
    monkeypatch.setenv("SEALTENSORS_REMOTE_REQUEST_SIZE", str(PART))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    target = url("up/big.safetensors")

    def seal(*extra: str) -> subprocess.CompletedProcess[str]:
        args = ["seal", "-r", files["recipient"], "-o", target, str(big["path"]), *extra]
        return subprocess.run(
            [str(cli), "--quiet", *args], capture_output=True, text=True, check=False
        )

    r = seal()
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.iterdir()) == []
    parts = proxy.of("PUT", "/up/big.safetensors")
    assert len(parts) == 3 and all("partNumber=" in p.path for p in parts), parts
    # Every part but part 1 (header + first part) is one part size at most.
    numbered = {int(p.path.split("partNumber=")[1].split("&")[0]): p for p in parts}
    assert sorted(numbered) == [1, 2, 3]
    assert numbered[2].received == PART and numbered[3].received < PART
    assert PART < numbered[1].received < PART + (1 << 20)
    posts = proxy.of("POST", "/up/big.safetensors")
    assert len(posts) == 2  # create, complete
    same(st.load_file(target, identities=[files["ident"]]), big["tensors"])

    # An object already there is refused, unless --force.
    r = seal()
    assert r.returncode != 0 and "already exists" in r.stderr, r.stderr
    r = seal("--force")
    assert r.returncode == 0, r.stderr
    same(st.load_file(target, identities=[files["ident"]]), big["tensors"])


def test_a_small_file_is_one_put(proxy: FaultProxy, files: dict) -> None:
    target = url("up/small.safetensors")
    sealtensors.seal(
        files["dir"] / "plain.safetensors",
        target,
        recipients=[files["recipient"]],
        chunk_size=CHUNK,
    )
    puts = proxy.of("PUT", "/up/small.safetensors")
    assert len(puts) == 1 and "partNumber" not in puts[0].path
    assert proxy.of("POST", "/up/small.safetensors") == []
    same(st.load_file(target, identities=[files["ident"]]), files["tensors"])


def test_an_upload_that_fails_leaves_nothing(
    proxy: FaultProxy, files: dict, big: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part refused past the retries: the error is typed, the upload is
    aborted, and no object appears. A part refused once is retried."""
    monkeypatch.setenv("SEALTENSORS_REMOTE_REQUEST_SIZE", str(PART))
    monkeypatch.setenv("SEALTENSORS_REMOTE_RETRIES", "2")
    target = url("up/failed.safetensors")
    proxy.fault_method = "PUT"
    proxy.fault_path = "partNumber=2"
    proxy.faults.extend(["503"] * 10)
    with pytest.raises(sealtensors.SealtensorsError, match="503|Service Unavailable|failed"):
        sealtensors.seal(big["path"], target, recipients=[files["recipient"]])
    assert any("uploadId=" in d.path for d in proxy.of("DELETE", "/up/failed.safetensors"))
    with pytest.raises(sealtensors.SealtensorsError, match="not found|NotFound|no such"):
        sealtensors.safe_open(target, framework="pt", identities=[files["ident"]])

    proxy.reset()
    proxy.fault_method = "PUT"
    proxy.fault_path = "partNumber="
    proxy.faults.extend(["503", "reset"])
    sealtensors.seal(big["path"], target, recipients=[files["recipient"]])
    same(st.load_file(target, identities=[files["ident"]]), big["tensors"])


def test_a_model_folder_seals_into_a_bucket(proxy: FaultProxy, files: dict, sharded: dict) -> None:
    """A folder: every shard uploaded, the other files after them, the index
    last; it loads as the local sealing does. A folder already holding
    objects is refused, and a stale shard is never left beside new ones."""
    src = sharded["dir"] / "plain"
    target = url("sealed-up")
    sealtensors.seal(src, target, recipients=[files["recipient"]])
    puts = [p.path.split("?")[0] for p in proxy.of("PUT", "/sealed-up/")]
    names = sorted(p.name for p in src.iterdir())
    assert sorted({p.rsplit("/", 1)[1] for p in puts}) == names
    shards = [i for i, p in enumerate(puts) if p.endswith(".safetensors")]
    assert shards == list(range(len(shards)))
    assert puts[-1] == f"/{BUCKET}/sealed-up/model.safetensors.index.json"
    same(st.load_folder(target, identities=[files["ident"]]), st.load_folder(src))
    shard = next(n for n in names if n.endswith(".safetensors"))
    with pytest.raises(sealtensors.NoKeyError):
        st.load_file(f"{target}/{shard}")

    with pytest.raises(sealtensors.SealtensorsError, match="exists"):
        sealtensors.seal(src, target, recipients=[files["recipient"]])
    s3_put = proxy.of("PUT", "/sealed-up/")
    sealtensors.seal(src, target, recipients=[files["recipient"]], overwrite=True)
    assert len(proxy.of("PUT", "/sealed-up/")) == 2 * len(s3_put)
    same(st.load_folder(target, identities=[files["ident"]]), st.load_folder(src))


def test_a_stale_shard_in_the_folder_is_refused(
    s3: dict, proxy: FaultProxy, files: dict, sharded: dict
) -> None:
    s3["client"].put_object(Bucket=BUCKET, Key="stale/model-00009-of-00009.safetensors", Body=b"x")
    with pytest.raises(sealtensors.SealtensorsError, match="model-00009-of-00009"):
        sealtensors.seal(
            sharded["dir"] / "plain", url("stale"), recipients=[files["recipient"]], overwrite=True
        )
    assert proxy.of("PUT", "/stale/") == []


def test_a_folder_is_checked_before_anything_is_uploaded(
    proxy: FaultProxy, files: dict, sharded: dict, tmp_path: Path
) -> None:
    """A file whose name a URL cannot hold, or a link leading out of the
    folder, is refused before the first shard goes up."""
    src = tmp_path / "model"
    shutil.copytree(sharded["dir"] / "plain", src)
    (src / "notes 100%.txt").write_text("x")
    with pytest.raises(sealtensors.SealtensorsError, match="%"):
        sealtensors.seal(src, url("pre"), recipients=[files["recipient"]])
    (src / "notes 100%.txt").unlink()
    (src / "outside").symlink_to(files["dir"] / "plain.safetensors")
    with pytest.raises(sealtensors.SealtensorsError, match="link"):
        sealtensors.seal(src, url("pre"), recipients=[files["recipient"]])
    assert proxy.of("PUT", "/pre/") == [] and proxy.of("POST", "/pre/") == []


def test_outputs_that_cannot_be_written_are_refused(
    proxy: FaultProxy, files: dict, https: HttpsServer
) -> None:
    src = files["dir"] / "plain.safetensors"
    for target, why in [
        (https.url("out.safetensors"), "read-only"),
        (f"s3://{BUCKET}/", "name after the bucket"),
        (url("x.safetensors?versionId=1"), "query"),
    ]:
        with pytest.raises(sealtensors.SealtensorsError, match=why):
            sealtensors.seal(src, target, recipients=[files["recipient"]])
    with pytest.raises(sealtensors.SealtensorsError, match="the input is a URL"):
        sealtensors.seal(
            url("one/plain.safetensors"), url("x.safetensors"), recipients=[files["recipient"]]
        )


def test_a_cryptotensors_folder_converts_into_a_bucket(
    proxy: FaultProxy, files: dict, tmp_path: Path
) -> None:
    """`convert` writes a URL as `seal` does: the reference library's files,
    re-sealed shard by shard into the bucket, load as the plain model."""
    from test_cryptotensors import Keys, _ct_model_folder

    keys = Keys(tmp_path)
    plain, ct = _ct_model_folder(keys, tmp_path)
    target = url("converted")
    sealtensors.convert_cryptotensors(ct, target, **keys.opts(), recipients=[files["recipient"]])
    assert any(p.path.endswith("/converted/config.json") for p in proxy.of("PUT"))
    same(st.load_folder(target, identities=[files["ident"]]), st.load_folder(plain))


def test_from_pretrained_takes_a_folder_url(
    s3: dict,
    proxy: FaultProxy,
    files: dict,
    sharded: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With sealtensors.auto, `from_pretrained("s3://bucket/model")` works as
    for a local folder: the config fetched, the weights read in place as one
    model (one key unwrap), the logits those of the original model."""
    import importlib

    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    monkeypatch.setenv("SEALTENSORS_IDENTITY", str(files["ident"]))
    auto = importlib.import_module("sealtensors.auto")
    auto.enable()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    try:
        for cls in (AutoModelForCausalLM, LlamaForCausalLM):
            model = cls.from_pretrained(url("model")).eval()
            assert type(model).__name__ == "LlamaForCausalLM"
            with torch.no_grad():
                assert torch.equal(model(ids).logits, sharded["model"](ids).logits)
        # Whole objects: the config files and the index only; weights are read in ranges.
        whole = {g.path.rsplit("/", 1)[1] for g in proxy.gets("/model/") if g.range is None}
        assert whole <= {
            "config.json",
            "generation_config.json",
            "model.safetensors.index.json",
        }
        with pytest.raises(FileNotFoundError, match="config.json"):
            AutoModelForCausalLM.from_pretrained(url("one"))
        # The config is not authenticated: one that describes another model
        # (a layer more, a layer less) than the sealed weights is refused.
        cfg = json.loads((sharded["dir"] / "sealed" / "config.json").read_text())
        c = s3["client"]
        for key in c.list_objects_v2(Bucket=BUCKET, Prefix="model/")["Contents"]:
            name = key["Key"].split("/", 1)[1]
            if name.endswith(".safetensors"):
                c.copy_object(
                    Bucket=BUCKET, Key=f"badcfg/{name}", CopySource=f"{BUCKET}/{key['Key']}"
                )
        for layers in (cfg["num_hidden_layers"] + 1, cfg["num_hidden_layers"] - 1):
            body = json.dumps({**cfg, "num_hidden_layers": layers}).encode()
            c.put_object(Bucket=BUCKET, Key="badcfg/config.json", Body=body)
            with pytest.raises(sealtensors.InvalidFileError, match="config"):
                AutoModelForCausalLM.from_pretrained(url("badcfg"))
    finally:
        auto.disable()


def test_from_pretrained_url_with_sealtensors_auto_in_the_environment(
    proxy: FaultProxy, files: dict, sharded: dict, tmp_path: Path
) -> None:
    """`SEALTENSORS_AUTO=1`: nothing imported by hand, the auto class imported
    after the hook, a folder URL given to `from_pretrained`."""
    import sys

    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "torch.save(m.state_dict(), sys.argv[2])\n"
    )
    env = {**os.environ, "SEALTENSORS_AUTO": "1", "SEALTENSORS_IDENTITY": str(files["ident"])}
    out = tmp_path / "state.pt"
    r = subprocess.run(
        [sys.executable, "-c", code, url("model"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    same(torch.load(out), dict(sharded["model"].state_dict()))


def test_a_peft_adapter_loads_from_a_bucket(
    s3: dict, proxy: FaultProxy, files: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With sealtensors.auto, `PeftModel.from_pretrained(model, "s3://...")`
    reads a sealed LoRA adapter in place: its config fetched, its weights
    through sealtensors; the logits are the plain adapter's."""
    import importlib

    from conftest import tiny_llama
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(1)
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    plain = tmp_path / "adapter"
    get_peft_model(tiny_llama(2), cfg).save_pretrained(plain)
    sealed = tmp_path / "adapter-sealed"
    sealtensors.seal(plain, sealed, recipients=[files["recipient"]])
    for p in sealed.iterdir():
        s3["client"].upload_file(str(p), BUCKET, f"adapter/{p.name}")
    ids = torch.arange(16).reshape(2, 8)

    def logits(where: str | Path) -> torch.Tensor:
        with torch.no_grad():
            return PeftModel.from_pretrained(tiny_llama(2), where).eval()(input_ids=ids).logits

    want = logits(plain)
    monkeypatch.setenv("SEALTENSORS_IDENTITY", str(files["ident"]))
    auto = importlib.import_module("sealtensors.auto")
    auto.enable()
    try:
        assert torch.equal(logits(url("adapter")), want)
        gets = proxy.gets("/adapter/")
        assert any(g.path.endswith("/adapter_config.json") for g in gets)
        assert all(g.range for g in gets if g.path.endswith(".safetensors"))
        # The adapter config is not authenticated: one that describes other
        # modules than the sealed weights is refused.
        bad = json.loads((sealed / "adapter_config.json").read_text())
        bad["target_modules"] = ["q_proj"]
        s3["client"].put_object(
            Bucket=BUCKET, Key="adapter/adapter_config.json", Body=json.dumps(bad).encode()
        )
        with pytest.raises(sealtensors.InvalidFileError, match="adapter_config"):
            logits(url("adapter"))
        good = str(sealed / "adapter_config.json")
        s3["client"].upload_file(good, BUCKET, "adapter/adapter_config.json")
        # Without the key, the sealed adapter is refused, never loaded as weights.
        monkeypatch.delenv("SEALTENSORS_IDENTITY")
        auto.enable(identities=[])
        with pytest.raises(sealtensors.NoKeyError):
            logits(url("adapter"))
    finally:
        auto.disable()


def test_save_file_seals_into_a_bucket(proxy: FaultProxy, files: dict) -> None:
    """`sealtensors.torch.save_file(tensors, "s3://...", recipients=...)`
    streams the sealed file into the bucket; a plain file is refused (it is
    safetensors' to write, locally)."""
    target = url("py/saved.safetensors")
    st.save_file(files["tensors"], target, {"format": "pt"}, recipients=[files["recipient"]])
    same(st.load_file(target, identities=[files["ident"]]), files["tensors"])
    with pytest.raises(ValueError, match="local path only"):
        st.save_file(files["tensors"], url("py/plain.safetensors"))
    assert proxy.of("PUT", "/py/plain.safetensors") == []

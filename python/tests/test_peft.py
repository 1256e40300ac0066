"""A LoRA adapter sealed with sealtensors loads through unmodified PEFT
(`PeftModel.from_pretrained`, which reads `adapter_model.safetensors` with
safetensors) after `import sealtensors.auto`, under the same keys and trust
rules as a model, and gives outputs identical to the plain adapter's."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest
import sealtensors
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import tiny_llama  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402


def _base() -> Any:
    return tiny_llama(4)


@pytest.fixture()
def adapter(tmp_path: Path) -> dict:
    """A plain LoRA adapter with non-zero weights (so that it changes the
    logits), saved by PEFT, and the same adapter sealed and signed."""
    torch.manual_seed(1)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(_base(), cfg)
    plain = tmp_path / "adapter"
    peft_model.save_pretrained(plain)
    assert (plain / "adapter_model.safetensors").is_file()
    ident = tmp_path / "deployer.jwk"
    recipient = sealtensors.keygen(ident)
    signer = sealtensors.keygen(tmp_path / "publisher.jwk", "ed25519")
    sealed = tmp_path / "adapter-sealed"
    sealtensors.seal(plain, sealed, [recipient], tmp_path / "publisher.jwk")
    assert (sealed / "adapter_config.json").is_file()
    return {"plain": plain, "sealed": sealed, "ident": ident, "signer": signer}


def _logits(adapter_dir: Path) -> torch.Tensor:
    model = PeftModel.from_pretrained(_base(), adapter_dir).eval()
    ids = torch.arange(16).reshape(2, 8)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_sealed_lora_adapter_gives_the_plain_adapters_logits(
    adapter: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _logits(adapter["plain"])
    # The adapter changes the model: the comparison below is not vacuous.
    with torch.no_grad():
        base = _base()(input_ids=torch.arange(16).reshape(2, 8)).logits
    assert not torch.equal(expected, base)

    monkeypatch.setenv("SEALTENSORS_IDENTITY", str(adapter["ident"]))
    monkeypatch.setenv("SEALTENSORS_TRUST", adapter["signer"])
    auto = importlib.import_module("sealtensors.auto")
    auto.enable()
    try:
        assert torch.equal(_logits(adapter["sealed"]), expected)
    finally:
        auto.disable()


def test_sealed_lora_adapter_follows_the_key_and_trust_rules(
    adapter: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEALTENSORS_CONFIG_DIR", str(tmp_path / "no-config"))
    auto = importlib.import_module("sealtensors.auto")
    auto.enable()
    try:
        # No identity: the adapter does not load (never as ciphertext weights).
        monkeypatch.delenv("SEALTENSORS_IDENTITY", raising=False)
        monkeypatch.delenv("SEALTENSORS_TRUST", raising=False)
        with pytest.raises(sealtensors.NoKeyError):
            _logits(adapter["sealed"])
        # A signer the loader does not trust: refused.
        monkeypatch.setenv("SEALTENSORS_IDENTITY", str(adapter["ident"]))
        other = sealtensors.keygen(tmp_path / "other.jwk", "ed25519")
        monkeypatch.setenv("SEALTENSORS_TRUST", other)
        with pytest.raises(sealtensors.NotAuthenticError):
            _logits(adapter["sealed"])
        # A loader that pins a signer refuses the plain adapter too.
        monkeypatch.setenv("SEALTENSORS_TRUST", adapter["signer"])
        with pytest.raises(sealtensors.NotAuthenticError):
            _logits(adapter["plain"])
        # A tampered sealed adapter is refused.
        f = adapter["sealed"] / "adapter_model.safetensors"
        raw = bytearray(f.read_bytes())
        raw[-5] ^= 1
        f.write_bytes(bytes(raw))
        with pytest.raises(sealtensors.NotAuthenticError):
            _logits(adapter["sealed"])
    finally:
        auto.disable()

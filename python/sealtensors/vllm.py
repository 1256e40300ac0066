"""vLLM plugin: the load format ``sealtensors``.

Installed with the package as a ``vllm.general_plugins`` entry point, so every
vLLM process (the API server, the engine core, each worker) registers it:

    vllm serve DIR --load-format sealtensors
    vllm.LLM(model=DIR, load_format="sealtensors")

The loader is vLLM's default loader with one change: weights are read through
`sealtensors.safe_open`, which verifies and decrypts sealed files and hands
plain ones to the real safetensors. On a CPU worker, and under tensor or
pipeline parallelism, the loader hands vLLM lazy tensors
(`sealtensors._lazy.LazyTensor`): a weight loader's ``param.copy_(weight)``
into a parameter (or a row block of a fused one) of the same dtype decrypts
straight into the parameter's memory, with no buffer in between; a
``narrow`` along the first dimension decrypts only the rows of its rank's
shard; a layer another pipeline stage owns is never read; anything else
decrypts the whole tensor. Each worker logs how many bytes it decrypted. On
a CUDA worker (or with ``"lazy": false`` in --model-loader-extra-config)
tensors go through the loading engine (`sealtensors.engine` in the core,
SPEC §8.6): read ahead and decrypted on all cores into a bounded pool of
page-locked buffers, each reused once vLLM's weight loader has copied it to
the device, so a worker holds at most the pool (two of the largest tensor by
default) beyond its own weights. With expert parallelism, experts of other
ranks are skipped before they are read or decrypted.

Keys are found as everywhere else in sealtensors: SEALTENSORS_IDENTITY and
SEALTENSORS_TRUST (inherited by spawned workers), then the config directory.
They may also be given per model with ``--model-loader-extra-config``:

    --model-loader-extra-config '{"trusted": ["ed25519:..."], "require_signed": true}'

with the keys ``identities``, ``trusted``, ``require_encrypted``,
``require_signed`` and ``licence`` (the keyword arguments of `safe_open`),
``lazy`` (true or false; default: true on CPU workers and under tensor
or pipeline parallelism), and ``weights``: a folder URL (``s3://``,
``gs://``, ``az://``, ``https://``) whose weights are read in place, while
the model argument names a local folder with the config and tokenizer
(docs/object-storage.md):

    vllm serve ./llama-config --load-format sealtensors \
        --model-loader-extra-config '{"weights": "s3://bucket/llama"}'

vLLM is imported only when `register()` runs; importing sealtensors never
needs it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator
from typing import Any

LOAD_FORMAT = "sealtensors"

# `safe_open` keyword arguments accepted in --model-loader-extra-config.
_OPEN_OPTIONS = ("identities", "trusted", "require_encrypted", "require_signed", "licence")

_loader_cls: type | None = None


def _tensors(
    files: list[str], options: dict[str, Any], local_expert_ids: set[int] | None, lazy: bool
) -> Generator[tuple[str, Any], None, None]:
    """Yield (name, tensor): through the loading engine (read ahead, recycled
    buffers); with `lazy`, tensors that decrypt only what the weight loader
    uses."""
    from vllm.model_executor.model_loader.ep_weight_filter import should_skip_weight

    from sealtensors._lazy import LazyTensor
    from sealtensors._open import safe_open, stream_tensors

    caller = _caller()
    if not lazy:
        # One engine over every shard: read ahead and decrypted on all cores
        # into a bounded pool of buffers, each reused once vLLM's weight
        # loader has copied it into its parameter.
        handles = [safe_open(p, framework="pt", _caller=caller, **options) for p in files]
        try:
            pieces = [
                (i, name)
                for i, h in enumerate(handles)
                for name in h.offset_keys()
                if not should_skip_weight(name, local_expert_ids)
            ]
            yield from stream_tensors(handles, pieces, pin_memory=_cuda_worker())
        finally:
            for h in handles:
                h.__exit__(None, None, None)
        return
    stats = {"bytes_total": 0, "bytes_read": 0}
    for path in files:
        with safe_open(path, framework="pt", _caller=caller, **options) as f:
            for name in f.offset_keys():
                if should_skip_weight(name, local_expert_ids):
                    continue
                if f._plain is None:
                    yield name, LazyTensor(f, name, stats)
                else:
                    yield name, f.get_tensor(name)
    _log_stats(stats)


def _cuda_worker() -> bool:
    """Whether this worker loads onto a CUDA device (then the engine's buffers
    are page-locked, so vLLM's copies to the device need no staging copy)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _log_stats(stats: dict[str, int]) -> None:
    from vllm.logger import init_logger

    total, read = stats["bytes_total"], stats["bytes_read"]
    init_logger("vllm.sealtensors").info(
        "sealtensors: this worker read %d of %d bytes of sealed weights (%.1f%%; "
        "only the chunks holding them were decrypted)",
        read,
        total,
        100.0 * read / total if total else 0.0,
    )


def _parallel() -> bool:
    """Whether this worker holds a part of the model (tensor or pipeline parallel)."""
    from vllm.distributed import parallel_state as ps

    if not ps.model_parallel_is_initialized():  # one process, no groups
        return False
    return ps.get_tp_group().world_size > 1 or ps.get_pp_group().world_size > 1


def _caller() -> tuple[str, str]:
    """Who loads the weights, as the access policy sees it."""
    import vllm

    return ("vllm", str(getattr(vllm, "__version__", "")))


def _natural_key(path: str) -> list[Any]:
    import re

    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path)]


def _make_loader() -> type:
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

    class SealtensorsModelLoader(DefaultModelLoader):
        """vLLM's default safetensors loader, reading through sealtensors."""

        def __init__(self, load_config: Any) -> None:
            extra = dict(load_config.model_loader_extra_config or {})
            self.seal_options = {k: extra.pop(k) for k in _OPEN_OPTIONS if k in extra}
            self.lazy = extra.pop("lazy", None)
            # Weights read in place from a folder URL (or another folder).
            self.weights = extra.pop("weights", None)
            if self.weights is not None and not isinstance(self.weights, str):
                raise ValueError(
                    '"weights" in --model-loader-extra-config names a folder: a URL '
                    "(s3://, gs://, az://, https://) or a path"
                )
            for key in ("identities", "trusted"):
                if isinstance(self.seal_options.get(key), str):
                    self.seal_options[key] = [self.seal_options[key]]
            # The parent sees an ordinary safetensors load (so that its file
            # discovery, index filtering and hub download apply unchanged).
            super().__init__(
                dataclasses.replace(
                    load_config, load_format="safetensors", model_loader_extra_config=extra
                )
            )

        def load_weights(self, model: Any, model_config: Any) -> None:
            """vLLM's weight loading, as one load scope: the shards of a sealed
            model share one key unwrap or broker release (SPEC §8.5)."""
            from sealtensors._open import load_scope

            with load_scope():
                super().load_weights(model, model_config)

        def _get_weights_iterator(self, source: Any) -> Generator[tuple[str, Any], None, None]:
            from vllm.model_executor.model_loader.weight_utils import (
                filter_mm_encoder_only_safetensors_files,
            )

            if self.weights is not None:
                # The weights' folder, read in place: its weight files as one
                # model (the shard set and index checked on every open).
                from sealtensors._native import weight_files

                folder, index_file = self.weights, None
                files, use_safetensors = weight_files(self.weights), True
            else:
                folder, files, use_safetensors, index_file = self._prepare_weights(
                    source.model_or_path,
                    source.subfolder,
                    source.revision,
                    source.fall_back_to_pt,
                    source.allow_patterns_overrides,
                )
            if not use_safetensors:
                raise RuntimeError(
                    f"load format {LOAD_FORMAT!r} reads safetensors files only; "
                    f"none found for {source.model_or_path!r}"
                )
            if self._encoder_only_lm_prefixes is not None and files and self.weights is None:
                files = filter_mm_encoder_only_safetensors_files(
                    files,
                    folder,
                    index_file,
                    self._encoder_only_lm_prefixes,
                    weights_mapper=self._encoder_only_weights_mapper,
                )
            if source.is_unused_weight is not None:
                files = self._drop_unused_shards(files, source.is_unused_weight)
            if self.counter_before_loading_weights == 0.0:
                self.counter_before_loading_weights = time.perf_counter()
            files = sorted(files, key=_natural_key)
            # Lazy tensors decrypt straight into the parameters a weight
            # loader copies them into (CPU workers), or only a rank's rows
            # (tensor or pipeline parallel); a CUDA worker streams through the
            # engine's page-locked buffers instead.
            if self.lazy is None:
                lazy = _parallel() or not _cuda_worker()
            else:
                lazy = bool(self.lazy)
            weights = _tensors(files, self.seal_options, self.local_expert_ids, lazy)
            return ((source.prefix + name, tensor) for name, tensor in weights)

        def _drop_unused_shards(self, files: list[str], is_unused: Any) -> list[str]:
            """Skip shards none of whose tensors the model loads (headers only)."""
            from sealtensors._open import safe_open

            kept = []
            for path in files:
                with safe_open(path, framework="pt", **self.seal_options) as f:
                    if not all(is_unused(name) for name in f.keys()):
                        kept.append(path)
            return kept or files

    SealtensorsModelLoader.__module__ = __name__
    SealtensorsModelLoader.__qualname__ = "SealtensorsModelLoader"
    return SealtensorsModelLoader


def register() -> None:
    """Register the ``sealtensors`` load format with vLLM (the plugin entry point).

    Safe to call more than once and in every process; does nothing when vLLM
    is not installed.
    """
    global _loader_cls
    try:
        from vllm.model_executor.model_loader import register_model_loader
    except ImportError:
        return
    if _loader_cls is None:
        _loader_cls = _make_loader()
        register_model_loader(LOAD_FORMAT)(_loader_cls)

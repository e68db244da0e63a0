"""Shared helpers for the llama.cpp (llama-cpp-python) reference scripts.

Run with .tools/refenv/bin/python (built by scripts/reference/build-llama-cpp).
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path() -> str:
    """SWELL_MODEL_PATH, else models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-model)."""
    p = Path(os.environ.get("SWELL_MODEL_PATH", DEFAULT_MODEL))
    if not p.is_absolute():
        p = REPO / p
    if not p.exists():
        raise SystemExit(f"model not found: {p} (set SWELL_MODEL_PATH or run scripts/fetch-model)")
    return str(p)


def load_llama(path: str, *, n_ctx: int = 2048, n_threads: int = 2, logits_all: bool = True):
    """A llama_cpp.Llama on CPU with weight repacking (extra buffer types) disabled.

    llama-cpp-python 0.3.36 does not expose `use_extra_bufts` on Llama(), so the default
    model params are patched for the duration of the load (same as llama-server
    --no-repack).
    """
    import llama_cpp
    import llama_cpp.llama_cpp as C

    orig = C.llama_model_default_params

    def no_repack():
        p = orig()
        p.use_extra_bufts = False
        return p

    C.llama_model_default_params = no_repack
    try:
        llm = llama_cpp.Llama(
            model_path=path,
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_ubatch=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_gpu_layers=0,
            logits_all=logits_all,
            seed=0,
            verbose=False,
        )
    finally:
        C.llama_model_default_params = orig
    assert llm.model_params.use_extra_bufts is False
    return llm

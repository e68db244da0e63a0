#!/usr/bin/env python3
"""A second, independent reference: a plain numpy f32 forward pass of a llama-arch GGUF.

Reads the GGUF with the `gguf` package, dequantizes every tensor to f32 with
`gguf.quants.dequantize`, and runs the whole sequence at once (teacher forcing):

    x = token_embd[ids]
    per layer: h = x + Wo . attn(RoPE(Wq . rms(x)), RoPE(Wk . rms(x)), Wv . rms(x))
               x = h + Wdown . (silu(Wgate . rms(h)) * Wup . rms(h))
    logits = (output or token_embd) . rms(x)

Notes on the GGUF layout:
  * llama.cpp's converter permutes the q/k projection rows so that RoPE applies to
    ADJACENT pairs (x[2i], x[2i+1]) ("normal"/interleaved rope), not to the HF halves.
  * GQA: n_head query heads share n_head_kv key/value heads (head h uses kv h // group).
  * SmolLM2 ties the output projection to token_embd (no output.weight tensor).

Usage (from the refenv made by scripts/reference/build-llama-cpp):
    .tools/refenv/bin/python scripts/reference/numpy_llama.py [MODEL] "text or ids"
prints the greedy next token for a comma-separated list of ids.
"""
from __future__ import annotations

import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def _field(reader: GGUFReader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


class NumpyLlama:
    def __init__(self, path: str):
        r = GGUFReader(path)
        arch = _field(r, "general.architecture")
        if arch != "llama":
            raise ValueError(f"unsupported architecture {arch!r}")
        g = lambda k: _field(r, f"llama.{k}")  # noqa: E731
        self.n_embd = int(g("embedding_length"))
        self.n_layer = int(g("block_count"))
        self.n_head = int(g("attention.head_count"))
        self.n_head_kv = int(g("attention.head_count_kv") or self.n_head)
        self.eps = float(g("attention.layer_norm_rms_epsilon"))
        self.rope_theta = float(g("rope.freq_base") or 10000.0)
        self.head_dim = self.n_embd // self.n_head
        rope_dim = g("rope.dimension_count")
        self.rope_dim = int(rope_dim) if rope_dim is not None else self.head_dim
        self.w: dict[str, np.ndarray] = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
            # numpy shape is (rows, cols) = (out, in), i.e. reversed GGML ne.
            shape = tuple(int(x) for x in reversed(t.shape.tolist()))
            self.w[t.name] = np.ascontiguousarray(a.reshape(shape))
        self.tok_embd = self.w["token_embd.weight"]
        self.output = self.w.get("output.weight", self.tok_embd)
        self.n_vocab = self.tok_embd.shape[0]
        half = self.rope_dim // 2
        self.inv_freq = (
            self.rope_theta ** (-np.arange(0, half, dtype=np.float64) * 2.0 / self.rope_dim)
        )

    def _rms(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        ms = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
        return (x / np.sqrt(ms + np.float32(self.eps))) * w

    def _rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        # x: (T, H, D); rotate adjacent pairs (2i, 2i+1) by pos * inv_freq[i].
        ang = pos[:, None].astype(np.float64) * self.inv_freq[None, :]  # (T, D/2)
        cos = np.cos(ang).astype(np.float32)[:, None, :]
        sin = np.sin(ang).astype(np.float32)[:, None, :]
        out = x.copy()
        x0 = x[..., 0 : self.rope_dim : 2]
        x1 = x[..., 1 : self.rope_dim : 2]
        out[..., 0 : self.rope_dim : 2] = x0 * cos - x1 * sin
        out[..., 1 : self.rope_dim : 2] = x0 * sin + x1 * cos
        return out

    def logits(self, ids: list[int]) -> np.ndarray:
        """f32 logits (T, n_vocab) for every position of `ids` (causal)."""
        T = len(ids)
        H, KV, D = self.n_head, self.n_head_kv, self.head_dim
        grp = H // KV
        pos = np.arange(T)
        mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), k=1)
        scale = np.float32(1.0 / np.sqrt(D))
        x = self.tok_embd[np.asarray(ids)].astype(np.float32)
        for l in range(self.n_layer):
            p = f"blk.{l}."
            w = self.w
            h = self._rms(x, w[p + "attn_norm.weight"])
            q = (h @ w[p + "attn_q.weight"].T).reshape(T, H, D)
            k = (h @ w[p + "attn_k.weight"].T).reshape(T, KV, D)
            v = (h @ w[p + "attn_v.weight"].T).reshape(T, KV, D)
            q = self._rope(q, pos)
            k = self._rope(k, pos)
            att_out = np.empty((T, H, D), dtype=np.float32)
            for hh in range(H):
                kv = hh // grp
                s = (q[:, hh, :] @ k[:, kv, :].T) * scale + mask
                s = s - s.max(axis=-1, keepdims=True)
                e = np.exp(s)
                pr = e / e.sum(axis=-1, keepdims=True)
                att_out[:, hh, :] = pr @ v[:, kv, :]
            x = x + att_out.reshape(T, H * D) @ w[p + "attn_output.weight"].T
            h = self._rms(x, w[p + "ffn_norm.weight"])
            gate = h @ w[p + "ffn_gate.weight"].T
            up = h @ w[p + "ffn_up.weight"].T
            act = gate / (np.float32(1.0) + np.exp(-gate)) * up
            x = x + act @ w[p + "ffn_down.weight"].T
        x = self._rms(x, self.w["output_norm.weight"])
        return x @ self.output.T


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


if __name__ == "__main__":
    import os

    path = sys.argv[1] if len(sys.argv) > 2 else os.environ.get(
        "SWELL_MODEL_PATH", "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    ids = [int(t) for t in sys.argv[-1].split(",")]
    m = NumpyLlama(path)
    lg = m.logits(ids)
    print("next token:", int(np.argmax(lg[-1])))

"""A reference reader of TensorRT-LLM Llama checkpoints (torch): what an engine built from one would compute.

It reads ``config.json`` + ``rank0.safetensors`` and runs the network with TensorRT-LLM's semantics, written
from TensorRT-LLM's public source and independent of :mod:`edge.trtllm` (it imports nothing from it):

* ``transformer.vocab_embedding`` lookup; per layer ``input_layernorm`` (RMSNorm, ``norm_epsilon``), the fused
  ``attention.qkv`` split as [q heads | k heads | v heads] on the output axis, RoPE of type ``rope_gpt_neox``
  (rotate-half, ``rotary_base``), causal attention with grouped KV heads, ``attention.dense``, a residual,
  ``post_layernorm``, the gated MLP ``proj(silu(fc(x)) * gate(x))``, a residual; ``transformer.ln_f``,
  ``lm_head``, logits in ``logits_dtype``.
* ``quantization.quant_algo`` W8A16 / W4A16: the linear weights are quantized as ``trtllm-build`` does at load
  time (``weight_only_quantize_dict`` -> ``symmetric_quantize``: per output channel, in float32,
  scale = max|w| / 2^(bits-1), codes rounded half away from zero and clamped to the signed range, the scale
  kept in the checkpoint dtype) and multiplied back; which weights, as TensorRT-LLM decides it twice: the
  graph (``quantize_layers``: every linear and the embedding unless a module name matches
  ``quantization.exclude_modules``, or its defaults ``*lm_head``, ``*vocab_embedding``, ... when that is empty)
  and the weights (``weight_only_quantize_dict``: names containing ``qkv.weight``, ``dense.weight``,
  ``fc.weight``, ``proj.weight`` or ``gate.weight`` unless the tensor name matches). Where the two disagree the
  build cannot load the weights, and the reader refuses the checkpoint.

The tests compare its logits with Hugging Face's; ``edge/gpu_check.py`` runs it in bf16 on CUDA.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

QUANT_BITS = {"W8A16": 8, "W4A16": 4}
LINEARS = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")
# TensorRT-LLM's own lists (NVIDIA/TensorRT-LLM, docs/deploy-edge.md cites files and commits): the modules
# quantize_layers leaves alone when quantization.exclude_modules is empty, and the substrings that make
# weight_only_quantize_dict quantize a tensor (its own default exclusion, *shared_expert_gate.weight, names
# nothing in a Llama).
GRAPH_DEFAULT_EXCLUDED = ("*lm_head", "*router", "*vocab_embedding", "*position_embedding", "*block_embedding",
                          "*shared_expert_gate", "*fused_a")
QUANT_WEIGHTS = ("qkv.weight", "dense.weight", "fc.weight", "proj.weight", "gate.weight")
QUANTIZABLE_MODULES = ("lm_head", "transformer.vocab_embedding")  # besides the linears: a Linear and an Embedding


def weight_only_roundtrip(weight, bits: int):
    """``weight`` (out, in) quantized per output channel to ``bits`` and dequantized (float32), as TensorRT-LLM's
    ``symmetric_quantize`` does it: in float32 the scale is max|w| / 2^(bits-1), the code round(w / scale) with
    halves away from zero (C's ``round``), clamped to [-2^(bits-1), 2^(bits-1) - 1]; the scale is stored in the
    weight's dtype, and the kernel multiplies the code by that stored scale."""
    import torch

    w = weight.float()
    scale = w.abs().amax(dim=1, keepdim=True) * (1.0 / (1 << (bits - 1)))
    x = w / torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = torch.round(x)  # halves to even; C rounds them away from zero
    codes = torch.where((x - x.trunc()).abs() == 0.5, x.trunc() + x.sign(), codes)
    codes = torch.clamp(codes, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return codes * scale.to(weight.dtype).float()


class CheckpointReader:
    """Run a TensorRT-LLM ``LlamaForCausalLM`` checkpoint in torch.

    Args:
        folder: the checkpoint folder (``config.json``, ``rank0.safetensors``).
        dtype: the activation dtype (float32 for parity checks, bfloat16 on CUDA).
        device: where to run.
        quantize: apply ``quant_algo`` (weight-only) as ``trtllm-build`` would; False reads the stored weights.
        quantization: a ``quantization`` section to read the weights under instead of the checkpoint's (what the
            build would compute with other ``exclude_modules``; ``edge.trtllm_sensitivity`` tries sets this way).

    Raises:
        ValueError: a checkpoint this reader does not cover (more than one rank, another architecture, ...), or
            one ``trtllm-build`` could not load (``exclude_modules`` that names a module but not its weight).
    """

    def __init__(self, folder: Path | str, dtype=None, device: str = "cpu", quantize: bool = True,
                 quantization: dict | None = None):
        import torch
        from safetensors.torch import load_file

        folder = Path(folder)
        self.config = json.loads((folder / "config.json").read_text())
        if quantization is not None:
            self.config["quantization"] = dict(quantization)
        self.check_config(self.config)
        self.dtype = dtype or torch.float32
        self.device = device
        raw = load_file(str(folder / "rank0.safetensors"))
        bits = QUANT_BITS.get(self.config["quantization"].get("quant_algo")) if quantize else None
        self.weights = {}
        for name, tensor in raw.items():
            if bits and self.quantized(name):
                tensor = weight_only_roundtrip(tensor, bits)
            self.weights[name] = tensor.to(device=device, dtype=self.dtype)
        c = self.config
        half = c["head_size"] // 2
        self.inv_freq = 1.0 / (c["rotary_base"] ** (torch.arange(0, half, device=device, dtype=torch.float32) / half))

    def quantized(self, name: str) -> bool:
        """Whether ``trtllm-build`` quantizes the weight ``name`` (under ``quant_algo`` W8A16/W4A16).

        Raises:
            ValueError: the graph and the weights disagree (see the module docstring): the build would fail.
        """
        module, leaf = name.rsplit(".", 1)
        if leaf != "weight":
            return False
        excluded = self.config["quantization"].get("exclude_modules") or []
        quantizable = module in QUANTIZABLE_MODULES or any(module.endswith(f".{kind}") for kind in LINEARS)
        in_graph = quantizable and not any(fnmatch.fnmatchcase(module, p) for p in excluded or GRAPH_DEFAULT_EXCLUDED)
        in_weights = any(w in name for w in QUANT_WEIGHTS) and not any(fnmatch.fnmatchcase(name, p) for p in excluded)
        if in_graph != in_weights:
            raise ValueError(f"trtllm-build could not load {name}: quantization.exclude_modules {excluded} makes "
                             f"{module} {'a weight-only' if in_graph else 'an unquantized'} module but leaves its "
                             f"weight {'unquantized' if in_graph else 'quantized'}")
        return in_graph

    @staticmethod
    def check_config(c: dict) -> None:
        if c.get("architecture") != "LlamaForCausalLM":
            raise ValueError(f"not a LlamaForCausalLM checkpoint: {c.get('architecture')}")
        mapping = c.get("mapping", {})
        if mapping.get("world_size", 1) != 1:
            raise ValueError("only single-rank checkpoints are read")
        if c.get("position_embedding_type") != "rope_gpt_neox" or c.get("rotary_scaling"):
            raise ValueError("only unscaled rope_gpt_neox is read")
        if c.get("hidden_act") != "silu":
            raise ValueError(f"activation {c.get('hidden_act')} is not read")

    def rms_norm(self, x, name: str):
        import torch

        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.config["norm_epsilon"])
        return (x32 * self.weights[name].float()).to(self.dtype)

    def rope(self, x, positions):
        """Rotate-half RoPE (GPT-NeoX style) on ``x`` (batch, heads, tokens, head_size)."""
        import torch

        angles = positions.float()[:, None] * self.inv_freq[None, :]
        cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(x.dtype)
        sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(x.dtype)
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-second, first], dim=-1) * sin

    def attention(self, x, layer: int, positions, cache: list | None):
        import torch

        c, w = self.config, self.weights
        prefix = f"transformer.layers.{layer}.attention."
        batch, tokens, _ = x.shape
        heads, kv_heads, size = c["num_attention_heads"], c["num_key_value_heads"], c["head_size"]
        qkv = x @ w[prefix + "qkv.weight"].T
        q, k, v = qkv.split([heads * size, kv_heads * size, kv_heads * size], dim=-1)
        q = self.rope(q.view(batch, tokens, heads, size).transpose(1, 2), positions)
        k = self.rope(k.view(batch, tokens, kv_heads, size).transpose(1, 2), positions)
        v = v.view(batch, tokens, kv_heads, size).transpose(1, 2)
        if cache is not None:
            if len(cache) > layer:
                k = torch.cat([cache[layer][0], k], dim=2)
                v = torch.cat([cache[layer][1], v], dim=2)
                cache[layer] = (k, v)
            else:
                cache.append((k, v))
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
        past = k.shape[2] - tokens
        mask = torch.ones(tokens, k.shape[2], dtype=torch.bool, device=x.device).tril(diagonal=past)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(batch, tokens, heads * size) @ w[prefix + "dense.weight"].T

    def mlp(self, x, layer: int):
        import torch

        w, prefix = self.weights, f"transformer.layers.{layer}.mlp."
        inter = torch.nn.functional.silu(x @ w[prefix + "fc.weight"].T) * (x @ w[prefix + "gate.weight"].T)
        return inter @ w[prefix + "proj.weight"].T

    def forward(self, input_ids, cache: list | None = None):
        """Logits (batch, tokens, vocab) in ``logits_dtype`` for ``input_ids`` (batch, tokens).

        Args:
            input_ids: token ids, a torch tensor of int64.
            cache: a list this call extends with each layer's keys and values (pass the same list to decode the
                next tokens); None for a plain forward pass.
        """
        import torch

        past = cache[0][0].shape[2] if cache else 0
        positions = torch.arange(past, past + input_ids.shape[1], device=self.device)
        x = self.weights["transformer.vocab_embedding.weight"][input_ids.to(self.device)]
        for layer in range(self.config["num_hidden_layers"]):
            prefix = f"transformer.layers.{layer}."
            x = x + self.attention(self.rms_norm(x, prefix + "input_layernorm.weight"), layer, positions, cache)
            x = x + self.mlp(self.rms_norm(x, prefix + "post_layernorm.weight"), layer)
        x = self.rms_norm(x, "transformer.ln_f.weight")
        head = self.weights.get("lm_head.weight", self.weights["transformer.vocab_embedding.weight"])
        logits_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
            self.config.get("logits_dtype", "float32")]
        return (x @ head.T).to(logits_dtype)

    __call__ = forward

    def weight_bytes(self, per_token: bool = True) -> int:
        """Bytes of the engine's weights: the checkpoint dtype, or int8/int4 codes plus one scale per output channel
        where ``trtllm-build`` quantizes. ``per_token``: what one decode step reads (one embedding row, not the table).
        """
        bits = QUANT_BITS.get(self.config["quantization"].get("quant_algo"))
        size = {"float32": 4, "float16": 2, "bfloat16": 2}[self.config["dtype"]]
        total = 0
        for name, tensor in self.weights.items():
            if name == "transformer.vocab_embedding.weight" and per_token:
                total += tensor.shape[1] * size
            elif bits and self.quantized(name):
                total += tensor.numel() * bits // 8 + tensor.shape[0] * size
            else:
                total += tensor.numel() * size
        return total

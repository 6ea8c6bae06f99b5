"""The int4 recipe of `prism export edge`: what the command line selects and what the builder makes of it.

A tiny random Llama (2 layers, 64 wide, tied embeddings as SmolLM2) goes through onnxruntime-genai's real
model builder with the default recipe (seconds); the graph must carry the int8 LM head shared with the
embedding, int8 sensitive projections, an int4 rest and last-token logits, and it must generate.
"""

import collections

import numpy as np
import onnx
import pytest

from edge.export import (
    DEFAULT_INT4_RECIPE,
    INT4_RECIPES,
    LLM_OPTIONS,
    build_genai_model,
    llm_options_from_args,
    parse_args,
)
from ray_app.errors import InputError
from tests.edge.test_trtllm import tiny_llama


def test_the_default_int4_recipe_is_what_the_command_and_the_cache_use(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps the help at hyphens otherwise
    assert LLM_OPTIONS["int4"] == INT4_RECIPES[DEFAULT_INT4_RECIPE]
    assert llm_options_from_args(parse_args([])) == INT4_RECIPES[DEFAULT_INT4_RECIPE]
    assert llm_options_from_args(parse_args(["--int4-recipe", "fp32-head"])) == {"nodes_to_exclude": "/lm_head/MatMul"}
    assert llm_options_from_args(parse_args(["--variant", "int8"])) is None
    assert llm_options_from_args(parse_args(["--llm-option", "block_size=16"])) == {"block_size": "16"}
    with pytest.raises(InputError, match="KEY=VALUE"):
        llm_options_from_args(parse_args(["--llm-option", "block_size"]))
    with pytest.raises(SystemExit):
        parse_args(["--int4-recipe", "int3"])
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in INT4_RECIPES) and f"default {DEFAULT_INT4_RECIPE}" in help_text


def save_tiny_tokenizer(folder) -> None:
    """A word-level tokenizer over the tiny model's 512 ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 512)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)


def test_the_default_int4_recipe_builds_an_int8_head_and_sensitive_layers(tmp_path):
    import onnxruntime_genai as og

    source = tmp_path / "tiny"
    tiny_llama(intermediate_size=256).save_pretrained(source)  # k-quant takes K in multiples of 64
    save_tiny_tokenizer(source)  # the builder copies the tokenizer into its output
    out = build_genai_model(source, tmp_path / "int4", "int4", INT4_RECIPES[DEFAULT_INT4_RECIPE])

    graph = onnx.load(out / "model.onnx", load_external_data=False).graph
    bits = {n.name: {a.name: a.i for a in n.attribute}.get("bits") for n in graph.node
            if n.op_type in ("MatMulNBits", "GatherBlockQuantized", "MatMul", "Gather")}
    assert bits["/lm_head/MatMul_Q8"] == 8 and "/lm_head/MatMul" not in bits  # no float LM head
    assert bits["/model/embed_tokens/GatherBlockQuantized"] == 8  # the tied table, stored once
    # llama.cpp's sensitive set, as the builder picks it: in this 2-layer model, layer 0's qkv and down
    assert bits["/model/layers.0/attn/qkv_proj/MatMul_Q8"] == 8 and bits["/model/layers.0/mlp/down_proj/MatMul_Q8"] == 8
    assert bits["/model/layers.0/mlp/gate_proj/MatMul_Q4"] == 4 and bits["/model/layers.1/mlp/down_proj/MatMul_Q4"] == 4
    assert collections.Counter(b for b in bits.values() if b) == {4: 8, 8: 4}
    logits = next(o for o in graph.output if o.name == "logits")
    assert [d.dim_value or d.dim_param for d in logits.type.tensor_type.shape.dim][1:] == [1, 512]  # pruned prefill

    config = og.Config(str(out))
    config.clear_providers()
    model = og.Model(config)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=12, batch_size=1)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray([[5, 17, 42, 99]], dtype=np.int32))
    assert np.asarray(generator.get_logits()).reshape(-1).shape == (512,)
    while not generator.is_done():
        generator.generate_next_token()
    assert len(generator.get_sequence(0)) == 12

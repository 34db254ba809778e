"""The models file: which models to serve, on which backend, with what limits.

``llmspool.toml`` (or the file named by ``LLMSPOOL_CONFIG``) holds one ``[[models]]`` table per
model; ``[models.options]`` goes to the backend, which validates it with its own options model
(:func:`llmspool.consumers.backends.check_options`, called by the command line before it starts
anything, so this layer needs no backend). Unknown keys and bad values are refused at start with
a message naming the key. With no file, :func:`default_config` serves gemma-3-270m on llama.cpp.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmspool.shared.errors import ConfigError, ModelNotFound

#: A parsed TOML table, as tomllib types it; validated into the models below.
Table = dict[str, Any]

DEFAULT_MODEL = "gemma-3-270m"
DEFAULT_CONFIG_FILE = Path("llmspool.toml")

Capability = Literal["chat", "completion", "embedding"]
ModelName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:/@-]+$")]


class Autoscale(BaseModel):
    """How a model's worker pool follows its queue (``[models.autoscale]``); see
    docs/control-plane.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_per_worker: int | None = Field(
        default=None, ge=1, description="Backlog one worker should carry; unset: max_concurrency."
    )
    scale_down_window: float = Field(
        default=30.0, ge=0, description="Seconds the backlog must stay low before scaling down."
    )
    idle_window: float = Field(
        default=60.0, ge=0, description="Seconds with an empty backlog before scaling to zero."
    )
    tick: float = Field(
        default=0.5, gt=0, le=1.0, description="Seconds between two looks at the queue."
    )


class ModelConfig(BaseModel):
    """One served model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ModelName
    backend: str
    max_concurrency: int = Field(default=1, ge=1, le=4096)
    min_workers: int = Field(default=1, ge=0)
    max_workers: int = Field(default=1, ge=1)
    #: Context length the API checks ``max_tokens`` against; unset: the engine's (its workers
    #: report it, and check every prompt against it).
    context_length: int | None = Field(default=None, ge=16)
    #: Tokens a request without ``max_tokens`` may generate; unset: up to the rest of the context.
    default_max_tokens: int | None = Field(default=None, ge=1)
    timeout: float | None = Field(default=None, gt=0)
    queue_limit: int | None = Field(default=None, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    capabilities: tuple[Capability, ...] = ("chat", "completion")
    autoscale: Autoscale = Field(default_factory=Autoscale)
    #: Validated by the backend's own options model (consumers.backends.check_options).
    options: Table = Field(default_factory=dict)

    @property
    def target_per_worker(self) -> int:
        """Backlog one worker carries before another is started."""
        return self.autoscale.target_per_worker or self.max_concurrency

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"min_workers ({self.min_workers}) is above max_workers ({self.max_workers})"
            )
        return self


class Config(BaseModel):
    """The whole models file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[ModelConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Config:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def model(self, name: str) -> ModelConfig:
        for model in self.models:
            if model.name == name:
                return model
        raise ModelNotFound(name)

    def names(self) -> list[str]:
        return [m.name for m in self.models]


def default_config() -> Config:
    """The embedded default: gemma-3-270m (packaged GGUF) on llama.cpp, one worker."""
    return Config(
        models=[
            ModelConfig(
                name=DEFAULT_MODEL,
                backend="llama_cpp",
                capabilities=("chat", "completion", "embedding"),
            )
        ]
    )


def load_config(path: Path | None = None) -> Config:
    """Read the models file at ``path`` (or ./llmspool.toml), or the default when there is none."""
    if path is None:
        if not DEFAULT_CONFIG_FILE.exists():
            return default_config()
        path = DEFAULT_CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read models file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return parse_config(data, source=str(path))


def parse_config(data: Table, source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc, data)}") from None


def _describe(exc: ValidationError, data: Table) -> str:
    problems = []
    for err in exc.errors():
        loc = _location(err["loc"], data)
        problems.append(f"{loc}: {_message(err)}" if loc else _message(err))
    return "; ".join(problems)


def options_error(source: str, model: str, exc: ValidationError) -> ConfigError:
    """The error for a model whose ``[models.options]`` its backend refused, naming each key."""
    problems = "; ".join(
        f"options.{'.'.join(map(str, err['loc']))}: {_message(err)}" for err in exc.errors()
    )
    return ConfigError(f"{source}: models[{model}]: {problems}")


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "value_error":
        return str(err["ctx"]["error"])
    return str(err["msg"])


def _location(loc: tuple[int | str, ...], data: Table) -> str:
    """'models[gemma].options.n_ctx' rather than 'models.0.options.n_ctx'."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int) and i > 0 and loc[i - 1] == "models":
            name = _model_name(data, part)
            parts[-1] = f"models[{name}]"
        else:
            parts.append(str(part))
    return ".".join(parts)


def _model_name(data: Table, index: int) -> str:
    try:
        return str(data["models"][index]["name"])
    except (KeyError, IndexError, TypeError):
        return str(index)

"""Service settings: one typed object, read from ``DGR2_*`` environment variables or ``dgr2 serve`` flags.

Nothing reads the environment anywhere else, so a test can build an app from an explicit
:class:`Settings` without touching global state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dgr2.model.config import DECODERS
from dgr2.model.tokenizer import MAX_HISTORY, MAX_SLOTS
from dgr2.model_store import DEFAULT_MODEL, DEFAULT_ROOT


def parse_models(text: str | list) -> list[str]:
    """``"beauty-gr2,toys-gr2"`` -> ``["beauty-gr2", "toys-gr2"]``; each name once."""
    names = [str(n).strip() for n in (text if isinstance(text, list) else str(text).split(","))]
    names = [n for n in names if n]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"names {', '.join(repeated)} more than once")
    return names


def parse_split(text: str | dict) -> dict[str, float]:
    """``"diffusion=90,ar=10"`` -> ``{"diffusion": 90.0, "ar": 10.0}``; weights need not sum to 100."""
    if isinstance(text, dict):
        pairs = list(text.items())
    else:
        pairs = []
        for part in filter(None, (p.strip() for p in str(text).split(","))):
            name, sep, weight = part.partition("=")
            if not sep:
                raise ValueError(f"A/B split entry {part!r} is not DECODER=WEIGHT")
            pairs.append((name.strip(), weight.strip()))
    split: dict[str, float] = {}
    for name, weight in pairs:
        if name not in DECODERS:
            raise ValueError(f"A/B split names unknown decoder {name!r}; use {', '.join(DECODERS)}")
        try:
            w = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"A/B split weight {weight!r} of {name} is not a number") from None
        if not w >= 0:
            raise ValueError(f"A/B split weight of {name} must be >= 0")
        split[name] = w
    if sum(split.values()) <= 0:
        raise ValueError("A/B split needs at least one positive weight")
    return split


def parse_model_splits(text: str | dict) -> dict[str, dict[str, float]]:
    """``"toys-gr2: ar=100; beauty-gr2: diffusion=90,ar=10"`` -> one split per model named."""
    if isinstance(text, dict):
        return {str(m): parse_split(v) for m, v in text.items()}
    splits: dict[str, dict[str, float]] = {}
    for part in filter(None, (p.strip() for p in str(text).split(";"))):
        model, sep, split = part.partition(":")
        if not sep or not model.strip():
            raise ValueError(f"per-model A/B split entry {part!r} is not MODEL:DECODER=WEIGHT,...")
        if model.strip() in splits:
            raise ValueError(f"per-model A/B split names {model.strip()} more than once")
        splits[model.strip()] = parse_split(split)
    return splits


class Settings(BaseSettings):
    """Every knob of the service; each ``description`` doubles as the ``dgr2 serve --help`` text."""

    model_config = SettingsConfigDict(env_prefix="DGR2_", frozen=True)

    host: str = Field("127.0.0.1", description="interface to listen on (0.0.0.0 inside a container)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    store: Path = Field(DEFAULT_ROOT, description="model store root")
    model: str = Field(DEFAULT_MODEL, description="the default model: the one a request without a model field "
                                             "gets (with --models unset, the only one served)")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="every model name in the store this process serves, comma-separated, "
                                          "e.g. beauty-gr2,toys-gr2 (--model unset: the first is the default; "
                                          "unset: --model alone)")
    ar_ref: str = Field("ar", description="version or alias served by the AR decoder")
    diffusion_ref: str = Field("diffusion", description="version or alias served by the block-diffusion decoder")
    ab_split: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=lambda: {"diffusion": 90.0, "ar": 10.0},
        description="traffic split between decoders, e.g. diffusion=90,ar=10 (every model's, unless "
                    "--ab-splits gives it its own)")
    ab_splits: Annotated[dict[str, dict[str, float]], NoDecode] = Field(
        default_factory=dict,
        description="a model's own split, for models served with a different one, e.g. \"toys-gr2: ar=100\" "
                    "(several: separated by ;)")
    ab_salt: str = Field("dgr2", description="salt of the sticky user -> decoder hash; change it to reshuffle users")
    shadow_rate: float = Field(0.0, ge=0.0, le=1.0,
                               description="fraction of requests the other decoder also ranks, off the "
                                           "critical path, to measure agreement")
    max_batch_size: int = Field(16, ge=1, le=1024, description="most requests decoded in one batch")
    max_wait_ms: float = Field(5.0, ge=0.0, description="longest a request waits for a batch to fill")
    queue_limit: int = Field(256, ge=1, description="requests queued per decoder before new ones get 429")
    max_candidates: int = Field(MAX_SLOTS, ge=1, le=MAX_SLOTS,
                                description=f"most candidates per request (the model names at most {MAX_SLOTS})")
    max_history: int = Field(MAX_HISTORY, ge=0, description="history items kept (the most recent)")
    max_batch_requests: int = Field(32, ge=1, description="most requests in one /v1/rerank/batch call")
    max_body_bytes: int = Field(1 << 20, ge=1, description="largest request body accepted")
    max_new_tokens: int = Field(1024, ge=1, description="decode budget per request (trace + answer)")
    admin_token: SecretStr | None = Field(None, description="bearer token for /admin/*; unset disables /admin "
                                                            "(prefer the env var: flags show in ps)")
    device: str = Field("cpu", description="torch device the models run on, e.g. cpu or cuda")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op CPU threads (unset: torch's "
                                      "default); match the pod's CPU request: see docs/operations.md")
    drain_timeout_s: float = Field(30.0, ge=0.0, description="longest a graceful shutdown waits for "
                                                             "admitted requests")
    log_level: str = Field("info", description="uvicorn log level")

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v: object) -> list[str]:
        return parse_models(v)  # type: ignore[arg-type]

    @model_validator(mode="before")
    @classmethod
    def _default_is_first_listed(cls, data: object) -> object:
        """``--models`` without ``--model``: the first model listed is the default."""
        if isinstance(data, dict) and data.get("models") and not data.get("model"):
            try:
                return {**data, "model": parse_models(data["models"])[0]}
            except (ValueError, IndexError):
                return data  # the field's own validator reports it
        return data

    @model_validator(mode="after")
    def _default_is_served(self) -> Settings:
        if self.models and self.model not in self.models:
            raise ValueError(f"--model {self.model} (DGR2_MODEL, the default model) is not among --models "
                             f"{','.join(self.models)} (DGR2_MODELS): list it there, or leave it unset")
        return self

    @field_validator("ab_split", mode="before")
    @classmethod
    def _split(cls, v: object) -> dict[str, float]:
        return parse_split(v)  # type: ignore[arg-type]

    @field_validator("ab_splits", mode="before")
    @classmethod
    def _splits(cls, v: object) -> dict[str, dict[str, float]]:
        return parse_model_splits(v)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _splits_name_served_models(self) -> Settings:
        stray = [m for m in self.ab_splits if m not in self.served_models]
        if stray:
            raise ValueError(f"--ab-splits (DGR2_AB_SPLITS) names {', '.join(stray)}, not served; served: "
                             f"{', '.join(self.served_models)}")
        return self

    def split_of(self, model: str) -> dict[str, float]:
        """The A/B split of ``model``: its own, else the common one."""
        return self.ab_splits.get(model, self.ab_split)

    @field_validator("admin_token", mode="after")
    @classmethod
    def _empty_token_disables(cls, v: SecretStr | None) -> SecretStr | None:
        return v if v is not None and v.get_secret_value() else None

    @property
    def served_models(self) -> list[str]:
        """The models this process serves, the default first when ``models`` is unset."""
        return list(self.models) or [self.model]

    def ref(self, decoder: str) -> str:
        return self.ar_ref if decoder == "ar" else self.diffusion_ref

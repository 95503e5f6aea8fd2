"""Wire schemas (pydantic v2). Inputs forbid unknown fields so a typo is a 422, not a silent default.

Limits that depend on settings (how many candidates, how many requests per batch) are checked in
:mod:`service.limits` because they answer 413, not 422.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator
from pydantic_core import PydanticCustomError

from dgr2.model.config import DecoderKind

Decoder = DecoderKind


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemObject(_Strict):
    """An item outside (or beyond) the catalog, described by the features the prompt can render."""

    id: str = Field(min_length=1, max_length=256)
    title: str | None = Field(None, max_length=2048)
    brand: str | None = Field(None, max_length=512)
    category: str | None = Field(None, max_length=512)


ItemRef = Annotated[str, Field(min_length=1, max_length=256)] | ItemObject


def item_id(ref: ItemRef) -> str:
    return ref if isinstance(ref, str) else ref.id


class RerankRequest(_Strict):
    user_id: str | None = Field(None, min_length=1, max_length=256, description="sticky A/B assignment")
    history: list[ItemRef] = Field(default_factory=list, description="oldest first; only the most recent "
                                                                      "max_history are used")
    candidates: list[ItemRef] = Field(min_length=1, description="1..max_candidates distinct items")
    top_n: StrictInt | None = Field(None, ge=1, description="return only the best top_n (default all)")
    decoder: Decoder | None = Field(None, description="override the A/B decision")
    return_reasoning: StrictBool = False
    deadline_ms: StrictInt | None = Field(None, ge=1, le=600_000, description="give up (504) after this long")

    @field_validator("candidates")
    @classmethod
    def _distinct(cls, items: list[ItemRef]) -> list[ItemRef]:
        seen: set[str] = set()
        dups = [i for i in map(item_id, items) if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
        if dups:
            raise PydanticCustomError("duplicate_candidates", "candidates must be distinct; repeated: {ids}",
                                      {"ids": ", ".join(sorted(set(dups))[:5])})
        return items


class RerankBatchRequest(_Strict):
    requests: list[RerankRequest] = Field(min_length=1, description="1..max_batch_requests requests")


class RankedItem(_Strict):
    index: int = Field(description="position of the candidate in the request")
    item_id: str
    rank: int = Field(description="1 = best")
    relevance_score: float = Field(description="the model's confidence in the item at this rank, in [0, 1]; "
                                   "never rises from one rank to the next (docs/api.md)")


class Validity(_Strict):
    valid_as_decoded: bool
    repaired: bool
    duplicates: int
    missing: int
    out_of_set: int
    malformed: bool


class Usage(_Strict):
    prompt_tokens: int
    generated_tokens: int
    forward_passes: int


class Timing(_Strict):
    queue_ms: float
    decode_ms: float
    total_ms: float


class RerankResponse(_Strict):
    id: str
    model: str
    model_version: str
    decoder: Decoder
    results: list[RankedItem]
    reasoning: str | None = Field(None, description="present when return_reasoning was true")
    validity: Validity
    usage: Usage
    timing: Timing
    unknown_items: list[str]


class ErrorBody(_Strict):
    message: str
    type: str
    param: str | None = None
    code: str


class ErrorResponse(_Strict):
    error: ErrorBody


class BatchItem(_Strict):
    """One request of a batch: ``status`` 200 with ``response``, or an error status with ``error``."""

    status: int
    response: RerankResponse | None = None
    error: ErrorBody | None = None


class RerankBatchResponse(_Strict):
    responses: list[BatchItem]


class DecoderInfo(_Strict):
    decoder: Decoder
    ref: str
    version: str
    stage: str | None
    parameters: int
    block_size: int
    threshold: float
    answer_threshold: float | None = Field(None, description="threshold inside the answer (null: threshold)")
    max_new_tokens: int


class ModelsResponse(_Strict):
    model: str
    ready: bool
    ab_split: dict[str, float]
    shadow_rate: float
    decoders: list[DecoderInfo]


class Status(_Strict):
    status: str
    versions: dict[str, str] = Field(default_factory=dict)


class ReloadRequest(_Strict):
    ar_ref: str | None = Field(None, description="version or alias for AR (default: the configured one)")
    diffusion_ref: str | None = Field(None, description="version or alias for diffusion (default: configured)")


class ReloadResponse(_Strict):
    model: str
    previous: dict[str, str]
    current: dict[str, str]
    reload_ms: float

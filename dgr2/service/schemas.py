"""Wire schemas (pydantic v2). Inputs forbid unknown fields so a typo is a 422, not a silent default.

Limits that depend on settings (how many candidates, how many requests per batch) are checked in
:mod:`service.limits` because they answer 413, not 422.
"""

from __future__ import annotations

from typing import Annotated, Literal

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


ModelName = Annotated[str, Field(min_length=1, max_length=256)]


class RerankRequest(_Strict):
    model: ModelName | None = Field(None, description="a model GET /v1/models lists (default: the default model)")
    user_id: str | None = Field(None, min_length=1, max_length=256, description="sticky A/B assignment")
    history: list[ItemRef] = Field(default_factory=list, description="oldest first; only the most recent "
                                                                      "max_history are used")
    candidates: list[ItemRef] = Field(min_length=1, description="1..max_candidates distinct items")
    top_n: StrictInt | None = Field(None, ge=1, description="return only the best top_n (default all)")
    decoder: Decoder | None = Field(None, description="override the A/B decision")
    return_reasoning: StrictBool = Field(False, description="include the decoded trace, as text (reasoning) "
                                                           "and read into entries (reasoning_steps)")
    return_passes: StrictBool = Field(False, description="include what each forward pass decided (passes)")
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


class Evidence(_Strict):
    relation: Literal["brand", "category", "co_occurrence"] = Field(
        description="shares a brand / a leaf category with the history item, or co-occurs with it in other "
                    "users' training sequences")
    history_recency: int = Field(description="which history item: 1 = the most recent")
    history_item_id: str | None = Field(description="that history item's id; null when the trace names a "
                                                    "position the request's history does not have")
    shared_windows_min: int | None = Field(None, description="co_occurrence under prompt v4: the fewest "
                                                             "training windows the two share")
    shared_windows_max: int | None = Field(None, description="... and the most (null: no upper bound)")


class ReasoningStep(_Strict):
    """One entry of the decoded trace: the model's assessment of one candidate."""

    index: int = Field(description="the candidate's position in the request (the trace's <cK> is index K-1)")
    item_id: str | None = Field(description="the candidate's id; null when the trace names a candidate the "
                                            "request does not have")
    evidence: list[Evidence]
    strength: int | None = Field(description="the strength the model gave it, 0..9; null when it wrote none")
    complete: bool = Field(description="the entry has the trace's shape: evidence, a strength, its slot again")


class Passes(_Strict):
    block_size: int = Field(description="positions one pass may decide together: the diffusion block, 1 for AR")
    positions: list[list[int]] = Field(description="positions[p]: the output positions forward pass p decided, "
                                       "ascending (pass 0 is the prefill); one list per usage.forward_passes")
    tokens: list[str] = Field(description="the decoded output, one token per position "
                                          "(usage.generated_tokens of them)")


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
    reasoning_steps: list[ReasoningStep] | None = Field(None, description="the trace read into entries; present "
                                                        "when return_reasoning was true")
    passes: Passes | None = Field(None, description="present when return_passes was true")
    validity: Validity
    usage: Usage
    timing: Timing
    unknown_items: list[str]


class ExampleRequest(_Strict):
    """A re-rank request drawn from a served model's catalog (``POST /v1/rerank`` accepts it as is)."""

    model: str = Field(description="the model whose catalog it was drawn from")
    history: list[str]
    candidates: list[str]


MAX_LOOKUP = 256


class ItemsRequest(_Strict):
    ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=MAX_LOOKUP, description=f"1..{MAX_LOOKUP} item ids")
    model: ModelName | None = Field(None, description="whose catalog (default: the default model)")


class ItemInfo(_Strict):
    id: str
    known: bool = Field(description="the model's catalog has the item")
    title: str | None = None
    brand: str | None = None
    category: str | None = Field(None, description="leaf category")


class ItemsResponse(_Strict):
    items: list[ItemInfo] = Field(description="one per id asked for, in the same order")


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
    catalog_items: int = Field(description="items in the checkpoint's catalog")
    block_size: int
    threshold: float
    answer_threshold: float | None = Field(None, description="threshold inside the answer (null: threshold)")
    max_new_tokens: int


class ModelInfo(_Strict):
    model: str
    default: bool = Field(description="requests that name no model get this one")
    versions: list[str] | None = Field(description="every version of the model in the store (what a reload can "
                                                   "name); null: the store could not be read (see the server log)")
    aliases: dict[str, str] | None = Field(description="alias -> version in the store; null: as for versions")
    decoders: list[DecoderInfo] = Field(description="what each decoder serves now")
    ab_split: dict[str, float] = Field(description="decoder -> share of this model's routed traffic")


class ModelsResponse(_Strict):
    model: str = Field(description="the default model; ab_split, shadow_rate and decoders below describe it")
    ready: bool
    ab_split: dict[str, float] = Field(description="decoder -> share of the default model's routed traffic "
                                                   "(each model's own: models[].ab_split)")
    shadow_rate: float
    decoders: list[DecoderInfo]
    models: list[ModelInfo] = Field(description="every model served, in the configured order")


class Status(_Strict):
    status: str
    versions: dict[str, str] = Field(default_factory=dict, description="the default model's decoder -> version")
    models: dict[str, dict[str, str]] | None = Field(None, description="every model's decoder -> version")


class ReloadRequest(_Strict):
    model: ModelName | None = Field(None, description="the model to reload (default: the default model)")
    ar_ref: str | None = Field(None, description="version or alias for AR (default: the configured one)")
    diffusion_ref: str | None = Field(None, description="version or alias for diffusion (default: configured)")


class ReloadResponse(_Strict):
    model: str
    previous: dict[str, str]
    current: dict[str, str]
    reload_ms: float

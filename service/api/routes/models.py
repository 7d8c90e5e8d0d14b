"""GET /v1/models and GET /v1/models/{name}/tradeoff (calibrated quality merged with live latency)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from service.api.context import AppContext, Context
from service.api.latency import Percentiles
from service.api.planning import find_model
from service.api.schemas import (
    ErrorResponse,
    FrontierPoint,
    LatencyStats,
    ModelCard,
    ModelList,
    TradeoffResponse,
    TradeoffRow,
)
from service.api.selection import calibrated_points, frontier_points
from service.backends.base import SAMPLER_NAMES, ModelInfo
from service.diffusion.config import VarianceType
from service.quality.sampler_kinds import KIND_NAMES, SAMPLER_KINDS

router = APIRouter(prefix="/v1/models", tags=["models"])
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "Unknown model"}}


@router.get("")
async def list_models(context: Context) -> ModelList:
    """The served models; the first is the default of POST /generate."""
    return ModelList(models=[_card(info, context) for info in context.models.values()])


@router.get("/{name}", responses=_NOT_FOUND)
async def get_model(name: str, context: Context) -> ModelCard:
    return _card(find_model(context, name, field="name"), context)


@router.get("/{name}/tradeoff", responses=_NOT_FOUND)
async def get_tradeoff(name: str, context: Context) -> TradeoffResponse:
    """Calibrated quality per (sampler, K), each with the live end-to-end latency per image at that K."""
    info = find_model(context, name, field="name")
    live = {label: _stats(p) for label, p in context.metrics.tracker(info.name).percentiles().items()}
    table = info.tradeoff
    points = [] if table is None else sorted(table.points, key=lambda p: (p.sampler, p.steps))
    frontier = {(p.sampler, p.steps) for p in frontier_points(info)}
    rows = [
        TradeoffRow(
            **{k: v for k, v in asdict(p).items() if k in TradeoffRow.model_fields},
            request=_request_fields(p.sampler),
            on_frontier=(p.sampler, p.steps) in frontier,
            live_latency=live.get(context.metrics.k_label(p.steps)),
        )
        for p in points
    ]
    return TradeoffResponse(
        model=info.name,
        calibrated=table is not None,
        machine=None if table is None else table.machine,
        feature_extractor=None if table is None else table.feature_extractor,
        reference_set=None if table is None else table.reference_set,
        real_vs_real_fid=None if table is None else {k: float(v) for k, v in table.real_vs_real_fid.items()},
        points=rows,
        live_latency=live,
    )


def _card(info: ModelInfo, context: AppContext) -> ModelCard:
    settings = context.settings
    return ModelCard(
        name=info.name,
        image_size=info.image_size,
        image_channels=info.image_channels,
        num_classes=info.num_classes,
        class_names=list(info.class_names),
        num_timesteps=info.num_timesteps,
        learn_sigma=info.learn_sigma,
        samplers=list(SAMPLER_NAMES),
        variances=[v.value for v in VarianceType if v is not VarianceType.ANALYTIC or info.has_gamma],
        default_steps=min(settings.default_steps, info.num_timesteps),
        max_num_images=settings.max_num_images,
        calibrated_steps={
            kind: steps for kind in KIND_NAMES if (steps := [p.steps for p in calibrated_points(info, kind)])
        },
        frontier=[FrontierPoint(sampler=p.sampler, steps=p.steps, fid=p.fid) for p in frontier_points(info)],
    )


def _request_fields(kind_name: str) -> dict[str, str]:
    """What a request sets to run a variant: {"sampler": "ddpm", "variance": "analytic"}."""
    kind = SAMPLER_KINDS.get(kind_name)
    if kind is None:  # a variant of an older or newer server: named, not runnable here
        return {}
    fields = {"sampler": kind.sampler}
    if kind.request_variance is not None:
        fields["variance"] = kind.request_variance.value
    return fields


def _stats(p: Percentiles) -> LatencyStats:
    return LatencyStats(count=p.count, p50_ms=p.p50 * 1000, p90_ms=p.p90 * 1000, p99_ms=p.p99 * 1000)

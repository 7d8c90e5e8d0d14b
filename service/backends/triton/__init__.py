"""The Triton backend: generations run on one or more Triton Inference Servers (DDPM_BACKEND=triton,
DDPM_TRITON_URLS=host:8001,... and/or DDPM_TRITON_DNS=service:8001) that serve model_store/ with
service.triton_worker.

- Models (models): the gateway reads each served model's model.json and tradeoff.json from
  DDPM_MODEL_DIRS (the same model_store folders the workers load; the weights are not read). A model's
  Triton name is its folder's name; the API uses its manifest's name, as with the embedded backend.
- Transport (connection, protocol): one gRPC stream per worker (tritonclient); responses are matched by
  request id.
- Membership (fleet, discovery): the static URLs, plus the records of a DNS name (a Kubernetes headless
  Service) re-resolved every few seconds; a new address is health-checked before it gets work, one gone
  from DNS drains (no new requests, its own finish) and is then forgotten.
- Routing (routing): least outstanding row-steps among the live workers that have the model ready.
  Health (health): every second, server live + model ready per worker; a worker is ejected after two
  failed checks, or at once when its stream breaks or it answers UNAVAILABLE.
- Failover (backend): the requests of an ejected worker are sent again to another live one, each at most
  once (their images do not change: each image's noise comes from its seed); a worker's queue_full also
  tries the others. With no live worker, `submit` raises EngineDead (503 with Retry-After).
- Deadlines: the worker enforces a request's deadline; the gateway also fails it shortly after, so a
  stalled worker cannot hold a request past its deadline.

Metrics: per-request figures (latency, queue wait per K, images by status) are observed here through
the same EngineObserver as the embedded engine's (generation); per-iteration figures (step time,
occupancy, queue depth, memory) are published by each worker on Triton's metrics port under the same
names (service.triton_worker.metrics). So `loads()` and `memory_bytes()` are empty here, and
latency-budget selection uses calibrated seconds per image plus nothing for queueing (the gateway cannot
see the workers' queues).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.backends.triton.backend import TritonBackend

__all__ = ["TritonBackend"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that the workers, which import only .protocol, do not load the gateway.
    if name == "TritonBackend":
        from service.backends.triton.backend import TritonBackend

        return TritonBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

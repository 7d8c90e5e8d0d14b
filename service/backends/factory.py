"""The backend a deployment names (DDPM_BACKEND): the in-process engine, or Triton workers over gRPC.

Takes plain values rather than the API's Settings, so that backends do not import the HTTP layer.
Each backend module is imported only when chosen: the embedded one imports torch's engine, the Triton
one needs the optional tritonclient (imported when it starts).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from service.backends.base import Backend, EngineSettings, ObserverFactory

BackendKind = Literal["embedded", "triton"]


def make_backend(
    kind: BackendKind,
    model_dirs: Sequence[Path],
    *,
    engine_settings: EngineSettings,
    device: str = "auto",
    triton_urls: Sequence[str] = (),
    triton_dns: str | None = None,
    triton_nameserver: str | None = None,
    triton_resolve_interval_s: float = 5.0,
    observer_for: ObserverFactory | None = None,
) -> Backend:
    if kind == "triton":
        from service.backends.triton import TritonBackend
        from service.backends.triton.discovery import DnsMembers

        dns = None if triton_dns is None else DnsMembers(triton_dns, triton_nameserver)
        return TritonBackend(
            triton_urls,
            model_dirs,
            observer_for=observer_for,
            dns=dns,
            resolve_interval=triton_resolve_interval_s,
        )
    from service.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(model_dirs, engine_settings, device=device, observer_for=observer_for)

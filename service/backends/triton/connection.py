"""One Triton worker's gRPC client: a bidirectional stream for generations, unary calls for health.

Imports tritonclient, so only the Triton backend imports this module (the extra 'triton' installs it).
`open`, `check` and `close` block on the network: the backend runs them in threads. `send` only queues a
message on the stream. Stream callbacks arrive on tritonclient's thread as `StreamEvent`s, tagged with
the stream's epoch, so that a late event of a stream that has since been replaced is recognisable.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from service.backends.triton.protocol import INPUTS, StreamEvent, WireRequest

# Triton prefixes some request errors with the request's id; tritonclient gives no other way to match them.
_REQUEST_ID = re.compile(r"\[request id: ([^\]]+)\]")


class TritonConnection:
    def __init__(self, url: str, on_event: Callable[[StreamEvent], None]) -> None:
        self.url = url
        self.on_event = on_event
        self.epoch = 0
        self._lock = threading.Lock()  # open/close run in threads; never two at once
        self._client: Any = None
        self._health: Any = None

    def open(self) -> None:
        """(Re)open the stream with a fresh client (a failed stream cannot be restarted)."""
        with self._lock:
            # The new epoch first: closing the old stream makes its callback report a (local) cancel,
            # which the event loop may handle before this returns; it must already read as stale.
            self.epoch += 1
            self._close_locked()
            client = grpcclient.InferenceServerClient(self.url)
            epoch = self.epoch
            client.start_stream(callback=lambda result, error: self._callback(epoch, result, error))
            self._client = client

    def check(self, models: Iterable[str], timeout: float) -> set[str]:
        """The models READY on this worker; raises when the server is unreachable or not live."""
        if self._health is None:
            self._health = grpcclient.InferenceServerClient(self.url)
        if not self._health.is_server_live(client_timeout=timeout):
            raise ConnectionError(f"Triton at {self.url} is not live")
        return {m for m in models if self._health.is_model_ready(m, client_timeout=timeout)}

    def send(self, model: str, wire: WireRequest, request_id: str) -> None:
        client = self._client
        if client is None:
            raise ConnectionError(f"no open stream to Triton at {self.url}")
        inputs = []
        for name, array in wire.tensors().items():
            tensor = grpcclient.InferInput(name, list(array.shape), INPUTS[name][0])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        client.async_stream_infer(model, inputs, request_id=request_id)

    def close(self) -> None:
        with self._lock:
            self._close_locked()
            if self._health is not None:
                self._health.close()
                self._health = None

    def _close_locked(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.stop_stream(cancel_requests=True)
                client.close()
            except Exception:  # closing a broken stream may fail too; the stream is gone either way
                pass

    def _callback(self, epoch: int, result: Any, error: Exception | None) -> None:
        if error is None:
            response = result.get_response()
            final = response.parameters.get("triton_final_response")
            is_final = True if final is None else bool(final.bool_param)
            self.on_event(StreamEvent(self.url, epoch, response.id or None, result, is_final))
            return
        # tritonclient reports a failed stream with the gRPC status; an error response has none.
        broken = not isinstance(error, InferenceServerException) or error.status() is not None
        match = _REQUEST_ID.search(str(error))
        request_id = match.group(1) if match and not broken else None
        self.on_event(StreamEvent(self.url, epoch, request_id, None, True, error, broken))

"""Where a generation runs: in this process (embedded: the engine pool) or on Triton Inference Server
workers reached over gRPC (triton/: the gateway's client). The code that runs inside Triton is
service.triton_worker."""

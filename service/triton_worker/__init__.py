"""The code that runs inside tritonserver, and the launcher that starts one.

- model: TritonPythonModel, the decoupled Python-backend model that runs our continuous-batching engine
  for one model_store folder (each folder's 1/model.py is a shim importing it);
- metrics: the engine's per-iteration metrics, published through Triton's custom-metrics API;
- repo: makes a model_store folder a Triton model (config.pbtxt + the 1/model.py shim);
- launcher: starts a real tritonserver from the nvidia-pytriton wheel on a model repository (tests,
  benchmarks, local development; not needed in NVIDIA's Triton container).

The wire format shared with the gateway is service.backends.triton.protocol. Nothing here is imported by
the gateway: the gateway reaches these modules only through Triton.
"""

"""Triton's entry point for this model folder: the engine model of the installed ddpm-serve."""

from service.triton_worker.model import TritonPythonModel  # noqa: F401

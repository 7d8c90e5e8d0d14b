"""Triton's entry point for this model folder: the engine model of the installed ddpm-serve."""

from service.backends.triton_worker import TritonPythonModel  # noqa: F401

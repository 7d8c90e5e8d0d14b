"""ddpm-serve: an inference service for Improved DDPM diffusion models."""

__version__ = "0.1.0"

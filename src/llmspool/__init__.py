"""llmspool: one OpenAI-compatible API over many models and engines, every request through Redis."""

__version__ = "0.1.0"

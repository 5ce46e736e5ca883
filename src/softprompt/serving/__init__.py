"""The HTTP server (`softprompt serve`): FastAPI routers over a Service that owns a Predictor and its engine.
Needs the `serve` extra: pip install 'softprompt[serve]'."""

try:
    import fastapi  # noqa: F401
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("softprompt serve needs FastAPI and uvicorn: pip install 'softprompt[serve]'") from error

from .app import create_app, serve

__all__ = ["create_app", "serve"]

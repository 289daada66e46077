"""LEVI Serve: the FastAPI app, micro-batching scorer, activation cache, drift and metrics."""

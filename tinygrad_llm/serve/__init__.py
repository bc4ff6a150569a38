"""Serving: an OpenAI-compatible HTTP server (Starlette on uvicorn) and its chat page."""

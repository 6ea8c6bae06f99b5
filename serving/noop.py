"""A no-op FastAPI app, served two ways to measure Serve's own overhead (``prism bench serve``):
as a Serve deployment and under bare uvicorn (``uvicorn serving.noop:fastapi_app``)."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve

fastapi_app = FastAPI(title="prism-noop")


@fastapi_app.get("/noop")
def noop() -> dict:
    return {"ok": True}


@serve.deployment(name="noop", max_ongoing_requests=200)
@serve.ingress(fastapi_app)
class NoopDeployment:
    """The same route inside Serve: proxy -> router -> replica -> FastAPI."""


app = NoopDeployment.bind()

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


def main(argv: list[str] | None = None) -> None:
    """Serve only the no-op deployment on ``--port`` in a private Ray instance until killed."""
    import argparse
    import signal
    import time

    import ray

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--num-cpus", type=int, default=1)
    args = parser.parse_args(argv)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, namespace="serve-noop")
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(app, name="noop", route_prefix="/")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            time.sleep(0.5)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()

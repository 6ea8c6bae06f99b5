"""Each failure of the service maps to 503 + Retry-After before a response starts and to an in-band error after
(serving/faults.py, the ingress's stream writers); only a bug is a 500. Quick: real exception types from Ray,
Ray Serve and psycopg, no Serve app (tests/serving/test_chaos.py kills real replicas and a real database)."""

import asyncio
import json

import psycopg
import pytest
from psycopg_pool import PoolTimeout
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import BackPressureError

from ray_app.ask.admission import Overloaded
from ray_app.ask.service import AskEvent
from ray_app.errors import InputError
from ray_app.store import StoreError
from serving import faults
from serving.ingress import ask_sse, chat_sse, start_stream


def wrapped(cause: Exception) -> Exception:
    """What a caller of a replica gets: the replica's exception inside a RayTaskError (as Ray raises it)."""
    return RayTaskError("RagDeployment.search", "Traceback ...", cause).as_instanceof_cause()


@pytest.mark.parametrize(("exc", "code"), [
    (BackPressureError(32, 32), "overloaded"),
    (ActorDiedError(), "replica_unavailable"),
    (ActorUnavailableError("the replica's node is unreachable", None), "replica_unavailable"),
    (faults.ReplicaFailed("fusion: a replica failed twice"), "replica_unavailable"),
    (faults.StageTimeout("rag did not answer within 30 s"), "timeout"),
    (psycopg.OperationalError("connection to server failed"), "database_unavailable"),
    (PoolTimeout("couldn't get a connection after 5.00 sec"), "database_unavailable"),
    (StoreError("the database cannot be reached"), "database_unavailable"),
    (wrapped(psycopg.OperationalError("server closed the connection unexpectedly")), "database_unavailable"),
    (wrapped(StoreError("the database cannot be reached")), "database_unavailable"),
    (wrapped(BackPressureError(64, 64)), "overloaded"),
    (Overloaded("too many asks", 2.0), "overloaded"),
])
def test_service_failures_are_503_with_retry_after(exc, code):
    fault = faults.classify(exc, retry_after_s=2.0)
    assert fault is not None and fault.status == 503 and fault.code == code
    assert fault.retry_after_s == 2.0 and fault.message
    assert faults.error_code(exc) == code


def test_a_refusal_after_the_admission_wait_is_overloaded_not_timeout():
    """The gate's own wait ends in a TimeoutError; the Overloaded it raises must be answered as such (the burst
    test saw admitted-looking asks refused with code "timeout" when the refusal carried that context)."""
    from ray_app.ask.admission import AdmissionGate

    async def refused() -> Exception:
        gate = AdmissionGate(max_active=1, max_waiting=1, wait_s=0.05, retry_after_s=2.0)
        async with gate.place():
            try:
                async with gate.place():
                    pass
            except Overloaded as exc:
                return exc
        raise AssertionError("the second ask was not refused")

    exc = asyncio.run(refused())
    assert faults.classify(exc, 2.0).code == "overloaded"
    assert faults.classify(wrapped(exc), 2.0).code == "overloaded"
    try:  # an Overloaded raised while handling any other timeout is still "overloaded"
        try:
            raise TimeoutError("inner")
        except TimeoutError:
            raise Overloaded("full", 2.0)  # noqa: B904
    except Overloaded as raised:
        assert faults.classify(raised, 2.0).code == "overloaded"


@pytest.mark.parametrize("exc", [ValueError("a bug"), KeyError("x"), wrapped(ZeroDivisionError("a bug")),
                                 InputError("k must be between 1 and 20")])
def test_bugs_and_input_errors_are_not_faults(exc):
    assert faults.classify(exc, 2.0) is None


def test_a_replica_failure_is_retried_once_and_a_timeout_cancels():
    async def scenario():
        loop = asyncio.get_running_loop()
        calls = []

        def dies_then_answers():
            future = loop.create_future()
            (future.set_exception(ActorDiedError()) if not calls else future.set_result("answer"))
            calls.append(future)
            return future

        assert await faults.call(dies_then_answers, 5, "rag") == "answer" and len(calls) == 2

        def always_dies():
            future = loop.create_future()
            future.set_exception(ActorDiedError())
            return future

        with pytest.raises(faults.ReplicaFailed):
            await faults.call(always_dies, 5, "rag")
        hung = []

        def never_answers():
            hung.append(loop.create_future())
            return hung[-1]

        with pytest.raises(faults.StageTimeout):
            await faults.call(never_answers, 0.05, "fusion")
        assert hung[0].cancelled()

        def db_down():  # a database failure inside a replica is not the replica's fault: not retried
            future = loop.create_future()
            future.set_exception(wrapped(StoreError("down")))
            calls.append(future)
            return future

        before = len(calls)
        with pytest.raises(StoreError):
            await faults.call(db_down, 5, "rag")
        assert len(calls) == before + 1

    asyncio.run(scenario())


class Pieces:
    """An async iterator of pieces that fails where told (a fusion stream as the ingress sees it)."""

    def __init__(self, pieces, fail_after=None):
        self.pieces, self.fail_after, self.sent, self.cancelled = list(pieces), fail_after, 0, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.fail_after is not None and self.sent == self.fail_after:
            raise ActorDiedError()
        if not self.pieces:
            raise StopAsyncIteration
        self.sent += 1
        return self.pieces.pop(0)

    def cancel(self):
        self.cancelled = True


def test_a_stream_is_retried_only_before_its_first_piece():
    async def collect(streams):
        made = iter(streams)
        return [p async for p in faults.stream(lambda: next(made), 5, "fusion")]

    first, second = Pieces(["a"], fail_after=0), Pieces(["Frogs", " live"])
    assert asyncio.run(collect([first, second])) == ["Frogs", " live"] and first.cancelled
    with pytest.raises(ActorDiedError):  # after a piece has gone out, no retry: the caller reports it in band
        asyncio.run(collect([Pieces(["Frogs", " live"], fail_after=1), Pieces(["x"])]))


async def events(fail: Exception | None, after_tokens: int = 1):
    yield AskEvent("meta", {"id": "a1", "vision": None, "passages": []})
    for i in range(after_tokens):
        yield AskEvent("token", {"text": f"piece{i} "})
    if fail is not None:
        raise fail
    yield AskEvent("done", {"id": "a1", "answer": "piece0", "usage": {"completion_tokens": 1, "total_tokens": 2,
                                                                      "prompt_tokens": 1}})


def sse_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


async def drain(agen) -> str:
    return "".join([part async for part in agen])


def test_a_failure_before_the_first_token_raises_before_the_response_starts():
    async def scenario():
        stream = events(ActorDiedError(), after_tokens=0)
        with pytest.raises(ActorDiedError):
            await start_stream(stream)
        first = await start_stream(events(None, after_tokens=2))
        assert [e.kind for e in first] == ["meta", "token"]

    asyncio.run(scenario())


def test_ask_stream_ends_with_an_in_band_error_after_it_started():
    async def scenario():
        stream = events(ActorDiedError(), after_tokens=2)
        first = await start_stream(stream)
        return sse_events(await drain(ask_sse(first, stream)))

    out = asyncio.run(scenario())
    assert [kind for kind, _ in out] == ["meta", "token", "token", "error"]
    error = out[-1][1]["error"]
    assert error["code"] == "replica_unavailable" and error["retry_after_s"] > 0


def test_chat_stream_ends_with_an_error_chunk_then_done():
    async def scenario(fail):
        stream = events(fail, after_tokens=2)
        first = await start_stream(stream)
        return await drain(chat_sse(first, stream, "prism", 24, include_usage=False))

    text = asyncio.run(scenario(wrapped(psycopg.OperationalError("terminating connection"))))
    chunks = [c.removeprefix("data: ") for c in text.strip().split("\n\n")]
    assert chunks[-1] == "[DONE]"
    error = json.loads(chunks[-2])["error"]
    assert error["code"] == "database_unavailable" and error["type"] == "server_error"
    assert [json.loads(c)["choices"][0]["delta"]["content"] for c in chunks[:2]] == ["piece0 ", "piece1 "]


def test_the_ingress_answers_wrapped_failures_by_cause():
    """Ray's and psycopg's errors reach their own handler (not the catch-all): 503 for the service's failures,
    the cause's own status for a replica's input error, 500 only for a bug."""
    from starlette.requests import Request

    from ray_app.store import StoreInputError
    from serving.ingress import _service_failure

    request = Request({"type": "http", "method": "POST", "path": "/v1/search", "headers": [], "query_string": b""})

    def answer(exc):
        response = asyncio.run(_service_failure(request, exc))
        return response.status_code, json.loads(response.body)["error"]["code"], response.headers.get("retry-after")

    assert answer(wrapped(StoreError("down"))) == (503, "database_unavailable", "2")
    assert answer(psycopg.OperationalError("the connection is lost")) == (503, "database_unavailable", "2")
    assert answer(ActorDiedError())[:2] == (503, "replica_unavailable")
    assert answer(wrapped(StoreInputError("k must be an integer in 1..1000")))[:2] == (422, "invalid_request")
    assert answer(wrapped(ZeroDivisionError("a bug")))[:2] == (500, "internal_error")


def test_real_serve_replica_killed_under_calls_is_retried_and_a_hung_call_times_out():
    """Two replicas of a small deployment in a private Ray: calls in flight on a replica that ``ray.kill`` ends
    are retried on the other (all answered), where bare handle calls lose them; a hung call and a silent stream
    end with StageTimeout."""
    import ray
    from ray import serve

    @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0})
    class Echo:
        async def hello(self, delay: float = 0.0) -> str:
            await asyncio.sleep(delay)
            return serve.get_replica_context().replica_id.unique_id

        async def pieces(self, n: int, delay: float = 0.0):
            await asyncio.sleep(delay)
            for i in range(n):
                yield i

    def kill_one() -> None:
        replica = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                       if a["name"].startswith("SERVE_REPLICA::faults#Echo#"))
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)

    async def scenario(handle) -> dict:
        bare = [handle.hello.remote(2.0) for _ in range(6)]
        await asyncio.sleep(0.8)
        kill_one()
        bare_out = await asyncio.gather(*bare, return_exceptions=True)
        await asyncio.sleep(0.5)
        calls = [asyncio.create_task(faults.call(lambda: handle.hello.remote(2.0), 30, "echo")) for _ in range(6)]
        await asyncio.sleep(0.8)
        kill_one()
        retried = await asyncio.gather(*calls, return_exceptions=True)
        streamed = [p async for p in faults.stream(lambda: handle.options(stream=True).pieces.remote(3), 30, "echo")]
        with pytest.raises(faults.StageTimeout):
            await faults.call(lambda: handle.hello.remote(5.0), 0.3, "echo")
        with pytest.raises(faults.StageTimeout):
            [p async for p in faults.stream(lambda: handle.options(stream=True).pieces.remote(3, 5.0), 0.3, "echo")]
        return {"bare": bare_out, "retried": retried, "streamed": streamed}

    ray.init(num_cpus=2, include_dashboard=False, namespace="faults-test", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 0})
        out = asyncio.run(scenario(serve.run(Echo.bind(), name="faults", route_prefix=None)))
    finally:
        serve.shutdown()
        ray.shutdown()
    lost = [r for r in out["bare"] if isinstance(r, Exception)]
    assert lost and all(faults.classify(r, 2.0).code == "replica_unavailable" for r in lost)  # what a kill does
    assert all(isinstance(r, str) for r in out["retried"]), out["retried"]  # nothing lost through faults.call
    assert out["streamed"] == [0, 1, 2]


def test_drain_outlasts_an_ask_in_the_config_and_the_deployments():
    """A replica replaced by a redeploy finishes what it holds: longer than an ask may run for ingress and fusion
    (they hold streamed answers), longer than one handle call for the others."""
    from ray_app.settings import get_settings
    from serving.app import DEPLOYMENTS, load_config

    settings = get_settings()
    config = {d.name: d for d in load_config().applications[0].deployments}
    assert set(config) == set(DEPLOYMENTS)
    for name, dep in config.items():
        needed = settings.ask_timeout_s if name in ("ingress", "fusion") else settings.handle_timeout_s
        assert dep.graceful_shutdown_timeout_s > needed, name


def test_real_serve_redeploy_drains_in_flight_calls():
    """``serve.run`` of a new version while calls are in flight: the old replica finishes them (graceful
    shutdown) and calls made during the rollout are answered too; nothing is lost."""
    import ray
    from ray import serve

    def build(generation: str):
        @serve.deployment(name="Slow", graceful_shutdown_timeout_s=30, graceful_shutdown_wait_loop_s=1,
                          ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": {"GENERATION": generation}}})
        class Slow:
            async def answer(self, delay: float) -> str:
                import os

                await asyncio.sleep(delay)
                return os.environ["GENERATION"]

        return Slow.bind()

    async def scenario(handle) -> tuple[list, list]:
        in_flight = [asyncio.create_task(faults.call(lambda: handle.answer.remote(4.0), 60, "slow")) for _ in range(4)]
        await asyncio.sleep(1.0)
        rollout = asyncio.create_task(asyncio.to_thread(serve.run, build("2"), name="drain", route_prefix=None))
        during = []
        while not rollout.done():
            during.append(await faults.call(lambda: handle.answer.remote(0.1), 60, "slow"))
        await rollout
        return await asyncio.gather(*in_flight, return_exceptions=True), during

    ray.init(num_cpus=2, include_dashboard=False, namespace="drain-test", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 0})
        first, during = asyncio.run(scenario(serve.run(build("1"), name="drain", route_prefix=None)))
        after = serve.get_deployment_handle("Slow", app_name="drain").answer.remote(0.0).result(timeout_s=60)
    finally:
        serve.shutdown()
        ray.shutdown()
    assert first == ["1"] * 4, first  # answered by the old replica while it drained
    assert during and set(during) <= {"1", "2"} and after == "2"

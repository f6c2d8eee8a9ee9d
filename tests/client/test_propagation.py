"""Continuing an ARC in another thread, process or service: continue_mona_context, message headers,
WSGI and ASGI middlewares with real servers and real HTTP clients, multiprocessing and process pools
with the fork and spawn start methods. Records are checked as a real Forward receiver got them, and
end to end in a real collector."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import socketserver
import threading
import wsgiref.simple_server
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

from mona_client import client
from mona_client.integrations.asgi import MonaASGIMiddleware
from mona_client.integrations.wsgi import MonaWSGIMiddleware
from mona_client.logs import rate_limited
from mona_client.propagation import (
    HEADER,
    MonaProcessPoolExecutor,
    carry_to_process,
    context_headers,
    continue_from,
    inject,
)
from tests.support.embedded import Embedded, embedded
from tests.support.receiver import ForwardReceiver
from tests.support.waiting import wait_until

__all__ = ["embedded"]

pytestmark = pytest.mark.timeout(90)


def records(receiver: ForwardReceiver, count: int) -> List[Dict[str, Any]]:
    """Every record once at least ``count`` arrived (after a flush)."""
    assert client.flush(20), client.stats()
    assert receiver.wait_for(lambda r: len(r.records) >= count, 20), receiver.records
    return list(receiver.records)


def landed(receiver: ForwardReceiver, key: str, count: int) -> Dict[Any, str]:
    """message[key] -> the context of the record that carried it, once ``count`` such records arrived."""
    assert client.flush(20), client.stats()
    assert receiver.wait_for(lambda r: sum(key in x["message"] for x in r.records) >= count, 20)
    return {r["message"][key]: r["context"] for r in receiver.records if key in r["message"]}


def arc_classes(receiver: ForwardReceiver) -> Dict[str, str]:
    return {r["context"]: r["message"]["MONA_ARC_CLASS"] for r in receiver.records if "MONA_ARC_CLASS" in r["message"]}


@pytest.fixture
def warnings_seen(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    monkeypatch.setattr(rate_limited, "interval", 0.0)
    caplog.set_level(logging.INFO, logger="mona-logger")
    return caplog


def refusal_lines(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if "context id to continue was refused" in r.getMessage()]


# --- continue_mona_context ----------------------------------------------------------------------------


def test_a_continued_context_exports_into_the_arc_and_nests_sub_contexts_without_re_exporting(mona):
    client.set_global_init_message({"model": "v1"})
    try:
        with client.new_mona_context(arc_class="ORIGIN") as origin:
            pass
        with client.continue_mona_context(origin, arc_class="IGNORED") as continued:
            assert continued == origin == client.get_full_context_id()
            client.export({"late": 1})
            with client.new_mona_sub_context(arc_class="STEP", sub_context_id="s") as sub:
                client.export({"inner": 2})
        assert client.get_full_context_id() == ""
    finally:
        client.set_global_init_message(None)
    assert sub == f"{origin}.s"
    got = records(mona, 4)  # class and globals together, late, the sub-context's class, inner
    assert landed(mona, "late", 1) == {1: origin}
    assert landed(mona, "inner", 1) == {2: sub}
    # The class and globals once, from the opening context; the continued block exports neither.
    assert [r["context"] for r in got if "MONA_GLOBALS" in r["message"]] == [origin]
    assert arc_classes(mona) == {origin: "ORIGIN", sub: "STEP"}
    assert "IGNORED" not in str(got)


def test_a_dotted_id_continues_a_sub_context(mona):
    with client.continue_mona_context("run-7.fold-2"):
        client.export({"acc": 0.9})
    assert landed(mona, "acc", 1) == {0.9: "run-7.fold-2"}


@pytest.mark.parametrize(
    "bad",
    [
        "x" * 257,
        "run 1",
        "run\r\nSet-Cookie: a=b",
        "run/../etc",
        "a..b",
        ".a",
        "a.",
        "é",
        ".".join(["a"] * 65),
        b"bytes-id",
        42,
    ],
    ids=[
        "too-long",
        "space",
        "crlf-injection",
        "slash",
        "empty-id",
        "leading-dot",
        "trailing-dot",
        "non-ascii",
        "too-deep",
        "bytes",
        "int",
    ],
)
def test_a_malformed_id_is_refused_with_a_line_and_a_fresh_arc_of_the_class(mona, warnings_seen, bad):
    with client.continue_mona_context(bad, arc_class="FALLBACK") as context_id:  # type: ignore[arg-type]
        client.export({"v": 1})
    assert context_id and context_id != bad and "." not in context_id
    assert landed(mona, "v", 1) == {1: context_id}
    assert arc_classes(mona) == {context_id: "FALLBACK"}
    lines = refusal_lines(warnings_seen)
    assert len(lines) == 1, lines
    assert str(bad)[:20] not in lines[0]  # the line never echoes what came from outside


def test_the_longest_and_deepest_ids_allowed_are_continued(mona):
    longest = "a" * 256
    deepest = ".".join(["b"] * 64)  # 64 ids: 63 dots, below MONA_MAX_CONTEXT_DEPTH = 64
    for context_id in (longest, deepest, "Run_1:2-3.x"):
        with client.continue_mona_context(context_id) as got:
            assert got == context_id
            client.export({"id": context_id})
    assert landed(mona, "id", 3) == {c: c for c in (longest, deepest, "Run_1:2-3.x")}


def test_refusals_are_rate_limited(mona, caplog):
    caplog.set_level(logging.INFO, logger="mona-logger")
    rate_limited.reset()
    for _ in range(50):
        with client.continue_mona_context("no spaces allowed"):
            pass
    assert len(refusal_lines(caplog)) == 1


def test_no_id_opens_a_fresh_arc_without_a_line(mona, warnings_seen):
    for missing in ("", None):
        with client.continue_mona_context(missing, arc_class="NEW") as context_id:
            client.export({"fresh": str(missing)})
        assert context_id
    assert set(landed(mona, "fresh", 2)) == {"", "None"}
    assert refusal_lines(warnings_seen) == []


def test_raising_on_does_not_raise_for_a_malformed_id(receiver, tmp_path):
    config = tmp_path / "c.json"
    config.write_text("{}")
    client.init_client(port=receiver.port, config_file=str(config), print_logs=False, should_raise_exceptions=True)
    try:
        with client.continue_mona_context("bad id", arc_class="C") as context_id:
            assert context_id
    finally:
        client.close(5)


def test_a_disabled_client_yields_nothing_and_exports_nothing(receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("MONA_DISABLE_ALL", "true")
    client.init_client(port=receiver.port, print_logs=False)
    try:
        with client.continue_mona_context("run-1") as context_id:
            assert context_id == ""
            assert client.export({"v": 1}) is False
    finally:
        client.close(5)


# --- message headers ----------------------------------------------------------------------------------


def test_message_headers_carry_the_context_to_a_consumer_thread(mona):
    queue: List[Tuple[Dict[str, Any], int]] = []
    with client.new_mona_context(arc_class="PRODUCER") as producer:
        with client.new_mona_sub_context(sub_context_id="send") as sending:
            queue.append((inject({"content-type": "json"}), 1))
        queue.append((inject({}), 2))
    queue.append((inject({}), 3))  # outside any context: no header
    assert queue[0][0] == {"content-type": "json", HEADER: sending}
    assert queue[2][0] == {}

    def consume() -> None:
        for headers, value in queue:
            with continue_from(headers, arc_class="CONSUMER"):
                client.export({"consumed": value})

    thread = threading.Thread(target=consume)
    thread.start()
    thread.join(20)
    where = landed(mona, "consumed", 3)
    assert where[1] == sending and where[2] == producer
    assert where[3] not in (producer, sending) and arc_classes(mona)[where[3]] == "CONSUMER"


def test_header_names_in_any_case_and_bytes_values_are_read(mona):
    with continue_from({b"mona-context-id": b"run-9"}):
        client.export({"bytes": 1})
    with continue_from({"MONA-CONTEXT-ID": "run-10"}):
        client.export({"upper": 1})
    assert landed(mona, "bytes", 1) == {1: "run-9"}
    assert landed(mona, "upper", 1) == {1: "run-10"}


def test_an_injected_header_already_set_is_kept(mona):
    with client.new_mona_context():
        assert inject({HEADER: "chosen"}) == {HEADER: "chosen"}
        assert context_headers() == {HEADER: client.get_full_context_id()}


# --- WSGI -----------------------------------------------------------------------------------------------


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def _wsgi_app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    """Exports the request's query into the current ARC, while the response is being iterated too."""
    query = environ.get("QUERY_STRING", "")
    client.export({"query": query})
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield client.get_full_context_id().encode()
    client.export({"after_body": query})


@pytest.fixture
def wsgi_server() -> Iterator[str]:
    app = MonaWSGIMiddleware(_wsgi_app, arc_class={"/": "WEB", "/score": "SCORER", "/score/batch": "BATCH"})
    server = wsgiref.simple_server.make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_wsgi_concurrent_requests_each_run_in_their_own_arc(mona, wsgi_server):
    requests = pytest.importorskip("requests")
    from mona_client.integrations.requests import instrument_session

    session = instrument_session(requests.Session(), pool_maxsize=16)
    paths = ["/score", "/score/batch", "/other", "/score/7"]

    def call(i: int) -> Tuple[int, str, str, str]:
        if i % 2:  # half of them from inside a caller's context: the header continues it
            with client.new_mona_context(arc_class="CALLER") as caller:
                response = session.get(f"{wsgi_server}{paths[i % 4]}?q={i}", timeout=20)
        else:
            caller = ""
            response = session.get(f"{wsgi_server}{paths[i % 4]}?q={i}", timeout=20)
        assert response.status_code == 200
        return i, caller, response.text, response.headers[HEADER]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(40)))
    queried = landed(mona, "query", 40)
    after = landed(mona, "after_body", 40)
    classes = arc_classes(mona)
    expected_class = {"/score": "SCORER", "/score/batch": "BATCH", "/other": "WEB", "/score/7": "SCORER"}
    served = set()
    for i, caller, body, header in results:
        assert body == header == queried[f"q={i}"] == after[f"q={i}"]
        served.add(body)
        if caller:
            assert body == caller and classes[body] == "CALLER"  # continued: no class exported by the server
        else:
            assert classes[body] == expected_class[paths[i % 4]]
    assert len(served) == 40


def test_wsgi_a_malformed_header_gets_a_fresh_arc(mona, wsgi_server, warnings_seen):
    requests = pytest.importorskip("requests")
    response = requests.get(f"{wsgi_server}/score?q=bad", headers={HEADER: "x" * 300}, timeout=20)
    assert response.status_code == 200 and len(response.text) < 40
    assert landed(mona, "query", 1) == {"q=bad": response.text}
    assert arc_classes(mona)[response.text] == "SCORER"
    assert len(refusal_lines(warnings_seen)) == 1


def test_wsgi_an_application_error_leaves_the_arc_and_reaches_the_server(mona):
    def failing(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
        client.export({"before": 1})
        raise RuntimeError("boom")

    app = MonaWSGIMiddleware(failing, arc_class="FAILING")
    environ: Dict[str, Any] = {"PATH_INFO": "/"}
    with pytest.raises(RuntimeError, match="boom"):
        app(environ, lambda *a: None)
    assert client.get_full_context_id() == ""
    assert list(landed(mona, "before", 1)) == [1]


# --- ASGI -----------------------------------------------------------------------------------------------


async def _asgi_app(scope: Dict[str, Any], receive: Any, send: Any) -> None:
    """A plain ASGI application: exports its query string, also from a task it creates."""
    query = scope["query_string"].decode()
    client.export({"query": query})
    await asyncio.sleep(0.01)  # other requests run meanwhile
    await asyncio.create_task(_export_later(query))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": client.get_full_context_id().encode()})


async def _export_later(query: str) -> None:
    client.export({"from_task": query})


def test_asgi_concurrent_requests_each_run_in_their_own_arc_without_a_server(mona):
    """The ASGI protocol driven directly: many requests at once on one event loop."""
    app = MonaASGIMiddleware(_asgi_app, arc_class=lambda path: path.strip("/").upper() or None)

    async def request(i: int) -> Tuple[int, Dict[str, Any]]:
        headers = [(b"mona-context-id", f"parent-{i}".encode())] if i % 2 else []
        scope = {"type": "http", "path": f"/p{i % 3}", "query_string": f"q={i}".encode(), "headers": headers}
        sent: List[Dict[str, Any]] = []

        async def receive() -> Dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return i, {"headers": dict(sent[0]["headers"]), "body": sent[1]["body"].decode()}

    async def main() -> List[Tuple[int, Dict[str, Any]]]:
        return list(await asyncio.gather(*(request(i) for i in range(30))))

    results = asyncio.run(main())
    queried = landed(mona, "query", 30)
    from_task = landed(mona, "from_task", 30)
    classes = arc_classes(mona)
    for i, response in results:
        body = response["body"]
        assert response["headers"][b"mona-context-id"].decode() == body == queried[f"q={i}"] == from_task[f"q={i}"]
        if i % 2:
            assert body == f"parent-{i}" and body not in classes
        else:
            assert classes[body] == f"P{i % 3}"
    assert len({r["body"] for _, r in results}) == 30


def test_asgi_with_uvicorn_starlette_and_httpx(mona):
    pytest.importorskip("starlette")
    uvicorn = pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from mona_client.integrations.httpx import instrument_client

    async def score(request: Any) -> Any:
        client.export({"query": request.url.query})
        await asyncio.sleep(0.01)
        return PlainTextResponse(client.get_full_context_id())

    app = MonaASGIMiddleware(Starlette(routes=[Route("/score", score)]), arc_class={"/score": "SCORER"})
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started and server.servers)
        port = server.servers[0].sockets[0].getsockname()[1]

        async def main() -> List[Tuple[int, str, str]]:
            async with instrument_client(httpx.AsyncClient(timeout=20)) as http:

                async def one(i: int) -> Tuple[int, str, str]:
                    caller = ""
                    if i % 2:
                        with client.new_mona_context(arc_class="CALLER") as caller:
                            response = await http.get(f"http://127.0.0.1:{port}/score?q={i}")
                    else:
                        response = await http.get(f"http://127.0.0.1:{port}/score?q={i}")
                    return i, caller, response.text

                return list(await asyncio.gather(*(one(i) for i in range(20))))

        results = asyncio.run(main())
    finally:
        server.should_exit = True
        thread.join(20)
    queried = landed(mona, "query", 20)
    classes = arc_classes(mona)
    for i, caller, body in results:
        assert queried[f"q={i}"] == body
        assert body == caller if caller else classes[body] == "SCORER"
    assert len({body for _, _, body in results}) == 20


def test_httpx_sync_client_sends_the_header(mona, wsgi_server):
    httpx = pytest.importorskip("httpx")
    from mona_client.integrations.httpx import instrument_client

    with instrument_client(httpx.Client(timeout=20)) as http, client.new_mona_context() as caller:
        body = http.get(f"{wsgi_server}/x?q=httpx").text
    assert body == caller


# --- processes ------------------------------------------------------------------------------------------


def export_part(part: int) -> int:
    """Runs in a worker process: exports into whatever ARC it was carried into."""
    client.export({"part": part})
    with client.new_mona_sub_context(sub_context_id=f"w{part}"):
        client.export({"sub_part": part})
    client.flush(10)
    return part * 10


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_process_target_runs_in_the_parents_arc(mona, method):
    context = multiprocessing.get_context(method)
    with client.new_mona_context(arc_class="PARENT") as parent:
        processes = [context.Process(target=carry_to_process(export_part), args=(i,)) for i in range(3)]
        for process in processes:
            process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert landed(mona, "part", 3) == {0: parent, 1: parent, 2: parent}
    assert landed(mona, "sub_part", 3) == {i: f"{parent}.w{i}" for i in range(3)}
    assert list(arc_classes(mona)) == [parent]  # the class once, from the parent


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_process_pool_runs_each_task_in_its_submitters_arc(mona, method):
    with MonaProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method)) as pool:
        futures = {}
        for i in range(6):
            with client.new_mona_context(arc_class="JOB") as job:
                futures[i] = (job, pool.submit(export_part, i))
        assert [f.result(60) for _, f in futures.values()] == [i * 10 for i in range(6)]
        outside = pool.submit(export_part, 99)  # outside any context: its export is refused
        assert outside.result(60) == 990
    where = landed(mona, "part", 6)
    assert where == {i: job for i, (job, _) in futures.items()}
    assert 99 not in where


# --- end to end -----------------------------------------------------------------------------------------


def test_end_to_end_a_request_continues_the_callers_arc_in_the_collector(embedded: Embedded, wsgi_server):
    requests = pytest.importorskip("requests")
    from mona_client.integrations.requests import instrument_session

    session = instrument_session(requests.Session())
    with client.new_mona_context(arc_class="CHECKOUT") as checkout:
        client.export({"cart": 3})
        served = session.get(f"{wsgi_server}/score?q=e2e", timeout=20).text
    with continue_from({HEADER: checkout}):
        client.export({"label": "fraud"})
    assert served == checkout
    arc = embedded.arc(checkout)
    assert arc["arc_class"] == "CHECKOUT"
    assert arc["fields"] == {"cart": 3, "query": "q=e2e", "after_body": "q=e2e", "label": "fraud"}


def test_the_id_length_limit_is_a_setting(receiver, tmp_path, monkeypatch, warnings_seen):
    monkeypatch.setenv("MONA_MAX_CONTEXT_ID_CHARS", "10")
    config = tmp_path / "c.json"
    config.write_text("{}")
    client.init_client(port=receiver.port, config_file=str(config), print_logs=False)
    try:
        with client.continue_mona_context("a" * 10) as kept:
            assert kept == "a" * 10
        with client.continue_mona_context("a" * 11) as refused:
            assert refused != "a" * 11
        assert "MONA_MAX_CONTEXT_ID_CHARS = 10" in refusal_lines(warnings_seen)[0]
    finally:
        client.close(5)


@pytest.mark.parametrize(
    ("module", "call"),
    [("requests", "instrument_session(None)"), ("httpx", "instrument_client(None)")],
)
def test_an_integration_imports_without_its_package_and_says_what_is_missing(module, call):
    import subprocess
    import sys

    code = (
        f"import sys; sys.modules[{module!r}] = None\n"  # as if the package were not installed
        f"from mona_client.integrations.{module} import *\n"
        f"try:\n    {call}\nexcept ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"needs the {module} package: pip install {module}" in result.stdout

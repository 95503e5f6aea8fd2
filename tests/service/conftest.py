"""Service test harness: a tiny random-init checkpoint pair in a temp store, and a real uvicorn server
on a loopback socket in a background thread, talked to over HTTP with httpx.

Decodes are kept to milliseconds (``max_new_tokens=48``); tests that need a decode in flight hold one
engine's ``rank`` at a :class:`Gate` they open themselves, or slow it with a sleep where only load
matters (the server runs in this process, so patching its objects works). Every wait is bounded, and
no test asserts a duration: where it matters *when* something was answered, the test asserts the order
of events (e.g. a 504 logged before the decode ahead of it was let go).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from dgr2.model_store import ModelStore
from dgr2.model_store.init import init_pair
from dgr2.recipe.synthetic import synthetic_data
from dgr2.service.app import create_app
from dgr2.service.runtime import Runtime
from dgr2.service.server import DrainingServer, build_server
from dgr2.service.settings import Settings

MODEL = "test-gr2"
# a second model on a catalog of its own: items S0000..S0079, where MODEL's catalog has S0000..S0059
OTHER_MODEL = "test-toys-gr2"
CANDIDATES = [f"S{i:04d}" for i in range(12)]
HISTORY = ["S0051", "S0027", "S0032", "S0021"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    """The test process's thread and the server's torch thread each run an OpenMP team: one intra-op thread
    each, or a busy 2-core box slows a decode several-fold (dgr2/service/torch_thread.py)."""
    yield


@pytest.fixture(autouse=True)
def _no_service_env(monkeypatch):
    """A developer's DGR2_* variables must not leak into the settings the tests build."""
    for name in Settings.model_fields:
        monkeypatch.delenv(f"DGR2_{name.upper()}", raising=False)


def make_store(root: Path, catalog, seeds: tuple[int, ...] = (0,)) -> ModelStore:
    store = ModelStore(root)
    for seed in seeds:  # the last seed ends up aliased as "ar" / "diffusion"
        init_pair(store, MODEL, catalog, "tiny", seed)
    return store


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory, catalog) -> ModelStore:
    """Read-only store for most tests; tests that move aliases or tamper make their own."""
    return make_store(tmp_path_factory.mktemp("store"), catalog)


@pytest.fixture(scope="session")
def other_catalog():
    return synthetic_data(n_items=80, seed=1).catalog


def make_two_model_store(root: Path, catalog, other_catalog) -> ModelStore:
    """MODEL (versions init-tiny-s0-*) and OTHER_MODEL (versions toys-tiny-s1-*), each aliased ar / diffusion."""
    store = make_store(root, catalog)
    init_pair(store, OTHER_MODEL, other_catalog, "tiny", seed=1, version_prefix="toys")
    return store


@pytest.fixture(scope="session")
def two_models_store(tmp_path_factory, catalog, other_catalog) -> ModelStore:
    return make_two_model_store(tmp_path_factory.mktemp("two-models"), catalog, other_catalog)


def settings_for(store: ModelStore, **overrides) -> Settings:
    base = dict(store=store.root, model=MODEL, max_new_tokens=48, max_wait_ms=10, max_batch_size=8,
                queue_limit=64, ab_split="ar=50,diffusion=50", ab_salt="test-salt", shadow_rate=0.0,
                admin_token=None, drain_timeout_s=20)
    return Settings(**{**base, **overrides})


@dataclass
class Server:
    """A running service: ``url``, the ``app`` and its :class:`Runtime`, and the uvicorn ``server``."""

    url: str
    app: object
    server: DrainingServer
    thread: threading.Thread
    gates: list[Gate] = field(default_factory=list)  # opened before the server stops

    @property
    def rt(self) -> Runtime:
        return self.app.state.runtime  # type: ignore[attr-defined]

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30.0), **kw)

    def metrics(self) -> dict[str, float]:
        return parse_metrics(httpx.get(f"{self.url}/metrics", timeout=10).text)

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for(lambda: httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200, timeout, "server ready")

    def slow_down(self, monkeypatch, decoder: str, seconds: float, calls: list | None = None) -> None:
        """Make ``decoder``'s decodes take at least ``seconds``; log each batch's size in ``calls``."""
        reranker = self.rt.models.engine(decoder).reranker
        real = reranker.rank

        def slow(requests):
            if calls is not None:
                calls.append(len(requests))
            time.sleep(seconds)
            return real(requests)

        monkeypatch.setattr(reranker, "rank", slow)

    def hold(self, monkeypatch, decoder: str, calls: list | None = None) -> Gate:
        """Hold ``decoder``'s decodes at a :class:`Gate` until the test opens it; log each batch's size in
        ``calls``. What a test asserts is then an order of events, never a duration."""
        reranker = self.rt.models.engine(decoder).reranker
        real = reranker.rank
        gate = Gate()
        self.gates.append(gate)

        def held(requests):
            if calls is not None:
                calls.append(len(requests))
            gate.log(f"{decoder} decode started")
            gate.wait()
            try:
                return real(requests)
            finally:
                gate.log(f"{decoder} decode ended")

        monkeypatch.setattr(reranker, "rank", held)
        return gate


class Gate:
    """A barrier a held decode waits at, and the log of what happened, in order (``events``).

    A decode waits at most ``limit_s`` (then goes on, logging it), so a test that never opens the gate
    still ends; the log shows it."""

    def __init__(self, limit_s: float = 60.0) -> None:
        self.events: list[str] = []
        self._open = threading.Event()
        self._lock = threading.Lock()
        self.limit_s = limit_s

    def log(self, event: str) -> None:
        with self._lock:
            self.events.append(event)

    def wait(self) -> None:
        if not self._open.wait(self.limit_s):
            self.log("gate timed out")

    def open(self) -> None:
        if not self._open.is_set():
            self.log("gate opened")
            self._open.set()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return
        except httpx.TransportError:
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Exposition text -> {'name{labels sorted as written}': value} (enough for assertions)."""
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


@contextmanager
def running(settings: Settings, ready: bool = True) -> Iterator[Server]:
    """Start the app under uvicorn on a fresh loopback socket; stop it (gracefully) on exit."""
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port: no race with other tests
    port = sock.getsockname()[1]
    server = build_server(app, "127.0.0.1", port, log_level="warning")

    def serve() -> None:
        with suppress(SystemExit):  # uvicorn exits (code 3) when the app fails to start
            server.run(sockets=[sock])

    thread = threading.Thread(target=serve, daemon=True, name="uvicorn")
    thread.start()
    srv = Server(f"http://127.0.0.1:{port}", app, server, thread)
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 30, "uvicorn start")
        if not server.started:
            raise RuntimeError("the service failed to start")
        if ready:
            srv.wait_ready()
        yield srv
    finally:
        for gate in srv.gates:  # a test that failed while holding a decode must not hold up the stop
            gate.open()
        server.request_shutdown()
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "server did not stop within 30 s"


@pytest.fixture()
def hold(monkeypatch) -> Iterator[Callable[..., Gate]]:
    """``hold(srv, decoder, calls=None) -> Gate``: :meth:`Server.hold` for this test; every gate it made opens
    when the test ends, so a failed test does not leave a decode held on a shared server."""
    gates: list[Gate] = []

    def start(srv: Server, decoder: str, calls: list | None = None) -> Gate:
        gates.append(srv.hold(monkeypatch, decoder, calls))
        return gates[-1]

    yield start
    for gate in gates:
        gate.open()


@pytest.fixture(scope="module")
def server(shared_store) -> Iterator[Server]:
    """One server shared by a test module: 50/50 split, 20 candidates max, 64 KiB body limit."""
    with running(settings_for(shared_store, max_candidates=20, max_body_bytes=64 * 1024,
                              max_batch_requests=4)) as srv:
        yield srv


@pytest.fixture()
def client(server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    """The one error shape, and nothing internal in it."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    text = resp.text
    assert "Traceback" not in text and "/tmp" not in text and ".py" not in text and "/work" not in text, text
    return body["error"]


def assert_permutation(body: dict, candidates: list, top_n: int | None = None) -> None:
    ids = [c if isinstance(c, str) else c["id"] for c in candidates]
    results = body["results"]
    n = len(ids) if top_n is None else min(top_n, len(ids))
    assert len(results) == n
    assert [r["rank"] for r in results] == list(range(1, n + 1))
    assert len({r["index"] for r in results}) == n
    for r in results:
        assert ids[r["index"]] == r["item_id"]
        assert 0.0 <= r["relevance_score"] <= 1.0
    if top_n is None:
        assert sorted(r["index"] for r in results) == list(range(len(ids)))


def rerank_body(**kw) -> dict:
    return {"history": HISTORY, "candidates": CANDIDATES, **kw}


class Harness:
    """The helpers above, handed to tests as the ``h`` fixture (conftest modules are not importable)."""

    MODEL, OTHER_MODEL, CANDIDATES, HISTORY = MODEL, OTHER_MODEL, CANDIDATES, HISTORY
    make_store = staticmethod(make_store)
    make_two_model_store = staticmethod(make_two_model_store)
    settings_for = staticmethod(settings_for)
    running = staticmethod(running)
    wait_for = staticmethod(wait_for)
    parse_metrics = staticmethod(parse_metrics)
    metric = staticmethod(metric)
    assert_error = staticmethod(assert_error)
    assert_permutation = staticmethod(assert_permutation)
    rerank_body = staticmethod(rerank_body)


@pytest.fixture(scope="session")
def h() -> type[Harness]:
    return Harness

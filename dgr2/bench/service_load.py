"""``dgr2 bench service``: the real server under closed-loop load, per decoder and concurrency level.

    dgr2 bench service --json                                  # levels 1,4,16,64, 20 s each, both decoders
    dgr2 bench service --concurrency 1,16 --duration 10 --out docs/benchmarks/service-cpu.json

1. **Raw decode** first, in this process: each decoder's engine is loaded exactly as the server loads
   it (``service.models.load_engine``, same budget and history) and ranks the benchmark requests one
   at a time for up to ``--duration`` seconds (after one warm-up); this is the baseline that HTTP and
   batching add to.
2. **The server**: ``dgr2 serve`` as a subprocess on a free loopback port, ``DGR2_*`` variables of
   this shell removed (only the flags given here apply; shadow traffic off), ready once ``/readyz``
   answers 200.
3. **Load**: for each decoder (the request's ``decoder`` field) and concurrency level, a separate
   process (:mod:`bench.loadgen`) keeps that many requests in flight for ``--duration`` seconds.
   Reported: successful requests/s, latency p50/p95/p99 of the successful requests, errors by
   status, the mean batch size (``dgr2_batch_size`` sum/count from ``/metrics`` before and after the
   level) and the throughput relative to concurrency 1.
4. **Overhead** at concurrency 1: client-side p50 latency minus the raw decode p50, with the
   server's own decode and queue times (from each response's ``timing``) beside it.

On one machine the load generator, the server and its decode thread share the CPUs.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from dgr2.bench import common
from dgr2.bench.common import percentile
from dgr2.model.config import DECODERS

log = logging.getLogger("dgr2.bench")
REPO = Path(__file__).resolve().parents[1]
KEEP_ENV = ("DGR2_KERNELS",)  # the only DGR2_* variable passed on to the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)$")


def batch_totals(text: str, decoder: str) -> tuple[float, float]:
    """``(sum, count)`` of ``dgr2_batch_size`` for ``decoder`` in Prometheus exposition text."""
    total = {"dgr2_batch_size_sum": 0.0, "dgr2_batch_size_count": 0.0}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) not in total:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if labels.get("decoder") == decoder:
            total[m.group(1)] += float(m.group(3))
    return total["dgr2_batch_size_sum"], total["dgr2_batch_size_count"]


def raw_decode_ms(store, args, decoder: str, ref: str, device: str, requests) -> list[float]:
    """Per-request decode time of the engine the server would build, one request at a time."""
    import torch

    from dgr2.service.models import load_engine

    engine = load_engine(store, args.model, decoder, ref, device=device, max_new_tokens=args.max_new_tokens,
                         max_history=args.max_history)
    engine.reranker.rank([requests[0]])  # warm-up
    times: list[float] = []
    end = time.monotonic() + args.duration
    for req in requests:
        if times and time.monotonic() > end:
            break
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        engine.reranker.rank([req])
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        times.append(1000 * (time.perf_counter() - t0))
    del engine
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return times


class ServerProcess:
    """``dgr2 serve`` in a subprocess; stopped with SIGTERM (it drains), killed if it will not stop."""

    def __init__(self, flags: list[str], log_path: Path, startup_timeout: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("DGR2_") or k in KEEP_ENV}
        cmd = [sys.executable, "-m", "dgr2", "serve", "--host", "127.0.0.1", "--port", str(self.port), *flags]
        log.info("starting %s", " ".join(cmd))
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(startup_timeout)
        except BaseException:
            self.stop(timeout=10)
            raise

    def _wait_ready(self, timeout: float) -> None:
        import httpx

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("the server did not stop within %.0f s; killing it", timeout)
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def run_level(url: str, bodies: list[dict], concurrency: int, duration: float, timeout: float) -> dict:
    """One load level in a spawned child process (see :mod:`bench.loadgen`)."""
    from dgr2.bench.loadgen import run_level as child

    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child, args=(url, bodies, concurrency, duration, timeout, child_conn),
                       name=f"dgr2-load-c{concurrency}")
    proc.start()
    child_conn.close()
    limit = duration + timeout + 60
    if not parent_conn.poll(limit):
        proc.kill()
        proc.join(10)
        raise RuntimeError(f"the load generator sent nothing within {limit:.0f} s")
    result = parent_conn.recv()
    proc.join(30)
    if "error" in result:
        raise RuntimeError(f"the load generator failed: {result['error']}")
    return result


def level_record(decoder: str, concurrency: int, result: dict, batch_sum: float, batch_count: float) -> dict:
    records = result["records"]
    ok = [r for r in records if r[2] == "200"]
    lat = [r[1] for r in ok]
    errors = Counter(r[2] for r in records if r[2] != "200")
    elapsed = result["elapsed_s"]
    return {
        "decoder": decoder,
        "concurrency": concurrency,
        "duration_s": round(elapsed, 2),
        "requests": len(records),
        "errors": sum(errors.values()),
        "error_statuses": dict(errors),
        "requests_per_s": round(len(ok) / elapsed, 3) if elapsed > 0 else 0.0,
        "p50_ms": round(percentile(lat, 50), 2) if lat else None,
        "p95_ms": round(percentile(lat, 95), 2) if lat else None,
        "p99_ms": round(percentile(lat, 99), 2) if lat else None,
        "mean_batch_size": round(batch_sum / batch_count, 2) if batch_count else None,
        "server_decode_p50_ms": round(percentile([r[3] for r in ok], 50), 2) if ok else None,
        "server_queue_p50_ms": round(percentile([r[4] for r in ok], 50), 2) if ok else None,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    from dgr2.model.tokenizer import MAX_HISTORY
    from dgr2.model_store import DEFAULT_MODEL
    from dgr2.service.settings import Settings

    serve_default = {name: f.default for name, f in Settings.model_fields.items()}
    p.add_argument("--store", default=None, help="model store root (default: $DGR2_STORE or the shipped store)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name in the store (default %(default)s)")
    p.add_argument("--ar", default="ar", help="AR version or alias in the store (default %(default)s)")
    p.add_argument("--diffusion", default="diffusion", help="diffusion version or alias (default %(default)s)")
    p.add_argument("--decoders", default="ar,diffusion", help="decoders to load (default %(default)s)")
    p.add_argument("--concurrency", default="1,4,16,64", help="concurrency levels (default %(default)s)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per level, and the most the raw decode "
                                                                "baseline takes (default %(default)s)")
    common.add_prompt_arguments(p)
    p.add_argument("--users", type=int, default=64, help="distinct requests, sent round robin (default %(default)s)")
    p.add_argument("--top-n", type=int, default=None, help="top_n of each request (default: the whole ranking)")
    p.add_argument("--device", default=None, help="cpu or cuda, for the server and the raw decode "
                                                  "(default: cuda when available)")
    p.add_argument("--torch-threads", type=int, default=None, help="torch intra-op CPU threads, server and raw "
                                                                   "decode (default torch's)")
    p.add_argument("--max-batch-size", type=int, default=serve_default["max_batch_size"],
                   help="server's largest batch (default %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=serve_default["max_wait_ms"],
                   help="server's batch fill wait (default %(default)s)")
    p.add_argument("--queue-limit", type=int, default=serve_default["queue_limit"],
                   help="server's admission limit per decoder (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=serve_default["max_new_tokens"],
                   help="decode budget per request (default %(default)s; capped by the checkpoint's trace length)")
    p.add_argument("--max-history", type=int, default=MAX_HISTORY, help="history items kept (default %(default)s)")
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for /readyz")
    p.add_argument("--request-timeout", type=float, default=300.0, help="client timeout per request (seconds)")
    p.add_argument("--server-log", type=Path, default=None, help="keep the server's log here (default: a temp "
                                                                 "file, shown on failure)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (else a table)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON object to this file")


def run(args: argparse.Namespace) -> int:
    import torch

    from dgr2.model.engine import RankRequest
    from dgr2.model_store import open_store

    started = time.monotonic()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    decoders = common.parse_list(args.decoders, str)
    levels = common.parse_list(args.concurrency)
    if not decoders or set(decoders) - set(DECODERS) or not levels or min(levels) < 1:
        raise SystemExit("--decoders takes ar and/or diffusion; --concurrency positive integers")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = common.pick_device(args.device)
    store = open_store(args.store)
    refs = {"ar": args.ar, "diffusion": args.diffusion}
    examples, prompts = common.load_examples(args.data_dir, args.synthetic, args.split, args.candidates, args.neg_seed,
                                      args.users)

    raw = {}
    for d in decoders:
        raw[d] = raw_decode_ms(store, args, d, refs[d], device, [RankRequest(e.history, e.candidates)
                                                                  for e in examples])
        log.info("raw %s decode: p50 %.1f ms over %d requests", d, percentile(raw[d], 50), len(raw[d]))

    flags = ["--store", str(store.root), "--model", args.model, "--ar-ref", args.ar, "--diffusion-ref",
             args.diffusion, "--device", device, "--max-batch-size", str(args.max_batch_size),
             "--max-wait-ms", str(args.max_wait_ms), "--queue-limit", str(args.queue_limit),
             "--max-new-tokens", str(args.max_new_tokens), "--max-history", str(args.max_history),
             "--shadow-rate", "0", "--log-level", "warning"]
    if args.torch_threads:
        flags += ["--torch-threads", str(args.torch_threads)]
    if args.server_log:
        log_path = args.server_log
    else:
        fd, name = tempfile.mkstemp(prefix="dgr2-bench-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    server = ServerProcess(flags, log_path, args.startup_timeout)
    runs: list[dict] = []
    try:
        import httpx

        for d in decoders:
            bodies = [{"history": e.history, "candidates": e.candidates, "decoder": d,
                       **({"top_n": args.top_n} if args.top_n else {})} for e in examples]
            for body in bodies[:2]:  # warm-up, not counted (the server has warmed itself on a tiny request)
                httpx.post(f"{server.url}/v1/rerank", json=body, timeout=args.request_timeout).raise_for_status()
            for c in levels:
                before = batch_totals(httpx.get(f"{server.url}/metrics", timeout=30).text, d)
                result = run_level(server.url, bodies, c, args.duration, args.request_timeout)
                after = batch_totals(httpx.get(f"{server.url}/metrics", timeout=30).text, d)
                runs.append(level_record(d, c, result, after[0] - before[0], after[1] - before[1]))
                r = runs[-1]
                log.info("%s c=%d: %.2f req/s, p50 %s ms, p99 %s ms, mean batch %s, errors %d", d, c,
                         r["requests_per_s"], r["p50_ms"], r["p99_ms"], r["mean_batch_size"], r["errors"])
    finally:
        code = server.stop()
        if code not in (0, -signal.SIGTERM):  # uvicorn re-raises the SIGTERM it drained on
            log.warning("the server exited with code %s:\n%s", code, server.log_tail())
        if not args.server_log:
            log_path.unlink(missing_ok=True)
    for r in runs:  # throughput relative to one request at a time (the batching goal: >= 4x at 16)
        base = next((b for b in runs if b["decoder"] == r["decoder"] and b["concurrency"] == 1), None)
        if base and base["requests_per_s"]:
            r["speedup_vs_c1"] = round(r["requests_per_s"] / base["requests_per_s"], 3)

    overhead = []
    for d in decoders:
        c1 = next((r for r in runs if r["decoder"] == d and r["concurrency"] == 1), None)
        raw_p50 = percentile(raw[d], 50)
        row = {"decoder": d, "raw_decode_p50_ms": round(raw_p50, 2), "raw_requests": len(raw[d])}
        if c1 and c1["p50_ms"] is not None:
            row.update(c1_p50_ms=c1["p50_ms"], server_decode_p50_ms=c1["server_decode_p50_ms"],
                       server_queue_p50_ms=c1["server_queue_p50_ms"],
                       overhead_ms=round(c1["p50_ms"] - raw_p50, 2),
                       overhead_pct=round(100 * (c1["p50_ms"] - raw_p50) / raw_p50, 2))
        overhead.append(row)

    machine = common.machine_info(device)
    machine.update(**prompts, users=len(examples), load="closed loop, separate process over loopback",
                   command=common.command_line(args), wall_s=round(time.monotonic() - started, 1))
    server_cfg = {"model": args.model, "ar": args.ar, "diffusion": args.diffusion, "device": device,
                  "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                  "queue_limit": args.queue_limit, "max_new_tokens": args.max_new_tokens,
                  "torch_threads": args.torch_threads, "top_n": args.top_n}
    result = {"machine": machine, "server": server_cfg, "runs": runs, "overhead": overhead}
    if args.out:
        common.write_json(args.out, result)
    if args.json:
        print(json.dumps(result))
    else:
        from dgr2.bench.kernels.common import print_rows

        print_rows([{k: v for k, v in r.items() if k != "error_statuses"} for r in runs])
        print()
        print_rows(overhead)
    return 0

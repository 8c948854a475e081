#!/usr/bin/env python3
"""uniapi benchmark harness: what does the gateway add to every call?

Targets, measured side by side in one run:
  direct   the load generator talks straight to the upstream
  nginx    a bare nginx reverse proxy in front of the same upstream (the floor for "one more hop")
  uniapi   the release binary, SQLite, a real user key, billing/rate limits/request logs on
  litellm  (--with-peers) LiteLLM proxy from PyPI in a virtualenv this script creates
  portkey  (--with-peers) the Portkey gateway from npm

Each target runs pinned to CPU 0 (taskset -c 0); the load generator and the upstream share CPU 1.
Python 3.11 standard library only; the load generators are wrk and oha (see bench/README.md).

    python3 bench/run.py --quick        # one repetition, ~3 s per phase (what CI runs)
    python3 bench/run.py                # 3 repetitions, 10 s per phase, median and spread
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

UPSTREAM_KEY = "sk-bench"
USER_KEY = "sk-bench-user-0000000000000000000000000000000000000000"
ADMIN_KEY = "bench-admin-key-0123456789"
LITELLM_KEY = "sk-litellm-bench-0000000000"
CHAT_MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"

TARGET_CPU = "0"
LOADGEN_CPU = "1"  # load generator and upstream

CHAT_BODY = json.dumps(
    {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hello! How are you today?"}]},
    separators=(",", ":"),
)
STREAM_BODY = json.dumps(
    {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Hello! How are you today?"}],
        "stream": True,
    },
    separators=(",", ":"),
)
EMBED_BODY = json.dumps({"model": EMBED_MODEL, "input": "Hello!"}, separators=(",", ":"))

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_tree(root: int) -> list[int]:
    """root and all its descendants (nginx master + worker, npx + node, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of the processes."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        user += int(fields[11])  # utime, stime: fields 14 and 15 of stat
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_times(pids))


def wait_quiet(targets: list, limit: float = 300.0) -> dict[str, float]:
    """Waits until every target's processes are idle (under 5 % of a core over a second), up to `limit`
    seconds: a peer that queued more than it could serve (LiteLLM at 1,000 req/s keeps working through
    the backlog long after the load stops) would otherwise share CPU 0 with whatever is timed next.
    Returns how long each busy target took to go quiet."""
    waited: dict[str, float] = {}
    start = time.monotonic()
    while time.monotonic() - start < limit:
        before = {t.name: cpu_seconds(t.pids()) for t in targets}
        time.sleep(1.0)
        busy = [t.name for t in targets if cpu_seconds(t.pids()) - before[t.name] > 0.05]
        if not busy:
            break
        for name in busy:
            waited[name] = time.monotonic() - start
    else:
        log(f"  still busy after {limit:.0f} s: {', '.join(waited)}")
    for name, secs in waited.items():
        log(f"  waited {secs:.0f} s for {name} to go idle")
    return waited


def memory_kb(pids: list[int]) -> tuple[int, int]:
    """(sum of VmHWM, sum of VmRSS) over the processes, in kB."""
    hwm = rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
        except OSError:
            continue
    return hwm, rss


class RssSampler:
    """The largest summed VmRSS of the processes, sampled every 100 ms until `stop` (in kB)."""

    def __init__(self, pids: list[int]):
        self.pids, self.peak, self.done = pids, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, memory_kb(self.pids)[1])
            self.done.wait(0.1)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return max(self.peak, memory_kb(self.pids)[1])


class Proc:
    """A child process in its own session, pinned to a CPU, output to a log file."""

    def __init__(self, name: str, cmd: list[str], cpu: str, logdir: Path, env=None, cwd=None):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self.log_file = open(self.log_path, "wb")
        full = ["taskset", "-c", cpu, *cmd]
        log(f"start {name}: {' '.join(full)}")
        self.popen = subprocess.Popen(
            full,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
        self.pid = self.popen.pid  # taskset execs the command: same pid

    def pids(self) -> list[int]:
        return proc_tree(self.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)  # the session this script created
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=5)
        self.log_file.close()


def http(method: str, url: str, body: str | None = None, headers=None, timeout=5.0):
    req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(proc: Proc, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited early:\n{proc.tail()}")
        try:
            if check():
                return
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(0.1)
    raise BenchError(f"{proc.name} not ready after {timeout}s ({last}):\n{proc.tail()}")


# --------------------------------------------------------------------------------------------
# targets


class Target:
    def __init__(self, name: str, url: str, headers: dict[str, str], proc: Proc | None):
        self.name = name
        self.url = url.rstrip("/")
        self.headers = headers  # auth and any routing headers the target needs
        self.proc = proc
        self.no_stream: str | None = None  # why streaming figures are missing (peers only)
        self.no_embed: str | None = None  # why the embeddings figure is missing (peers only)

    def pids(self) -> list[int]:
        return self.proc.pids() if self.proc else []


def locate_binary(args) -> Path:
    if args.bin:
        path = Path(args.bin).resolve()
    else:
        if not args.no_build:
            log("cargo build --release -p uniapi (waits for the cargo lock if others hold it)")
            subprocess.run(["cargo", "build", "--release", "-p", "uniapi"], cwd=ROOT, check=True)
        path = ROOT / "target" / "release" / "uniapi"
    if not path.is_file():
        raise BenchError(f"no uniapi binary at {path} (build it or pass --bin)")
    return path


def start_sandbox(binary: Path, work: Path, chunks: int) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(
        "upstream-sandbox",
        [str(binary), "sandbox", "--listen", f"127.0.0.1:{port}", "--key", UPSTREAM_KEY,
         "--stream-chunks", str(chunks), "--chunk-delay-ms", "0"],
        LOADGEN_CPU,
        work,
        env={**os.environ, "UNIAPI_LOG": "warn"},
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, lambda: "listening on" in proc.log_path.read_text(errors="replace")
               and http("POST", url + "/v1/chat/completions", CHAT_BODY, json_headers(UPSTREAM_KEY))[0] == 200, 20)
    return proc, url


def nginx_common(prefix: Path) -> str:
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / d).mkdir(parents=True, exist_ok=True)
    return f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
"""


def start_nginx_proxy(nginx: str, work: Path, upstream_url: str, wrap: list[str] | None = None) -> Target:
    prefix = work / "nginx-proxy"
    prefix.mkdir()
    port = free_port()
    up = upstream_url.removeprefix("http://")
    conf = nginx_common(prefix) + f"""
  upstream up {{ server {up}; keepalive 256; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
"""
    if wrap:
        conf = "master_process off;\n" + conf  # one process for the profiler to follow
    (prefix / "nginx.conf").write_text(conf)
    proc = Proc("nginx-proxy", [*(wrap or []), nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                "-e", str(prefix / "error.log")], TARGET_CPU, work)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    wait_ready(proc, lambda: http("POST", url + "/v1/chat/completions", CHAT_BODY,
                                  {**headers, "Content-Type": "application/json"})[0] == 200, 20)
    return Target("nginx", url, headers, proc)


def start_nginx_fixed_upstream(nginx: str, work: Path, cpu: str) -> tuple[Proc, str]:
    """A fixed-response upstream (JSON chat + embeddings only: nginx cannot branch on the body)."""
    prefix = work / "nginx-fixed"
    prefix.mkdir()
    port = free_port()
    chat = json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": CHAT_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the fixed upstream."},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 14, "completion_tokens": 7, "total_tokens": 21}}, separators=(",", ":"))
    emb = json.dumps({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                      "model": EMBED_MODEL, "usage": {"prompt_tokens": 2, "total_tokens": 2}}, separators=(",", ":"))
    conf = nginx_common(prefix) + f"""
  server {{
    listen 127.0.0.1:{port} reuseport;
    default_type application/json;
    location = /v1/chat/completions {{ return 200 '{chat}'; }}
    location = /v1/embeddings {{ return 200 '{emb}'; }}
  }}
}}
"""
    (prefix / "nginx.conf").write_text(conf)
    proc = Proc("upstream-nginx-fixed", [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                         "-e", str(prefix / "error.log")], cpu, work)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, lambda: http("POST", url + "/v1/chat/completions", CHAT_BODY,
                                  json_headers(UPSTREAM_KEY))[0] == 200, 20)
    return proc, url


def start_uniapi(binary: Path, work: Path, upstream_url: str, wrap: list[str] | None = None,
                 name: str = "uniapi") -> Target:
    port = free_port()
    d = work / name
    d.mkdir()
    conf = f"""
[server]
listen = "127.0.0.1:{port}"

[database]
url = "sqlite://{d}/bench.db"

[admin]
key = "{ADMIN_KEY}"

[[channels]]
name = "bench-upstream"
kind = "openai"
base_url = "{upstream_url}"
keys = ["{UPSTREAM_KEY}"]
models = ["{CHAT_MODEL}", "{EMBED_MODEL}"]

[prices."{CHAT_MODEL}"]
input_per_mtok = 0.15
output_per_mtok = 0.6

[prices."{EMBED_MODEL}"]
input_per_mtok = 0.02

[[users]]
name = "bench"
balance_usd = 1000000.0

[[users.keys]]
name = "k"
key = "{USER_KEY}"
"""
    (d / "uniapi.toml").write_text(conf)
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIAPI_")}
    proc = Proc(name, [*(wrap or []), str(binary), "serve", "--config", str(d / "uniapi.toml")], TARGET_CPU, work,
                env=env, cwd=d)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {USER_KEY}"}
    wait_ready(proc, lambda: http("POST", url + "/v1/chat/completions", CHAT_BODY,
                                  {**headers, "Content-Type": "application/json"})[0] == 200, 60)
    return Target(name, url, headers, proc)


def start_litellm(work: Path, upstream_url: str) -> Target:
    venv_dir = BENCH / ".work" / "litellm-venv"
    py = venv_dir / "bin" / "python"
    if not (venv_dir / "bin" / "litellm").exists():
        log(f"creating virtualenv {venv_dir} and installing litellm[proxy] (a few minutes)")
        subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "litellm[proxy]"], check=True)
    port = free_port()
    d = work / "litellm"
    d.mkdir()
    (d / "config.yaml").write_text(f"""model_list:
  - model_name: {CHAT_MODEL}
    litellm_params:
      model: openai/{CHAT_MODEL}
      api_base: {upstream_url}/v1
      api_key: {UPSTREAM_KEY}
  - model_name: {EMBED_MODEL}
    litellm_params:
      model: openai/{EMBED_MODEL}
      api_base: {upstream_url}/v1
      api_key: {UPSTREAM_KEY}
general_settings:
  master_key: {LITELLM_KEY}
litellm_settings:
  telemetry: false
""")
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    proc = Proc("litellm", [str(venv_dir / "bin" / "litellm"), "--config", str(d / "config.yaml"),
                            "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                TARGET_CPU, work, env=env, cwd=d)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {LITELLM_KEY}"}
    wait_ready(proc, lambda: http("POST", url + "/v1/chat/completions", CHAT_BODY,
                                  {**headers, "Content-Type": "application/json"})[0] == 200, 180)
    return Target("litellm", url, headers, proc)


def start_portkey(work: Path, upstream_url: str) -> Target:
    npm_dir = BENCH / ".work" / "portkey"
    entry = npm_dir / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if not entry.exists():
        if not shutil.which("npm"):
            raise BenchError("portkey needs node and npm")
        log(f"installing @portkey-ai/gateway into {npm_dir}")
        npm_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", str(npm_dir), "--no-audit", "--no-fund",
                        "@portkey-ai/gateway"], check=True)
    if not entry.exists():
        raise BenchError(f"portkey entry point not found at {entry}")
    port = free_port()
    proc = Proc("portkey", ["node", str(entry), f"--port={port}"], TARGET_CPU, work,
                env={**os.environ, "PORT": str(port), "NODE_ENV": "production"})
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {UPSTREAM_KEY}", "x-portkey-provider": "openai",
               "x-portkey-custom-host": f"{upstream_url}/v1"}
    wait_ready(proc, lambda: http("POST", url + "/v1/chat/completions", CHAT_BODY,
                                  {**headers, "Content-Type": "application/json"})[0] == 200, 60)
    return Target("portkey", url, headers, proc)


def json_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def sanity_check(t: Target) -> dict[str, str]:
    """Every target must answer each kind of request correctly before it is timed.

    Returns {kind: problem} for the kinds that failed (chat, stream, embeddings)."""
    h = {**t.headers, "Content-Type": "application/json"}
    problems = {}
    status, body = http("POST", t.url + "/v1/chat/completions", CHAT_BODY, h)
    if status != 200 or b'"choices"' not in body:
        problems["chat"] = f"chat JSON answered {status}: {body[:300]!r}"
    status, body = http("POST", t.url + "/v1/chat/completions", STREAM_BODY, h)
    if status != 200 or b"data:" not in body or b"[DONE]" not in body:
        problems["stream"] = f"chat SSE answered {status}: {body[:300]!r}"
    status, body = http("POST", t.url + "/v1/embeddings", EMBED_BODY, h)
    if status != 200 or b'"embedding"' not in body:
        problems["embeddings"] = f"embeddings answered {status}: {body[:300]!r}"
    return problems


# --------------------------------------------------------------------------------------------
# load generators


def lua_string(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def wrk_script(work: Path, name: str, headers: dict[str, str], body: str) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(body)}",
             'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items()]
    path = work / f"wrk-{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(url: str, script: Path, conns: int, seconds: float) -> dict:
    cmd = ["taskset", "-c", LOADGEN_CPU, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s",
           "--timeout", "5s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise BenchError(f"wrk failed: {out.stderr or out.stdout}")
    text = out.stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m or not rps:
        raise BenchError(f"cannot parse wrk output:\n{text}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    return {"requests": int(m.group(1)), "rps": float(rps.group(1)), "errors": errors}


def oha_version() -> str | None:
    oha = shutil.which("oha") or (str(Path.home() / ".cargo/bin/oha") if (Path.home() / ".cargo/bin/oha").exists() else None)
    return oha


def run_oha(oha: str, url: str, headers: dict[str, str], body: str, rate: int, seconds: float, conns: int) -> dict:
    cmd = ["taskset", "-c", LOADGEN_CPU, oha, "--no-tui", "--output-format", "json", "-z", f"{seconds}s",
           "-q", str(rate), "--latency-correction", "-c", str(conns), "-m", "POST",
           "-H", "Content-Type: application/json", "-d", body]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise BenchError(f"oha failed: {out.stderr or out.stdout}")
    data = json.loads(out.stdout)
    pct = data["latencyPercentiles"]
    codes = data.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    # requests still in flight when -z ends are cancelled by oha ("aborted due to deadline"): not failures
    errors = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(
        v for k, v in data.get("errorDistribution", {}).items() if "deadline" not in k)
    return {"p50_ms": pct["p50"] * 1e3, "p90_ms": pct["p90"] * 1e3, "p99_ms": pct["p99"] * 1e3,
            "requests": ok, "errors": errors, "achieved_rps": data["summary"]["requestsPerSec"],
            "tool": "oha --latency-correction"}


async def _open_loop(host: str, port: int, path: str, headers: dict[str, str], body: str, rate: int,
                     seconds: float, conns: int) -> dict:
    """Fallback when oha is missing: an open-loop client, latency from the scheduled send time."""
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (head + f"Content-Length: {len(body.encode())}\r\n\r\n").encode() + body.encode()
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await asyncio.open_connection(host, port))
    lat: list[float] = []
    errors = 0

    async def one(at: float) -> None:
        nonlocal errors
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        reader, writer = await pool.get()
        try:
            writer.write(request)
            status_line = await reader.readline()
            length, chunked = 0, False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                k, _, v = line.decode("latin-1").partition(":")
                if k.lower() == "content-length":
                    length = int(v)
                elif k.lower() == "transfer-encoding" and "chunked" in v.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readline()).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
            lat.append(time.perf_counter() - at)
            if b" 200 " not in status_line:
                errors += 1
            pool.put_nowait((reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            pool.put_nowait(await asyncio.open_connection(host, port))

    start = time.perf_counter() + 0.05
    n = int(rate * seconds)
    await asyncio.gather(*(one(start + i / rate) for i in range(n)))
    elapsed = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait()[1].close()
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3  # noqa: E731
    return {"p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99), "requests": len(lat) - errors,
            "errors": errors, "achieved_rps": len(lat) / elapsed, "tool": "python open-loop fallback"}


def run_open_loop_fallback(url: str, headers, body, rate, seconds, conns) -> dict:
    # Runs in a child pinned to the load-generator CPU so that it does not share the target's core.
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    path = "/" + url.removeprefix("http://").split("/", 1)[1]
    args = json.dumps([host, int(port), path, headers, body, rate, seconds, conns])
    code = ("import json,sys,asyncio; sys.path.insert(0, %r); import run; "
            "a=json.loads(sys.argv[1]); print(json.dumps(asyncio.run(run._open_loop(*a))))" % str(BENCH))
    out = subprocess.run(["taskset", "-c", LOADGEN_CPU, sys.executable, "-c", code, args],
                         capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise BenchError(f"open-loop fallback failed: {out.stderr}")
    return json.loads(out.stdout)


def measure_ttfb(url: str, headers: dict[str, str], n: int) -> dict:
    """Time from sending a streamed chat request on an open, idle connection to the first SSE byte.

    Runs in this process (which is pinned to the load-generator CPU); sequential requests; each on a
    fresh connection that sat idle for 20 ms before the request was written."""
    host, port = url.removeprefix("http://").split(":")
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (head + f"Connection: close\r\nContent-Length: {len(STREAM_BODY)}\r\n\r\n").encode() + STREAM_BODY.encode()
    samples, errors = [], 0
    for _ in range(n):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            time.sleep(0.02)
            buf = b""
            t0 = time.perf_counter()
            s.sendall(request)
            t1 = None
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if t1 is None:
                    end = buf.find(b"\r\n\r\n")
                    if end >= 0 and b"data:" in buf[end:]:
                        t1 = time.perf_counter()
            ok = buf.startswith(b"HTTP/1.1 200") and b"[DONE]" in buf and t1 is not None
            if ok:
                samples.append((t1 - t0) * 1e3)
            else:
                errors += 1
    if not samples:
        raise BenchError(f"no successful streamed request to {url}")
    return {"ttfb_p50_ms": statistics.median(samples), "ttfb_min_ms": min(samples), "samples": len(samples),
            "errors": errors}


# --------------------------------------------------------------------------------------------
# one repetition against one target


def bench_target(t: Target, args, work: Path, oha: str | None) -> dict:
    chat_url = t.url + "/v1/chat/completions"
    chat_lua = wrk_script(work, t.name + "-chat", t.headers, CHAT_BODY)
    stream_lua = wrk_script(work, t.name + "-stream", t.headers, STREAM_BODY)
    embed_lua = wrk_script(work, t.name + "-embed", t.headers, EMBED_BODY)
    secs = args.seconds
    r: dict = {}
    errors = 0
    # the process's high-water RSS after each phase: says which phase raised `peak_rss_mb` (a target
    # process lives through all repetitions, so its VmHWM carries over from one to the next)
    hwm_after: dict[str, float] = {}

    def note_hwm(phase: str) -> None:
        if t.proc:
            hwm_after[phase] = round(memory_kb(t.pids())[0] / 1024, 2)

    run_wrk(chat_url, chat_lua, 32, 1)  # warm-up: connections, pools, caches
    note_hwm("warm-up")

    for conns in (32, 128):
        pids = t.pids()
        cpu0 = cpu_seconds(pids)
        sampler = RssSampler(pids) if (t.proc and conns == 128) else None
        w = run_wrk(chat_url, chat_lua, conns, secs)
        if sampler:
            r["rss_c128_mb"] = sampler.stop() / 1024
        cpu1 = cpu_seconds(t.pids())
        r[f"rps_c{conns}"] = w["rps"]
        errors += w["errors"]
        if t.proc:
            r[f"cpu_s_per_1k_c{conns}"] = (cpu1 - cpu0) / max(1, w["requests"]) * 1000
        log(f"  {t.name}: closed loop c{conns}: {w['rps']:.0f} req/s ({w['errors']} errors)")
        note_hwm(f"c{conns}")

    for rate in (200, 1000):
        pids = t.pids()
        user0, sys0 = cpu_times(pids)
        if oha:
            o = run_oha(oha, chat_url, t.headers, CHAT_BODY, rate, secs, 32)
        else:
            o = run_open_loop_fallback(chat_url, t.headers, CHAT_BODY, rate, secs, 32)
        user1, sys1 = cpu_times(t.pids())
        for p in ("p50", "p90", "p99"):
            r[f"{p}_ms_at_{rate}"] = o[f"{p}_ms"]
        r[f"achieved_rps_at_{rate}"] = o["achieved_rps"]
        r["latency_tool"] = o["tool"]
        if t.proc:
            done = max(1, o["requests"])
            r[f"cpu_s_per_1k_at_{rate}"] = (user1 - user0 + sys1 - sys0) / done * 1000
            # split: the user part is the target's own code, the system part mostly the sockets' work
            r[f"cpu_user_us_per_req_at_{rate}"] = (user1 - user0) / done * 1e6
            r[f"cpu_sys_us_per_req_at_{rate}"] = (sys1 - sys0) / done * 1e6
        errors += o["errors"]
        log(f"  {t.name}: {rate} req/s: p50 {o['p50_ms']:.3f} p90 {o['p90_ms']:.3f} p99 {o['p99_ms']:.3f} ms"
            f" ({o['errors']} errors)")
        note_hwm(f"{rate}/s")

    # embeddings: the other request shape the upstream serves (priced by input tokens, no output)
    if t.no_embed is None:
        pids = t.pids()
        cpu0 = cpu_seconds(pids)
        w = run_wrk(t.url + "/v1/embeddings", embed_lua, 32, secs)
        cpu1 = cpu_seconds(t.pids())
        r["embed_rps_c32"] = w["rps"]
        if t.proc:
            r["cpu_s_per_1k_embed_c32"] = (cpu1 - cpu0) / max(1, w["requests"]) * 1000
        errors += w["errors"]
        log(f"  {t.name}: embeddings c32: {w['rps']:.0f} req/s ({w['errors']} errors)")
        note_hwm("embeddings")

    if t.no_stream is None:
        w = run_wrk(chat_url, stream_lua, 32, secs)
        r["stream_rps_c32"] = w["rps"]
        errors += w["errors"]
        log(f"  {t.name}: streams ({args.chunks} chunks) c32: {w['rps']:.0f} req/s ({w['errors']} errors)")
        note_hwm("streams")

        tt = measure_ttfb(t.url, t.headers, args.ttfb_n)
        r["ttfb_ms"] = tt["ttfb_p50_ms"]
        errors += tt["errors"]
        log(f"  {t.name}: time to first SSE byte (median of {tt['samples']}): {tt['ttfb_p50_ms']:.3f} ms")
        note_hwm("ttfb")

    if t.proc:
        hwm, rss = memory_kb(t.pids())
        r["peak_rss_mb"] = hwm / 1024
        r["rss_mb_end"] = rss / 1024
        r["hwm_after_mb"] = hwm_after
    r["errors"] = errors
    return r


# --------------------------------------------------------------------------------------------
# instruction counts (valgrind --tool=callgrind): repeatable whatever else the machine is doing


def keepalive_requests(url: str, headers: dict[str, str], body: str, n: int,
                       path: str = "/v1/chat/completions") -> int:
    """Sends `n` POSTs on one keep-alive connection; returns how many answered 200."""
    import http.client
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    ok = 0
    for _ in range(n):
        conn.request("POST", path, body=body, headers={**headers, "Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        ok += resp.status == 200
    conn.close()
    return ok


def callgrind_total(out_file: Path) -> int:
    for line in out_file.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise BenchError(f"no totals in {out_file}")


def profile(binary: Path, nginx: str, work: Path, n: int) -> dict:
    """Instructions per request of uniapi and of the nginx proxy, for chat JSON and for streams, each
    counted by callgrind after a warm-up; the annotated hot spots of uniapi go to bench/.work/."""
    if not shutil.which("valgrind"):
        raise BenchError("valgrind not found: apt-get install -y valgrind")
    upstream, up_url = start_sandbox(binary, work, 16)
    out: dict = {"requests": n}
    outdir = BENCH / ".work"
    outdir.mkdir(exist_ok=True)
    try:
        for name in ("uniapi", "nginx"):
            cg = work / f"callgrind.{name}.%p"
            wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}", "--instr-atstart=no"]
            t = (start_uniapi(binary, work, up_url, wrap) if name == "uniapi"
                 else start_nginx_proxy(nginx, work, up_url, wrap))
            try:
                keepalive_requests(t.url, t.headers, CHAT_BODY, 200)
                figures = {}
                for kind, path, body, count in (("chat", "/v1/chat/completions", CHAT_BODY, n),
                                                ("stream", "/v1/chat/completions", STREAM_BODY, max(1, n // 4)),
                                                ("embed", "/v1/embeddings", EMBED_BODY, n)):
                    for pid in t.pids():
                        subprocess.run(["callgrind_control", "-i", "on", str(pid)], capture_output=True)
                    ok = keepalive_requests(t.url, t.headers, body, count, path)
                    for pid in t.pids():
                        subprocess.run(["callgrind_control", "-i", "off", str(pid)], capture_output=True)
                        subprocess.run(["callgrind_control", "-d", kind, str(pid)], capture_output=True)
                    if ok != count:
                        raise BenchError(f"{name}: {count - ok} of {count} {kind} requests failed")
                    time.sleep(0.5)
                    # dumps are `<out file>.<n>` (the bare out file is only complete at exit)
                    files = sorted(work.glob(f"callgrind.{name}.*.*"), key=lambda f: f.stat().st_mtime)
                    dumps = [f for f in files if f not in figures.get("_seen", [])]
                    if not dumps:
                        raise BenchError(f"callgrind wrote no dump for {name} {kind}")
                    figures.setdefault("_seen", []).extend(dumps)
                    total = sum(callgrind_total(f) for f in dumps)
                    figures[f"{kind}_instructions_per_request"] = total // count
                    if name == "uniapi":
                        for f in dumps:
                            ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=95", str(f)],
                                                 capture_output=True, text=True).stdout
                            (outdir / f"callgrind-uniapi-{kind}.txt").write_text(ann)
                            shutil.copy2(f, outdir / f"callgrind.out.uniapi-{kind}")
                    log(f"  {name} {kind}: {figures[f'{kind}_instructions_per_request']:,} instructions per request")
                figures.pop("_seen", None)
                out[name] = figures
            finally:
                t.proc.stop()
        for kind in ("chat", "stream", "embed"):
            k = f"{kind}_instructions_per_request"
            out[f"{kind}_uniapi_vs_nginx"] = out["uniapi"][k] / max(1, out["nginx"][k])
    finally:
        upstream.stop()
    return out


# --------------------------------------------------------------------------------------------
# soak: a steady mixed load for a long time, RSS sampled every second


def soak(t: Target, oha: str | None, work: Path, seconds: float, rate: int, stream_rate: int) -> dict:
    """Runs chat JSON at `rate` req/s and streamed chat at `stream_rate` req/s against `t` for
    `seconds`, sampling the target's RSS every second. Memory is flat when the last tenth of the run
    holds no more than the second tenth (after warm-up) plus a small allowance."""
    chat_url = t.url + "/v1/chat/completions"
    loads = []
    secs = max(5, round(seconds))
    for body, r in ((CHAT_BODY, rate), (STREAM_BODY, stream_rate)):
        if oha:
            cmd = ["taskset", "-c", LOADGEN_CPU, oha, "--no-tui", "--output-format", "json", "-z", f"{secs}s",
                   "-q", str(r), "-c", "16", "-m", "POST", "-H", "Content-Type: application/json", "-d", body]
            for k, v in t.headers.items():
                cmd += ["-H", f"{k}: {v}"]
        else:
            lua = wrk_script(work, t.name + f"-soak-{r}", t.headers, body)
            cmd = ["taskset", "-c", LOADGEN_CPU, "wrk", "-t1", "-c4", f"-d{secs}s", "--timeout", "5s", "-s", str(lua)]
        cmd.append(chat_url)
        loads.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    samples = []
    t0 = time.monotonic()
    try:
        while any(p.poll() is None for p in loads):
            _, rss = memory_kb(t.pids())
            samples.append([round(time.monotonic() - t0, 1), round(rss / 1024, 2)])
            time.sleep(1.0)
    finally:
        for p in loads:  # an interrupted run leaves no load generator behind
            if p.poll() is None:
                p.kill()
    requests = errors = 0
    for p in loads:
        out, err = p.communicate()
        if p.returncode != 0:
            raise BenchError(f"soak load failed: {err or out}")
        if oha:
            data = json.loads(out)
            codes = data.get("statusCodeDistribution", {})
            requests += sum(v for k, v in codes.items() if k.startswith("2"))
            errors += sum(v for k, v in codes.items() if not k.startswith("2")) + sum(
                v for k, v in data.get("errorDistribution", {}).items() if "deadline" not in k)
        else:
            m = re.search(r"(\d+) requests in", out)
            requests += int(m.group(1)) if m else 0
    rss = [s[1] for s in samples]
    n = len(rss)
    tenth = max(1, n // 10)
    early = statistics.mean(rss[tenth:2 * tenth] or rss[:1])
    late = statistics.mean(rss[-tenth:])
    hwm, _ = memory_kb(t.pids())
    growth = late - early
    result = {"seconds": secs, "chat_rate": rate, "stream_rate": stream_rate, "requests": requests, "errors": errors,
              "rss_start_mb": rss[0] if rss else None, "rss_early_mb": round(early, 2), "rss_late_mb": round(late, 2),
              "rss_max_mb": max(rss) if rss else None, "peak_rss_mb": round(hwm / 1024, 2),
              "growth_mb": round(growth, 2), "flat": growth <= max(2.0, 0.05 * early), "samples": samples}
    log(f"  soak {t.name}: {requests} requests, {errors} errors, RSS {result['rss_start_mb']} -> "
        f"{result['rss_late_mb']} MB (max {result['rss_max_mb']}), growth {growth:+.2f} MB: "
        f"{'flat' if result['flat'] else 'GROWING'}")
    return result


# every figure a run must produce; `--quick` in CI fails when one is missing (never on a timing)
REQUIRED_ALL = ["rps_c32", "rps_c128", "p50_ms_at_200", "p90_ms_at_200", "p99_ms_at_200", "p50_ms_at_1000",
                "p90_ms_at_1000", "p99_ms_at_1000", "stream_rps_c32", "ttfb_ms", "embed_rps_c32"]
REQUIRED_PROCESS = ["peak_rss_mb", "rss_c128_mb", "cpu_s_per_1k_c32", "cpu_s_per_1k_c128", "cpu_s_per_1k_at_200",
                    "cpu_s_per_1k_at_1000", "cpu_s_per_1k_embed_c32", "cpu_user_us_per_req_at_1000",
                    "cpu_sys_us_per_req_at_1000"]


def missing_figures(results: dict) -> list[str]:
    missing = []
    summary = results.get("summary", {})
    for t in ("direct", "nginx", "uniapi"):
        if t not in summary:
            missing.append(f"{t}: not measured")
            continue
        need = REQUIRED_ALL + (REQUIRED_PROCESS if t != "direct" else [])
        missing += [f"{t}: {m}" for m in need if m not in summary[t]]
    derived = results.get("derived", {}).get("uniapi", {})
    for m in ("added_p50_ms_at_1000", "added_p99_ms_at_1000", "added_ttfb_ms", "rps_c32_vs_nginx"):
        if m not in derived:
            missing.append(f"uniapi: {m}")
    if results.get("soak_requested"):
        s = results.get("soak") or {}
        for m in ("rss_early_mb", "rss_late_mb", "growth_mb", "requests"):
            if s.get(m) is None:
                missing.append(f"soak: {m}")
        if not s.get("requests"):
            missing.append("soak: no requests served")
    return missing


# --------------------------------------------------------------------------------------------
# reporting

METRICS = ["rps_c32", "rps_c128", "p50_ms_at_200", "p90_ms_at_200", "p99_ms_at_200", "p50_ms_at_1000",
           "p90_ms_at_1000", "p99_ms_at_1000", "achieved_rps_at_200", "achieved_rps_at_1000", "stream_rps_c32",
           "embed_rps_c32", "cpu_s_per_1k_embed_c32",
           "ttfb_ms", "peak_rss_mb", "rss_c128_mb", "rss_mb_end", "cpu_s_per_1k_c32", "cpu_s_per_1k_c128", "cpu_s_per_1k_at_200",
           "cpu_s_per_1k_at_1000", "cpu_user_us_per_req_at_200", "cpu_sys_us_per_req_at_200",
           "cpu_user_us_per_req_at_1000", "cpu_sys_us_per_req_at_1000", "errors"]


def summarize(runs: list[dict]) -> dict:
    out = {}
    for m in METRICS:
        vals = [r[m] for r in runs if m in r]
        if vals:
            out[m] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}
    return out


def derive(summary: dict[str, dict]) -> dict[str, dict]:
    med = {t: {m: v["median"] for m, v in s.items()} for t, s in summary.items()}
    out = {}
    d = med.get("direct", {})
    n = med.get("nginx", {})
    for t, s in med.items():
        x = {}
        for m in ("p50_ms_at_200", "p90_ms_at_200", "p99_ms_at_200", "p50_ms_at_1000", "p90_ms_at_1000",
                  "p99_ms_at_1000", "ttfb_ms"):
            if m in s and m in d:
                x["added_" + m] = s[m] - d[m]
        for m in ("rps_c32", "rps_c128", "stream_rps_c32", "embed_rps_c32"):
            if m in s and d.get(m):
                x[m + "_vs_direct"] = s[m] / d[m]
            if m in s and n.get(m):
                x[m + "_vs_nginx"] = s[m] / n[m]
        out[t] = x
    return out


def fmt(summary: dict, m: str, digits: int, reps: int) -> str:
    v = summary.get(m)
    if v is None:
        return "—"
    s = f"{v['median']:.{digits}f}"
    if reps > 1:
        s += f" ({v['min']:.{digits}f}–{v['max']:.{digits}f})"
    return s


def fnum(x, digits: int, sign=False) -> str:
    if x is None:
        return "—"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def cpu_split(summary: dict, rate: int) -> str:
    user = summary.get(f"cpu_user_us_per_req_at_{rate}")
    system = summary.get(f"cpu_sys_us_per_req_at_{rate}")
    if user is None or system is None:
        return "—"
    return f"{user['median']:.0f} + {system['median']:.0f}"


def markdown(results: dict) -> str:
    reps = results["repetitions"]
    summ = results["summary"]
    der = results["derived"]
    lines = []
    spread = " Values are the median (min–max) of the repetitions." if reps > 1 else ""
    lines.append(f"Mode: {'quick' if results['quick'] else 'full'}, {reps} repetition(s), {results['seconds']} s per "
                 f"phase, upstream: {results['upstream']}, fixed-rate latency by {results['latency_tool']}.{spread}")
    lines.append("")
    lines.append("Throughput (closed loop, non-stream chat JSON; streams of "
                 f"{results['stream_chunks']} chunks; embeddings), resources")
    lines.append("")
    lines.append("| target | req/s c32 | ×direct | ×nginx | req/s c128 | ×direct | ×nginx | streams/s c32 | ×nginx "
                 "| embeddings/s c32 | ×nginx "
                 "| RSS MB during c128 | peak RSS MB (whole run) | CPU s/1k req (c32) | CPU s/1k req (1000/s) | errors |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t, s in summ.items():
        x = der[t]
        lines.append(
            f"| {t} | {fmt(s, 'rps_c32', 0, reps)} | {fnum(x.get('rps_c32_vs_direct'), 2)} | "
            f"{fnum(x.get('rps_c32_vs_nginx'), 2)} | {fmt(s, 'rps_c128', 0, reps)} | "
            f"{fnum(x.get('rps_c128_vs_direct'), 2)} | {fnum(x.get('rps_c128_vs_nginx'), 2)} | "
            f"{fmt(s, 'stream_rps_c32', 0, reps)} | {fnum(x.get('stream_rps_c32_vs_nginx'), 2)} | "
            f"{fmt(s, 'embed_rps_c32', 0, reps)} | {fnum(x.get('embed_rps_c32_vs_nginx'), 2)} | "
            f"{fmt(s, 'rss_c128_mb', 1, reps)} | {fmt(s, 'peak_rss_mb', 1, reps)} | {fmt(s, 'cpu_s_per_1k_c32', 3, reps)} | "
            f"{fmt(s, 'cpu_s_per_1k_at_1000', 3, reps)} | {fmt(s, 'errors', 0, reps)} |")
    lines.append("")
    lines.append("Latency in ms at a fixed rate, counted from the scheduled send time (added = target − direct); "
                 "time to first SSE byte on an idle connection")
    lines.append("")
    lines.append("| target | p50 @200 | p90 @200 | p99 @200 | added p50/p99 @200 | p50 @1000 | p90 @1000 | p99 @1000 "
                 "| added p50/p99 @1000 | CPU µs/req @1000 user + system | TTFB | added TTFB |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t, s in summ.items():
        x = der[t]
        lines.append(
            f"| {t} | {fmt(s, 'p50_ms_at_200', 3, reps)} | {fmt(s, 'p90_ms_at_200', 3, reps)} | "
            f"{fmt(s, 'p99_ms_at_200', 3, reps)} | {fnum(x.get('added_p50_ms_at_200'), 3, True)} / "
            f"{fnum(x.get('added_p99_ms_at_200'), 3, True)} | {fmt(s, 'p50_ms_at_1000', 3, reps)} | "
            f"{fmt(s, 'p90_ms_at_1000', 3, reps)} | {fmt(s, 'p99_ms_at_1000', 3, reps)} | "
            f"{fnum(x.get('added_p50_ms_at_1000'), 3, True)} / {fnum(x.get('added_p99_ms_at_1000'), 3, True)} | "
            f"{cpu_split(s, 1000)} | {fmt(s, 'ttfb_ms', 3, reps)} | {fnum(x.get('added_ttfb_ms'), 3, True)} |")
    for what, why in results.get("skipped", {}).items():
        lines.append("")
        lines.append(f"Not measured: {what}: {why[:200]}")
    sk = results.get("soak")
    if sk:
        lines.append("")
        lines.append(f"Soak (uniapi, {sk['seconds']} s, {sk['chat_rate']} chat/s + {sk['stream_rate']} streams/s, RSS "
                     f"sampled every second): {sk['requests']} requests, {sk['errors']} errors; RSS "
                     f"{sk['rss_early_mb']} MB after warm-up, {sk['rss_late_mb']} MB at the end (max "
                     f"{sk['rss_max_mb']} MB, growth {sk['growth_mb']:+.2f} MB): "
                     f"{'flat' if sk['flat'] else 'growing'}.")
    uc = results.get("upstream_compare")
    if uc:
        lines.append("")
        lines.append("Upstream candidates alone on CPU 0, wrk on CPU 1, c32 chat JSON: " +
                     ", ".join(f"{k} {v:.0f} req/s" for k, v in uc.items()))
    return "\n".join(lines)


def machine() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024} MB"
    except OSError:
        pass

    def ver(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None

    rev = ver(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {"cpu": model, "cpus": os.cpu_count(), "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "git": f"{rev}{'-dirty' if dirty else ''}",
            "wrk": ver(["wrk", "--version"]), "nginx": ver(["nginx", "-v"]),
            "oha": ver([oha_version(), "--version"]) if oha_version() else None,
            "loadavg_at_start": open("/proc/loadavg").read().split()[:3]}


# --------------------------------------------------------------------------------------------


def main() -> int:
    # a SIGTERM unwinds like Ctrl-C, so every `finally` stops what the run started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one repetition, ~3 s per phase (CI)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    ap.add_argument("--seconds", type=float, help="seconds per phase (default 10, quick 3)")
    ap.add_argument("--chunks", type=int, default=16, help="content chunks per streamed answer (default 16)")
    ap.add_argument("--ttfb-n", type=int, help="sequential requests for time to first byte (default 100, quick 30)")
    ap.add_argument("--bin", help="use this uniapi binary (skip cargo build)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build; use target/release/uniapi")
    ap.add_argument("--targets", default="direct,nginx,uniapi", help="comma-separated subset")
    ap.add_argument("--compare", metavar="BIN",
                    help="also time this other uniapi binary as the target `uniapi-b`, set up the same way "
                         "(A/B of a change in one run)")
    ap.add_argument("--with-peers", action="store_true", help="also LiteLLM and Portkey (installs them)")
    ap.add_argument("--no-oha", action="store_true", help="use the Python open-loop fallback for fixed rates")
    ap.add_argument("--no-upstream-compare", action="store_true", help="skip the sandbox vs nginx upstream check")
    ap.add_argument("--json", default=str(BENCH / "results.json"), help="where to write the results")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, SQLite)")
    ap.add_argument("--soak", type=float, default=None,
                    help="seconds of steady mixed load on uniapi with RSS sampled every second "
                         "(default: 600 in a full run, 0 = none; quick runs none unless asked)")
    ap.add_argument("--callgrind", type=int, metavar="N",
                    help="instead of timing: count instructions per request (valgrind) of uniapi and the nginx "
                         "proxy over N chat requests and N/4 streams; hot spots go to bench/.work/")
    ap.add_argument("--soak-rate", type=int, default=400, help="chat JSON req/s during the soak (default 400)")
    ap.add_argument("--soak-stream-rate", type=int, default=100, help="streamed req/s during the soak (default 100)")
    args = ap.parse_args()
    args.reps = args.reps or (1 if args.quick else 3)
    args.seconds = args.seconds or (3 if args.quick else 10)
    args.ttfb_n = args.ttfb_n or (30 if args.quick else 100)
    if args.soak is None:
        args.soak = 0 if args.quick else 600

    for tool in ("taskset", "wrk", "nginx"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} not found: apt-get install -y nginx wrk util-linux (see bench/README.md)")
    if (os.cpu_count() or 1) < 2:
        raise BenchError("needs two CPUs (target on CPU 0, load generator and upstream on CPU 1)")
    oha = None if args.no_oha else oha_version()
    if not oha:
        log("oha not found: fixed-rate latency uses the Python open-loop fallback (cargo install oha --locked)")
    nginx = shutil.which("nginx")
    binary_src = locate_binary(args)

    if args.callgrind:
        work = Path(tempfile.mkdtemp(prefix="uniapi-callgrind-"))
        binary = work / "uniapi-bin"
        shutil.copy2(binary_src, binary)
        try:
            result = profile(binary, nginx, work, args.callgrind)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        result["git"] = machine()["git"]
        print(json.dumps(result, indent=2))
        (BENCH / ".work").mkdir(exist_ok=True)
        (BENCH / ".work" / "callgrind.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0

    # this process is the TTFB client: keep it off the target's core
    os.sched_setaffinity(0, {int(LOADGEN_CPU)})

    work = Path(tempfile.mkdtemp(prefix="uniapi-bench-"))
    log(f"work dir {work}")
    binary = work / "uniapi-bin"
    shutil.copy2(binary_src, binary)  # concurrent cargo builds must not swap it mid-run
    procs: list[Proc] = []
    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "repetitions": args.reps, "seconds": args.seconds, "stream_chunks": args.chunks,
        "ttfb_requests": args.ttfb_n, "upstream": f"uniapi sandbox ({binary_src})",
        "latency_tool": "oha --latency-correction" if oha else "python open-loop fallback",
        "machine": machine(), "pinning": {"targets": f"CPU {TARGET_CPU}", "load generator + upstream": f"CPU {LOADGEN_CPU}"},
    }
    try:
        if not args.no_upstream_compare:
            uc = {}
            for kind in ("sandbox", "nginx-fixed"):
                if kind == "sandbox":
                    port = free_port()
                    p = Proc("cmp-sandbox", [str(binary), "sandbox", "--listen", f"127.0.0.1:{port}", "--key",
                                             UPSTREAM_KEY], TARGET_CPU, work, env={**os.environ, "UNIAPI_LOG": "warn"})
                    url = f"http://127.0.0.1:{port}"
                    procs.append(p)
                    wait_ready(p, lambda: http("POST", url + "/v1/chat/completions", CHAT_BODY,
                                               json_headers(UPSTREAM_KEY))[0] == 200, 20)
                else:
                    p, url = start_nginx_fixed_upstream(nginx, work, TARGET_CPU)
                    procs.append(p)
                lua = wrk_script(work, "cmp-" + kind, {"Authorization": f"Bearer {UPSTREAM_KEY}"}, CHAT_BODY)
                run_wrk(url + "/v1/chat/completions", lua, 32, 1)
                w = run_wrk(url + "/v1/chat/completions", lua, 32, args.seconds)
                uc[kind] = w["rps"]
                log(f"upstream candidate {kind}: {w['rps']:.0f} req/s alone on one core ({w['errors']} errors)")
                p.stop()
                procs.remove(p)
            results["upstream_compare"] = uc

        upstream, up_url = start_sandbox(binary, work, args.chunks)
        procs.append(upstream)
        wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
        if args.compare:
            compare_bin = work / "uniapi-b-bin"
            shutil.copy2(args.compare, compare_bin)
            wanted.append("uniapi-b")
        if args.with_peers:
            wanted += [p for p in ("litellm", "portkey") if p not in wanted]
        targets: list[Target] = []
        skipped = {}
        for name in wanted:
            try:
                if name == "direct":
                    t = Target("direct", up_url, {"Authorization": f"Bearer {UPSTREAM_KEY}"}, None)
                elif name == "nginx":
                    t = start_nginx_proxy(nginx, work, up_url)
                elif name == "uniapi":
                    t = start_uniapi(binary, work, up_url)
                elif name == "uniapi-b":
                    t = start_uniapi(compare_bin, work, up_url, name="uniapi-b")
                elif name == "litellm":
                    t = start_litellm(work, up_url)
                elif name == "portkey":
                    t = start_portkey(work, up_url)
                else:
                    raise BenchError(f"unknown target {name}")
            except (BenchError, subprocess.CalledProcessError, OSError) as e:
                if name in ("litellm", "portkey"):
                    log(f"skipping peer {name}: {e}")
                    skipped[name] = str(e)[:500]
                    continue
                raise
            if t.proc:
                procs.append(t.proc)
            problems = sanity_check(t)
            if problems and name not in ("litellm", "portkey"):
                raise BenchError(f"{name}: " + "; ".join(problems.values()))
            if "chat" in problems:
                log(f"skipping peer {name}: {problems['chat']}")
                skipped[name] = problems["chat"]
                continue
            if "stream" in problems:
                log(f"{name}: no streaming figures: {problems['stream']}")
                t.no_stream = problems["stream"]
                skipped[name + " streaming"] = problems["stream"]
            if "embeddings" in problems:
                log(f"{name}: no embeddings figure: {problems['embeddings']}")
                t.no_embed = problems["embeddings"]
                skipped[name + " embeddings"] = problems["embeddings"]
            targets.append(t)
        results["skipped"] = skipped

        runs: dict[str, list[dict]] = {t.name: [] for t in targets}
        quiet_waits: list[dict[str, float]] = []
        for rep in range(args.reps):
            for t in targets:
                # every target shares its core with the others' idle processes: let them all go idle
                waited = wait_quiet([o for o in targets if o.proc])
                if waited:
                    quiet_waits.append({"before": f"{t.name} #{rep + 1}", **waited})
                log(f"repetition {rep + 1}/{args.reps}: {t.name}")
                if t.proc and not t.proc.alive():
                    raise BenchError(f"{t.name} died:\n{t.proc.tail()}")
                runs[t.name].append(bench_target(t, args, work, oha))
        results["quiet_waits"] = quiet_waits
        results["runs"] = runs
        results["soak_requested"] = args.soak > 0
        soak_target = next((t for t in targets if t.name == "uniapi"), None)
        if args.soak > 0 and soak_target:
            wait_quiet([o for o in targets if o.proc])
            log(f"soak: {args.soak:.0f} s on uniapi")
            results["soak"] = soak(soak_target, oha, work, args.soak, args.soak_rate, args.soak_stream_rate)
        results["summary"] = {t: summarize(r) for t, r in runs.items()}
        results["derived"] = derive(results["summary"])
        results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        results["machine"]["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
        table = markdown(results)
        results["markdown"] = table
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(table)
        log(f"wrote {args.json}")
        failed = {t: s["errors"]["max"] for t, s in results["summary"].items() if s.get("errors", {}).get("max")}
        if results.get("soak", {}).get("errors"):
            failed["uniapi soak"] = results["soak"]["errors"]
        # a peer's failures are one of its figures (in the table and the JSON), not the harness's failure
        peers = {t: n for t, n in failed.items() if t in ("litellm", "portkey")}
        if peers:
            log(f"peers failed requests (reported, not fatal): {peers}")
        bad = {t: n for t, n in failed.items() if t not in peers}
        if bad:
            log(f"requests failed during the run: {bad}")
            return 1
        missing = missing_figures(results)
        if missing and all(t in wanted for t in ("direct", "nginx", "uniapi")):
            log("figures missing from the run: " + "; ".join(missing))
            return 3
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)

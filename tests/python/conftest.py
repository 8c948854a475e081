"""Shared fixtures: one `uniapi serve --demo` gateway per session, clients, and helpers for the
sandbox journal/faults and the admin API.

Every HTTP call stays on 127.0.0.1: proxies are bypassed for the SDK, for urllib and for the gateway
process itself (its upstream client would otherwise honour HTTP_PROXY).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
from openai import OpenAI

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "debug" / "uniapi"

DEMO_KEY = "sk-uniapi-demo-0000000000000000000000000000000000000000"
SANDBOX_KEY = "sk-sandbox-demo-upstream"
# The body limit the session gateway runs with (UNIAPI_SERVER__MAX_BODY_MB), small so that the 413
# test needs a 2 MB body instead of 65 MB. Nothing else in the suite comes close to it.
MAX_BODY_MB = 1
STARTUP_TIMEOUT = 30.0
LOG_TIMEOUT = 5.0
# The sandbox's shape in demo mode; tests that change it get it back after them.
SANDBOX_DEFAULTS = {"latency_ms": 0, "stream_chunks": 8, "chunk_delay_ms": 0, "task_ms": 3000}

# A reply of the sandbox: "<prefix> <first 60 chars of the prompt> — a deterministic answer ..."
REPLY_TAIL = "— a deterministic answer from the uniapi sandbox."

_LOOPBACK = "127.0.0.1,localhost,::1"
for _name in ("NO_PROXY", "no_proxy"):
    os.environ[_name] = _LOOPBACK + ("," + os.environ[_name] if os.environ.get(_name) else "")

# urllib without any proxy handler: raw HTTP goes straight to the loopback address.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def sandbox_reply(prompt: str, prefix: str = "Sandbox reply to:") -> str:
    """What the sandbox answers for `prompt` (whitespace normalised, prompt cut to 60 chars)."""
    return " ".join((prefix + " " + prompt[:60] + " " + REPLY_TAIL).split())


def prompt_tokens(chars: int) -> int:
    """The sandbox's prompt token count: ceil(chars / 4), at least 1."""
    return max(1, -(-chars // 4))


def make_png(width: int, height: int, rgba: tuple[int, int, int, int] = (200, 30, 30, 255)) -> bytes:
    """A valid RGBA PNG of one colour, built with zlib + struct only."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    row = b"\x00" + bytes(rgba) * width  # filter type 0 per scanline
    raw = row * height
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def make_wav(seconds: float = 0.5, rate: int = 16_000) -> bytes:
    """A silent mono 16-bit PCM WAV file."""
    data = b"\x00\x00" * int(seconds * rate)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    body: Optional[bytes] = None,
    headers: Optional[dict[str, str]] = None,
    timeout: float = 30.0,
) -> HttpResult:
    """One raw HTTP call; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return HttpResult(
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as err:
        with err:
            return HttpResult(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def http_json(method: str, url: str, payload: Any = None, headers: Optional[dict[str, str]] = None) -> HttpResult:
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    data = None if payload is None else json.dumps(payload).encode()
    return http(method, url, data, all_headers)


@dataclass
class Gateway:
    base: str
    admin_key: str
    sandbox: str
    demo_key: str
    workdir: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False)

    # ---- clients

    def client(self, key: Optional[str] = None, **kwargs: Any) -> OpenAI:
        """An SDK client on the gateway; no SDK retries, so every failure reaches the test."""
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 30.0)
        return OpenAI(base_url=f"{self.base}/v1", api_key=key or self.demo_key, **kwargs)

    # ---- sandbox control

    def journal(self) -> list[dict[str, Any]]:
        result = http("GET", f"{self.sandbox}/__sandbox/requests")
        assert result.status == 200, result
        return result.json()

    def clear_journal(self) -> None:
        assert http("DELETE", f"{self.sandbox}/__sandbox/requests").status == 200

    def fault(self, **rule: Any) -> None:
        result = http_json("POST", f"{self.sandbox}/__sandbox/faults", rule)
        assert result.status == 200, result.body

    def clear_faults(self) -> None:
        assert http("DELETE", f"{self.sandbox}/__sandbox/faults").status == 200

    def pending_faults(self) -> list[dict[str, Any]]:
        return http("GET", f"{self.sandbox}/__sandbox/faults").json()

    def sandbox_config(self, **config: Any) -> dict[str, Any]:
        """Changes the sandbox's latency / stream shape while it runs."""
        result = http_json("PUT", f"{self.sandbox}/__sandbox/config", config)
        assert result.status == 200, result.body
        return result.json()["config"]

    # ---- admin API

    def admin(self, method: str, path: str, payload: Any = None) -> HttpResult:
        return http_json(
            method,
            f"{self.base}/api/admin{path}",
            payload,
            {"Authorization": f"Bearer {self.admin_key}"},
        )

    def demo_user_id(self) -> int:
        result = self.admin("GET", "/users")
        assert result.status == 200, result.body
        users = [u for u in result.json()["data"] if u["name"] == "demo"]
        assert len(users) == 1, result.json()
        return users[0]["id"]

    def channel_id(self, name: str) -> int:
        result = self.admin("GET", "/channels")
        assert result.status == 200, result.body
        ids = [c["id"] for c in result.json()["data"] if c["name"] == name]
        assert len(ids) == 1, result.json()
        return ids[0]

    def log(self, request_id: str, timeout: float = LOG_TIMEOUT) -> dict[str, Any]:
        """The request log with this id; logs are written in batches, so poll briefly."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.admin("GET", "/logs?limit=200")
            assert result.status == 200, result.body
            for entry in result.json()["data"]:
                if entry["id"] == request_id:
                    return entry
            if time.monotonic() > deadline:
                raise AssertionError(f"no request log {request_id} after {timeout}s")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    # ---- money and tasks

    def balance_nano(self, user_id: Optional[int] = None) -> int:
        """A user's balance in nano-USD (the demo user's by default), from the admin API."""
        result = self.admin("GET", f"/users/{user_id or self.demo_user_id()}")
        assert result.status == 200, result.body
        return result.json()["balance_nano"]

    def task(self, task_id: str) -> dict[str, Any]:
        """uniapi's stored task (admin view): state, charged_nano, refunded, channel_id, ..."""
        result = self.admin("GET", f"/tasks/{task_id}")
        assert result.status == 200, result.body
        return result.json()

    def wait_task(self, task_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """Waits until the stored task is SUCCESS or FAILURE (the poller's work), and returns it."""
        deadline = time.monotonic() + timeout
        while True:
            task = self.task(task_id)
            if task["state"] in ("SUCCESS", "FAILURE"):
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} still {task['state']} after {timeout}s")
            time.sleep(0.1)

    def ledger_reconciles(self) -> None:
        result = self.admin("GET", "/ledger/reconcile")
        assert result.status == 200, result.body
        assert result.json()["ok"] is True, result.json()


def _clean_env(workdir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        # no operator configuration leaks in (a UNIAPI_DATABASE__URL would point the demo elsewhere),
        # and the gateway's upstream client must not go through a proxy
        if not k.upper().startswith("UNIAPI_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env["UNIAPI_SERVER__MAX_BODY_MB"] = str(MAX_BODY_MB)
    env["UNIAPI_LOG"] = "info,sqlx=warn,hyper=warn,reqwest=warn"
    env["NO_PROXY"] = env["no_proxy"] = _LOOPBACK
    # tasks: poll often, and let callbacks reach the tests' loopback receiver quickly
    env["UNIAPI_TASKS__POLL_INTERVAL_MS"] = "100"
    env["UNIAPI_TASKS__ALLOW_PRIVATE_CALLBACKS"] = "true"
    env["UNIAPI_TASKS__CALLBACK_BACKOFF_MS"] = "100"
    return env


_PATTERNS = {
    "base": re.compile(r"^uniapi \S+ listening on (http://127\.0\.0\.1:\d+)\s*$", re.M),
    "admin_key": re.compile(r"^admin key \(shown once, keep it\): (ua-admin-\S+)\s*$", re.M),
    "sandbox": re.compile(r"^Demo mode: sandbox upstream at (http://127\.0\.0\.1:\d+), registered as channel `sandbox-openai`\.\s*$", re.M),
    "demo_key": re.compile(r"^Demo user `demo`, API key: (sk-\S+)\s*$", re.M),
}


@contextlib.contextmanager
def running_gateway(extra_env: Optional[dict[str, str]] = None) -> Iterator[Gateway]:
    """A `uniapi serve --demo` process of its own (work directory, database, sandbox), stopped on exit."""
    binary = Path(os.environ.get("UNIAPI_BIN") or DEFAULT_BIN)
    if not binary.is_file():
        pytest.fail(f"gateway binary not found at {binary}: build it (cargo build -p uniapi) or set UNIAPI_BIN")
    workdir = Path(tempfile.mkdtemp(prefix="uniapi-pytest-"))
    log_path = workdir / "gateway.out"
    # stdout goes to a file, not a pipe: the gateway also logs there, and a pipe nobody drains
    # would eventually block it.
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [str(binary), "serve", "--demo", "--listen", "127.0.0.1:0"],
            cwd=workdir,
            env={**_clean_env(workdir), **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        found: dict[str, str] = {}
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while len(found) < len(_PATTERNS):
            text = log_path.read_text(errors="replace")
            for name, pattern in _PATTERNS.items():
                match = pattern.search(text)
                if match:
                    found[name] = match.group(1)
            if len(found) == len(_PATTERNS):
                break
            if process.poll() is not None:
                pytest.fail(f"gateway exited with {process.returncode} during start-up:\n{text}")
            if time.monotonic() > deadline:
                pytest.fail(f"gateway did not announce {sorted(set(_PATTERNS) - set(found))} within {STARTUP_TIMEOUT}s:\n{text}")
            time.sleep(0.02)
        gw = Gateway(
            base=found["base"],
            admin_key=found["admin_key"],
            sandbox=found["sandbox"],
            demo_key=found["demo_key"],
            workdir=workdir,
            log_path=log_path,
            process=process,
        )
        assert gw.demo_key == DEMO_KEY
        assert (workdir / "uniapi-data" / "demo.db").is_file(), "the demo database is created in the working directory"
        assert http("GET", f"{gw.base}/healthz").json() == {"status": "ok"}
        yield gw
    finally:
        _stop(process)
        if os.environ.get("UNIAPI_PYTEST_KEEP"):
            print(f"gateway work directory kept at {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def gateway() -> Any:
    with running_gateway() as gw:
        yield gw


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture(autouse=True)
def clean_sandbox(gateway: Gateway) -> Any:
    """Every test starts with an empty sandbox journal and no pending faults, and leaves none."""
    gateway.clear_faults()
    gateway.clear_journal()
    yield
    gateway.clear_faults()
    gateway.sandbox_config(**SANDBOX_DEFAULTS)


@pytest.fixture
def client(gateway: Gateway) -> OpenAI:
    return gateway.client()


@pytest.fixture
def make_key(gateway: Gateway) -> Any:
    """Creates API keys for the demo user through the admin API; deletes them after the test."""
    created: list[int] = []

    def make(**fields: Any) -> dict[str, Any]:
        body = {"user_id": gateway.demo_user_id(), "name": f"pytest-{len(created)}", **fields}
        result = gateway.admin("POST", "/keys", body)
        assert result.status == 201, result.body
        key = result.json()
        created.append(key["id"])
        return key

    yield make
    for key_id in created:
        gateway.admin("DELETE", f"/keys/{key_id}")


@pytest.fixture
def other_key(gateway: Gateway) -> Any:
    """The full API key of a second user (with a balance), for ownership tests; deleted afterwards."""
    name = f"other-{os.getpid()}-{time.monotonic_ns()}"
    user = gateway.admin("POST", "/users", {"name": name, "balance_usd": 5.0})
    assert user.status == 201, user.body
    user_id = user.json()["id"]
    key = gateway.admin("POST", "/keys", {"user_id": user_id, "name": "other"})
    assert key.status == 201, key.body
    yield key.json()["key"]
    gateway.admin("DELETE", f"/users/{user_id}")


class Receiver:
    """A local HTTP server that records the JSON bodies POSTed to it (task callbacks)."""

    def __init__(self, fail_first: int = 0) -> None:
        import http.server
        import threading

        self.bodies: list[Any] = []
        self.attempts = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                receiver.attempts += 1
                if receiver.attempts <= fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.bodies.append(json.loads(raw or b"null"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> list[Any]:
        """Waits until a delivered body satisfies `predicate`; returns every body delivered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(b) for b in list(self.bodies)):
                return list(self.bodies)
            time.sleep(0.05)
        raise AssertionError(f"no callback matched within {timeout}s; got {self.bodies}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Any:
    """A callback receiver whose first delivery is refused with a 500 (so retries are exercised)."""
    r = Receiver(fail_first=1)
    yield r
    r.close()


@pytest.fixture
def make_channel(gateway: Gateway) -> Any:
    """Adds channels through the admin API; deletes them after the test."""
    created: list[int] = []

    def make(**fields: Any) -> dict[str, Any]:
        body = {
            "name": f"pytest-channel-{len(created)}",
            "kind": "openai",
            "base_url": gateway.sandbox,
            "keys": [SANDBOX_KEY],
            **fields,
        }
        result = gateway.admin("POST", "/channels", body)
        assert result.status == 201, result.body
        channel = result.json()
        created.append(channel["id"])
        return channel

    yield make
    for channel_id in created:
        result = gateway.admin("DELETE", f"/channels/{channel_id}")
        assert result.status in (204, 404), result.body  # 404: the test removed it itself

"""Serve one scorer over HTTP for `remote:` clients (`diffalign serve-scorer`); the protocol is in `rewards.remote`.

The server runs in the scorer's own environment, so this module and what it imports need only the standard
library, NumPy, Pillow, torch and tqdm (plus what the scorer itself imports): no diffusers, transformers,
accelerate, datasets or peft. Any name `scorer_factory` resolves can be served: a registered scorer or your
own (`path/to/file.py:NAME`, `package.module:NAME`).

Requests are read and their images decoded on a thread each; the scorer scores one request at a time (a
model on one GPU is not safe to call from several threads). A request body over `max_request_bytes` is
refused (413) before it is read, as is a request of more than `max_batch` images. The server binds to
127.0.0.1 unless told otherwise; bound to a loopback address, it answers only requests whose Host header
names one (a web page's DNS-rebinding tricks get 403), and `/score` takes application/json only (so a web
page cannot post a form to it).
"""

from __future__ import annotations

import json
import math
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TextIO
from urllib.parse import urlsplit

import torch

from ..config.scorer_server import ServeScorerOptions
from .base import Scorer, construct_scorer, scorer_factory
from .batch import describe_error
from .remote import INFO_PATH, PROTOCOL, SCORE_PATH, decode_png

DEFAULT_HOST = ServeScorerOptions.host
DEFAULT_PORT = ServeScorerOptions.port
DEFAULT_MAX_BATCH = ServeScorerOptions.max_batch
DEFAULT_MAX_REQUEST_MB = ServeScorerOptions.max_request_mb
LOOPBACK_NAMES = ("localhost", "::1")


def is_loopback(host: str) -> bool:
    """Whether the address or name `host` can be reached from this machine only."""
    return host in LOOPBACK_NAMES or host.startswith("127.")


def build_served_scorer(
    name: str,
    options: Mapping[str, object] | None = None,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int | None = None,
) -> Scorer:
    """The scorer `name` built with the device, dtype and batch size given (the others left to the scorer) and its
    own options; a failure to build is a one-line ValueError naming the scorer and the options."""
    shared = {k: v for k, v in (("device", device), ("dtype", dtype), ("batch_size", batch_size)) if v is not None}
    return construct_scorer(name, scorer_factory(name), {**shared, **(options or {})})


class ScorerServer(ThreadingHTTPServer):
    """The HTTP server of one scorer; `url` is its address, `shutdown()` stops `serve_forever`."""

    daemon_threads = True  # a client that hangs up never holds up stopping

    def __init__(
        self,
        scorer: Scorer,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_request_bytes: int = int(DEFAULT_MAX_REQUEST_MB * 2**20),
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {max_batch}")
        if max_request_bytes < 1024:
            raise ValueError(f"--max-request-mb must allow at least 1 KiB, got {max_request_bytes} bytes")
        self.scorer = scorer
        self.max_batch = max_batch
        self.max_request_bytes = max_request_bytes
        self.lock = threading.Lock()  # one scorer call at a time
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), ScorerHandler)
        self.host = host

    @property
    def port(self) -> int:
        """The port it listens on (the free one picked for port 0)."""
        return self.server_address[1]

    @property
    def url(self) -> str:
        """Its address, e.g. http://127.0.0.1:8765 (`remote:` + this names the scorer)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def info(self) -> dict:
        """The answer to GET /info."""
        return {
            "protocol": PROTOCOL,
            "name": self.scorer.name,
            "scale": str(getattr(self.scorer, "scale", "")),
            "logit_scale": float(getattr(self.scorer, "logit_scale", 1.0)),
            "max_batch": self.max_batch,
            "max_request_bytes": self.max_request_bytes,
        }

    def score(self, images: list, prompts: list[str]) -> list[float | None]:
        """The scorer's score of each image against its prompt, None where it is not finite; ValueError when the
        scorer does not give one score per image (its own exceptions propagate)."""
        if not images:
            return []
        with self.lock, torch.no_grad():
            result = self.scorer.score(images, prompts)
        values = torch.as_tensor(result).detach().cpu().double().reshape(-1).tolist()
        if len(values) != len(images):
            raise ValueError(f"the scorer returned {len(values)} scores for {len(images)} images")
        return [v if math.isfinite(v) else None for v in values]

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up mid-request is no error to report; anything else is."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Refused(Exception):
    """A request answered with an error status and message."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class ScorerHandler(BaseHTTPRequestHandler):
    """The routes of `ScorerServer`: GET /info, POST /score."""

    server: ScorerServer
    server_version = "diffalign-scorer"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: only refused requests and scorer errors are printed (`_error`)."""

    def _json(self, status: int, value: object) -> None:
        body = json.dumps(value, allow_nan=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        print(f"{self.command} {urlsplit(self.path).path} from {self.client_address[0]}: {status.value} {message}",
              file=sys.stderr, flush=True)
        self._json(status, {"error": message})

    def _check_host(self) -> None:
        if not is_loopback(self.server.host):
            return
        host = urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
        if not is_loopback(host):
            raise _Refused(HTTPStatus.FORBIDDEN, f"unexpected Host header {self.headers.get('Host')!r}")

    def do_GET(self) -> None:
        """GET /info: the scorer and the server's limits."""
        try:
            self._check_host()
            path = urlsplit(self.path).path
            if path != INFO_PATH:
                raise _Refused(HTTPStatus.NOT_FOUND, f"no route GET {path}; the routes are GET {INFO_PATH} and "
                                                     f"POST {SCORE_PATH}")
            self._json(HTTPStatus.OK, self.server.info())
        except _Refused as refused:
            self._error(refused.status, refused.message)

    def do_POST(self) -> None:
        """POST /score: the scores of the request's images against its prompts."""
        try:
            self._check_host()
            path = urlsplit(self.path).path
            if path != SCORE_PATH:
                raise _Refused(HTTPStatus.NOT_FOUND, f"no route POST {path}; the routes are GET {INFO_PATH} and "
                                                     f"POST {SCORE_PATH}")
            images, prompts = self._read_request()
        except _Refused as refused:
            self._error(refused.status, refused.message)
            return
        try:
            scores = self.server.score(images, prompts)
        except Exception as error:  # noqa: BLE001  (the scorer's failure is the client's to see, not the server's end)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{self.server.scorer.name}: {describe_error(error)}")
            return
        self._json(HTTPStatus.OK, {"scores": scores})

    def _read_request(self) -> tuple[list, list[str]]:
        """The decoded images and the prompts of a /score request; _Refused naming what is wrong."""
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            raise _Refused(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the request body as application/json")
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise _Refused(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header (the body's size in bytes) is "
                                                       "required")
        limit = self.server.max_request_bytes
        if length > limit:
            self.close_connection = True  # the body is left unread
            raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"the request body of {length:,} bytes is over this server's limit of {limit:,} bytes "
                           "(serve-scorer --max-request-mb); send fewer images a request")
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _Refused(HTTPStatus.BAD_REQUEST, f"the request body is not JSON ({error})") from None
        if not isinstance(body, dict):
            raise _Refused(HTTPStatus.BAD_REQUEST, 'the request body must be a JSON object {"prompts": [...], '
                                                   '"images": [...]}')
        prompts, images = body.get("prompts"), body.get("images")
        for key, value, what in (("prompts", prompts, "prompt strings"), ("images", images, "base64 PNG strings")):
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise _Refused(HTTPStatus.BAD_REQUEST, f"'{key}' must be a list of {what}, got {_kind(value)}")
        if len(images) != len(prompts):
            raise _Refused(HTTPStatus.BAD_REQUEST, f"{len(images)} images but {len(prompts)} prompts: give one "
                                                   "prompt per image")
        if len(images) > self.server.max_batch:
            raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"{len(images)} images in one request, over this server's limit of "
                           f"{self.server.max_batch} (serve-scorer --max-batch)")
        decoded = []
        for i, text in enumerate(images):
            try:
                decoded.append(decode_png(text))
            except ValueError as error:
                raise _Refused(HTTPStatus.BAD_REQUEST, f"images[{i}]: {error}") from None
        return decoded, prompts


def _kind(value: object) -> str:
    if isinstance(value, list):
        odd = next((item for item in value if not isinstance(item, str)), None)
        return f"a list holding {type(odd).__name__} {json.dumps(odd)[:40]}"
    return "nothing" if value is None else type(value).__name__


def serve(server: ScorerServer, out: TextIO = sys.stdout) -> None:
    """Serve until Ctrl-C or SIGTERM, after printing the line `serving NAME on URL` that scripts wait for; the
    socket is closed on the way out."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(f"serving {server.scorer.name} on {server.url}", file=out, flush=True)
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print(f"stopped serving {server.scorer.name}", file=out, flush=True)
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt

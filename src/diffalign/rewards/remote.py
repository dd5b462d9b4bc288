"""A scorer served from its own environment over HTTP: `remote:http://HOST:PORT` (the client side).

Some scorers will not install beside the trainer (HPSv3 pins transformers 4.45.2, VQAScore's t2v-metrics
pins torch 2.5.1). `diffalign serve-scorer NAME` (`rewards.server`) serves any scorer in the environment it
needs; everywhere a scorer is named, `remote:http://127.0.0.1:8765` then names that served scorer.

Protocol 1: JSON over HTTP, one JSON object per request and per answer (UTF-8).

* `GET /info` -> `{"protocol": 1, "name": str, "scale": str, "logit_scale": float, "max_batch": int,
  "max_request_bytes": int}`: the served scorer's name and the unit of its scores (see `base.Scorer`), the
  most images the server takes in one request and the largest request body it reads, in bytes.
* `POST /score` (Content-Type application/json) with `{"prompts": [str, ...], "images": [str, ...]}`, each
  image a base64-encoded PNG (8-bit RGB), image i scored against prompt i ->
  `{"scores": [float or null, ...]}`, one per image, null where the scorer gave no finite score.
* An error is a JSON `{"error": "message"}` with a 4xx status (the request is at fault: 400 malformed JSON,
  base64 or PNG, 404 an unknown route, 413 a body over max_request_bytes or more than max_batch images, 415
  not JSON) or a 5xx status (500: the scorer raised; the message is its error).

The client (`RemoteScorer`) reads `/info` once when it is built, then sends each `score` call as requests of
at most `max_batch` images and at most `max_request_bytes` bytes. Images travel as 8-bit PNG: a float tensor
is rounded to 8 bits as `to_pil_images` rounds it (as a saved image would be). Each request waits at most
`timeout` seconds (option `timeout`, default 60); a connection that fails and a 502/503/504 answer are tried
`retries` more times (option `retries`, default 2) after a short backoff. A 500 is not retried: the scorer
raised, and the same images would fail again; `score_in_batches` then narrows the failure down to the images
at fault, as it does for a scorer in process. A server that cannot be reached, does not answer in time, or
answers with something that is not the protocol gives one error naming the address (`RemoteScorerError`, a
ValueError). After such an error the scorer fails at once for `cooldown` seconds (default 10), so that a
batch loop narrowing down a failure does not wait for a dead server once per image.

The options `device`, `dtype` and `batch_size` that every scorer is given have their meaning on the server
(`diffalign serve-scorer --device/--dtype/--batch-size`); here `batch_size` only caps the images per request
and the others are ignored. Requests go to the address directly, never through an HTTP proxy.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from functools import partial

import torch
from PIL import Image

from .base import ImageBatch, check_batch, to_pil_images

PROTOCOL = 1
INFO_PATH = "/info"
SCORE_PATH = "/score"
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF = 0.5  # seconds before the first retry, doubled before each further one
DEFAULT_COOLDOWN = 10.0
RETRIED_STATUSES = (502, 503, 504)  # a proxy or an overloaded server: a later try may pass
REQUEST_OVERHEAD = 64  # bytes of a request body besides its prompts and images: '{"prompts": [], ...}'
PNG_COMPRESS_LEVEL = 1  # PNG is lossless at every level; 1 encodes fastest


class RemoteScorerError(ValueError):
    """A served scorer that cannot be reached or does not answer by the protocol; the message names its address."""


def remote_factory(url: str) -> Callable[..., RemoteScorer]:
    """The factory of the scorer served at `url` (`remote:URL`): a RemoteScorer taking the usual scorer options.
    The address is checked here; the server is contacted only when the scorer is built."""
    return partial(RemoteScorer, check_url(url))


def check_url(url: str) -> str:
    """`url` without a trailing slash, or a ValueError when it is not an http(s)://HOST:PORT address."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"remote:{url}: expected remote:http://HOST:PORT, the address `diffalign serve-scorer` "
                         "prints, e.g. remote:http://127.0.0.1:8765")
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number)
    except ValueError as error:
        raise ValueError(f"remote:{url}: {error}; expected remote:http://HOST:PORT") from error
    return url.rstrip("/")


def encode_png(image: Image.Image) -> str:
    """An RGB image as the protocol carries it: base64 of its PNG file, as ASCII text."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str) -> Image.Image:
    """The RGB image of a base64 PNG string (`encode_png`); ValueError saying what is wrong (not base64, not a
    PNG, a damaged or oversized PNG). Only PNG is decoded."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"not base64 ({error})") from error
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            return image.convert("RGB")
    except Image.DecompressionBombError as error:
        raise ValueError(f"PNG too large ({error})") from error
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for a file that is not a readable PNG
        raise ValueError(f"not a PNG image ({error})") from error


class RemoteScorer:
    """A scorer served by `diffalign serve-scorer` at `url`, used like any scorer (module docstring)."""

    def __init__(
        self,
        url: str,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        cooldown: float = DEFAULT_COOLDOWN,
        device: object = None,
        dtype: object = None,
        batch_size: int | None = None,
    ) -> None:
        del device, dtype  # chosen on the server (`diffalign serve-scorer --device/--dtype`)
        self.url = check_url(url)
        for key, value, least in (("timeout", timeout, 0), ("backoff", backoff, 0), ("cooldown", cooldown, 0)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= least:
                raise ValueError(f"remote scorer {self.url}: option {key} must be a number of seconds >= {least}, "
                                 f"got {value!r}")
        if timeout == 0:
            raise ValueError(f"remote scorer {self.url}: option timeout must be more than 0 seconds")
        for key, value, least in (("retries", retries, 0), ("batch_size", batch_size, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise ValueError(f"remote scorer {self.url}: option {key} must be a whole number >= {least}, "
                                 f"got {value!r}")
        self.timeout, self.retries, self.backoff, self.cooldown = float(timeout), retries, float(backoff), float(cooldown)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._down: tuple[float, str] | None = None  # (monotonic time until which calls fail at once, the error)
        info = self._info()
        self.name = f"remote:{self.url}"
        self.served_name: str = info["name"]
        self.scale: str = info["scale"]
        self.logit_scale = float(info["logit_scale"])
        self.max_batch = min(info["max_batch"], batch_size or info["max_batch"])
        self.max_request_bytes: int = info["max_request_bytes"]

    def score(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        """Each image's score against its prompt from the server, float64 (N,), NaN where it gave none."""
        pil_images = to_pil_images(images)
        check_batch(pil_images, prompts)
        if self._down is not None:
            until, message = self._down
            if time.monotonic() < until:
                raise RemoteScorerError(message)
            self._down = None
        encoded = [encode_png(image) for image in pil_images]
        scores: list[float] = []
        for start, stop in self._requests(encoded, prompts):
            scores += self._score_request(encoded[start:stop], list(prompts[start:stop]))
        return torch.tensor(scores, dtype=torch.float64)

    def _requests(self, encoded: list[str], prompts: Sequence[str]) -> list[tuple[int, int]]:
        """(start, stop) of each request: at most max_batch images and max_request_bytes bytes."""
        spans, start, size = [], 0, REQUEST_OVERHEAD
        for i, (image, prompt) in enumerate(zip(encoded, prompts)):
            item = len(image) + len(json.dumps(prompt)) + 8  # quotes, commas, spaces
            if REQUEST_OVERHEAD + item > self.max_request_bytes:
                raise RemoteScorerError(
                    f"remote scorer {self.url}: image {i} takes {len(image):,} bytes as base64 PNG, over the "
                    f"server's limit of {self.max_request_bytes:,} bytes a request; restart it with a larger "
                    "`diffalign serve-scorer --max-request-mb`")
            if i > start and (i - start >= self.max_batch or size + item > self.max_request_bytes):
                spans.append((start, i))
                start, size = i, REQUEST_OVERHEAD
            size += item
        if start < len(encoded):
            spans.append((start, len(encoded)))
        return spans

    def _score_request(self, images: list[str], prompts: list[str]) -> list[float]:
        body = json.dumps({"prompts": prompts, "images": images}).encode("utf-8")
        answer = self._call(SCORE_PATH, body)
        scores = answer.get("scores")
        if not isinstance(scores, list):
            raise RemoteScorerError(f"remote scorer {self.url}: {SCORE_PATH} answered {_shown(answer)}, without "
                                    "a 'scores' list; is it a `diffalign serve-scorer` address?")
        if len(scores) != len(images):
            raise RemoteScorerError(f"remote scorer {self.url}: {SCORE_PATH} answered {len(scores)} scores for "
                                    f"{len(images)} images")
        out = []
        for i, value in enumerate(scores):
            if value is None:
                out.append(math.nan)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append(float(value))
            else:
                raise RemoteScorerError(f"remote scorer {self.url}: {SCORE_PATH} answered score {i} as "
                                        f"{_shown(value)}, not a number or null")
        return out

    def _info(self) -> dict:
        info = self._call(INFO_PATH)
        if info.get("protocol") != PROTOCOL:
            raise RemoteScorerError(f"remote scorer {self.url}: the server speaks protocol "
                                    f"{info.get('protocol')!r}, this diffalign speaks {PROTOCOL}; install the same "
                                    "diffalign version on both sides")
        expected = {"name": str, "scale": str, "logit_scale": (int, float), "max_batch": int, "max_request_bytes": int}
        for key, kind in expected.items():
            value = info.get(key)
            if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
                raise RemoteScorerError(f"remote scorer {self.url}: {INFO_PATH} answered {key}={value!r}; "
                                        "is it a `diffalign serve-scorer` address?")
        return info

    def _call(self, path: str, body: bytes | None = None) -> dict:
        """The JSON object answered to GET `path` (or POST `body`), trying again after a connection failure or a
        502/503/504; RemoteScorerError for anything else that is not an answer by the protocol."""
        tries = self.retries + 1
        for attempt in range(tries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._request(path, body)
            except _Transient as error:
                if attempt + 1 == tries:
                    self._fail_fast(f"remote scorer {self.url}: {error.text} after {tries} "
                                    f"{'try' if tries == 1 else 'tries'}; is `diffalign serve-scorer` running there?")
            except TimeoutError:
                self._fail_fast(f"remote scorer {self.url}: no answer to {path} within {self.timeout:g} s; is the "
                                "server busy or stuck? (raise the scorer option timeout=SECONDS for a slow scorer)")
        raise AssertionError("unreachable")

    def _fail_fast(self, message: str) -> None:
        self._down = (time.monotonic() + self.cooldown, message)
        raise RemoteScorerError(message)

    def _request(self, path: str, body: bytes | None) -> dict:
        """One request: the answer's JSON object; _Transient for what a retry may cure, TimeoutError, or
        RemoteScorerError."""
        request = urllib.request.Request(self.url + path, data=body, method="GET" if body is None else "POST")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, _read_quietly(error)
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                raise TimeoutError() from error
            raise _Transient(f"cannot connect ({_reason(error.reason)})") from error
        except TimeoutError:
            raise
        except (OSError, http.client.HTTPException) as error:  # reset, closed mid-answer, broken status line
            raise _Transient(f"cannot connect ({_reason(error)})") from error
        try:
            answer = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            answer = None
        if status >= 400:
            message = answer.get("error") if isinstance(answer, dict) else None
            said = f": {message}" if isinstance(message, str) else f" ({_shown(raw)})"
            if status in RETRIED_STATUSES:
                raise _Transient(f"{path} answered {status}{said}")
            if status == 413:
                raise RemoteScorerError(f"remote scorer {self.url}: the server refused the request as too large "
                                        f"(413){said}")
            raise RemoteScorerError(f"remote scorer {self.url}: {path} answered {status}{said}")
        if not isinstance(answer, dict):
            raise RemoteScorerError(f"remote scorer {self.url}: {path} answered {_shown(raw)}, not a JSON object; "
                                    "is it a `diffalign serve-scorer` address?")
        return answer


class _Transient(Exception):
    """A failed try that a later try may cure: no connection, a reset, a 502/503/504."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _read_quietly(error: urllib.error.HTTPError) -> bytes:
    try:
        return error.read()
    except (OSError, http.client.HTTPException):
        return b""


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _shown(value: object, limit: int = 80) -> str:
    """A short printable excerpt of an answer (bytes are decoded leniently)."""
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else json.dumps(value)
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "...")

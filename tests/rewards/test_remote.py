"""Scorers served from their own environment: `diffalign serve-scorer` and `remote:http://HOST:PORT` names.

A real server process (the shapes scorer) is compared with the same scorer in process; the protocol's limits,
bad requests and the client's faults (a dead address, garbage answers, timeouts, bounded retries) are checked
against in-process servers: `ScorerServer` in a thread, or a tiny stdlib server answering what a test says.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.cli.main import build_parser, main
from diffalign.rewards import build_scorer, score_in_batches
from diffalign.rewards import server as server_module
from diffalign.rewards.base import scorer_factory
from diffalign.rewards.batch import ScorerFailure
from diffalign.rewards.remote import REQUEST_OVERHEAD, RemoteScorer, encode_png
from diffalign.rewards.server import ScorerServer
from diffalign.synthetic.domain import random_spec
from diffalign.synthetic.render import render

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "diffalign.cli.main"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to 127.0.0.1, whatever proxy is set
FAST = {"backoff": 0.01}  # retries without the real backoff's wait


def shapes_batch(n: int, seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    """`n` renders of the shapes world and their captions."""
    rng = random.Random(seed)
    images, prompts = [], []
    for _ in range(n):
        spec = random_spec(rng)
        image, _ = render(spec, rng)
        images.append(Image.fromarray(image))
        prompts.append(spec.caption)
    return images, prompts


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON answer) of a POST of the raw `body`."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json", **(headers or {})},
                                     method="POST")
    try:
        with LOCAL.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def score_body(images: list[str], prompts: list[str]) -> bytes:
    return json.dumps({"prompts": prompts, "images": images}).encode()


def png(image: Image.Image) -> str:
    return encode_png(image)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- a real `diffalign serve-scorer` process ---------------------------------------------------------------


def _ready_line(process: subprocess.Popen, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve-scorer exited with {process.returncode}: {process.stderr.read()}")
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            return process.stdout.readline()
    raise AssertionError("serve-scorer printed no ready line")


@pytest.fixture(scope="module")
def served():
    """A `diffalign serve-scorer shapes --port 0 --max-batch 3` process: (process, its URL)."""
    process = subprocess.Popen([*CLI, "serve-scorer", "shapes", "--port", "0", "--max-batch", "3"], cwd=ROOT, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _ready_line(process)
        assert line.startswith("serving shapes on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].strip()
        assert int(url.rsplit(":", 1)[1]) > 0  # --port 0: the port picked is shown
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()
        process.stderr.close()


def test_a_served_scorer_scores_as_the_same_scorer_in_process(served):
    _, url = served
    images, prompts = shapes_batch(7)
    remote = build_scorer(f"remote:{url}")
    local = build_scorer("shapes")
    assert (remote.name, remote.served_name) == (f"remote:{url}", "shapes")
    assert (remote.scale, remote.logit_scale) == (local.scale, local.logit_scale)
    assert remote.max_batch == 3  # 7 images: 3 requests, or the server would refuse them (below)
    expected = local.score(images, prompts).double()
    assert torch.equal(remote.score(images, prompts), expected)
    array = np.stack([np.asarray(image) for image in images])  # a uint8 batch (N, H, W, 3), as the sampler gives
    assert torch.equal(remote.score(array, prompts), expected)
    result = score_in_batches(remote, images, prompts, batch_size=5)
    assert torch.equal(result.values(), expected) and not result.failures


def test_the_server_refuses_more_images_than_max_batch(served):
    _, url = served
    images, prompts = shapes_batch(4)
    status, answer = post(url + "/score", score_body([png(i) for i in images], prompts))
    assert status == 413
    assert answer == {"error": "4 images in one request, over this server's limit of 3 (serve-scorer --max-batch)"}


def test_sigterm_stops_the_server_cleanly(served):
    process, url = served
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert process.stdout.read() == "stopped serving shapes\n"
    with pytest.raises(ValueError, match="cannot connect"):
        RemoteScorer(url, retries=0)


# --- the serving path imports no heavy library -----------------------------------------------------------

IMPORT_CHECK = """
import sys
HEAVY = ("diffusers", "transformers", "accelerate", "datasets", "peft")

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"{name} is not installed in a scorer's own environment")

sys.meta_path.insert(0, Refuse())
import threading
from diffalign.cli.main import build_parser
from diffalign.cli.serve_scorer import make_server
from diffalign.rewards.remote import RemoteScorer
from PIL import Image

server = make_server(build_parser().parse_args(["serve-scorer", "shapes", "--port", "0"]))
threading.Thread(target=server.serve_forever, daemon=True).start()
scores = RemoteScorer(server.url).score([Image.new("RGB", (32, 32), (200, 30, 30))],
                                       ["a red square on a blue background"])
server.shutdown()
assert scores.shape == (1,), scores
print(sorted(name for name in sys.modules if name.split(".")[0] in HEAVY))
"""


def test_serving_needs_no_diffusers_transformers_accelerate_datasets_or_peft():
    done = subprocess.run([sys.executable, "-c", IMPORT_CHECK], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- ScorerServer in a thread ------------------------------------------------------------------------------


ANY_CAPTION = "a red circle on a blue background"


class CountingShapes:
    """The shapes scorer, counting its calls (the images of each), raising for a prompt 'fail', NaN for 'nan'."""

    name, scale, logit_scale = "counting", "unit", 2.0

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.inner = build_scorer("shapes")

    def score(self, images, prompts):
        self.calls.append(len(prompts))
        if "fail" in prompts:
            raise ValueError("the scorer cannot read this prompt")
        nan = torch.tensor([p == "nan" for p in prompts])
        scores = self.inner.score(images, [ANY_CAPTION if p == "nan" else p for p in prompts])
        return torch.where(nan, torch.nan, scores)


@contextmanager
def running(scorer, **limits):
    """A ScorerServer of `scorer` on a free port, served by a thread: yields the server."""
    server = ScorerServer(scorer, port=0, **limits)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_client_splits_a_call_by_max_batch_and_by_request_bytes():
    scorer = CountingShapes()
    images, prompts = shapes_batch(7)
    expected = build_scorer("shapes").score(images, prompts).double()
    with running(scorer, max_batch=3) as server:
        remote = RemoteScorer(server.url)
        assert torch.equal(remote.score(images, prompts), expected)
        assert scorer.calls == [3, 3, 1]
        scorer.calls.clear()
        assert torch.equal(RemoteScorer(server.url, batch_size=2).score(images, prompts), expected)
        assert scorer.calls == [2, 2, 2, 1]  # the scorer option batch_size caps a request further
        scorer.calls.clear()
        same, caption = [images[0]] * 7, [prompts[0]] * 7
        item = len(png(images[0])) + len(json.dumps(prompts[0])) + 8  # an image and its prompt in the body
        remote.max_request_bytes = REQUEST_OVERHEAD + 2 * item + 1  # as if the server said so: 2 images a request
        assert torch.equal(remote.score(same, caption), expected[[0] * 7])
        assert scorer.calls == [2, 2, 2, 1]


def noise(size: int, seed: int = 0) -> Image.Image:
    """A random RGB image, which PNG cannot compress."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_a_body_over_the_limit_is_refused_with_413_and_the_client_says_so():
    images, prompts = [noise(16, seed) for seed in range(3)], [ANY_CAPTION] * 3  # ~1 KiB each as base64 PNG
    with running(CountingShapes(), max_request_bytes=2048) as server:
        status, answer = post(server.url + "/score", score_body([png(i) for i in images], prompts))
        assert status == 413
        assert answer["error"].endswith("bytes is over this server's limit of 2,048 bytes "
                                        "(serve-scorer --max-request-mb); send fewer images a request")
        remote = RemoteScorer(server.url)
        big = noise(40)
        with pytest.raises(ValueError) as caught:  # one image over the limit: refused before sending
            remote.score([big], ["a red square"])
        assert str(caught.value) == (
            f"remote scorer {server.url}: image 0 takes {len(png(big)):,} bytes as base64 PNG, over the server's "
            "limit of 2,048 bytes a request; restart it with a larger `diffalign serve-scorer --max-request-mb`")
        remote.max_request_bytes = 10**6  # a client that believes the limit larger sends, and is told
        with pytest.raises(ValueError, match=rf"^remote scorer {server.url}: the server refused the request as "
                                             r"too large \(413\): the request body of [\d,]+ bytes is over"):
            remote.score(images, prompts)


def test_bad_requests_get_400_naming_what_is_wrong():
    image = png(shapes_batch(1)[0][0])
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")
    cases = [
        (b"{not json", "the request body is not JSON (Expecting property name enclosed in double quotes: line 1 "
                       "column 2 (char 1))"),
        (b"[1, 2]", 'the request body must be a JSON object {"prompts": [...], "images": [...]}'),
        (json.dumps({"images": [image]}).encode(), "'prompts' must be a list of prompt strings, got nothing"),
        (score_body([image, 3], ["a", "b"]), "'images' must be a list of base64 PNG strings, got a list holding int 3"),
        (score_body([image], ["a", "b"]), "1 images but 2 prompts: give one prompt per image"),
        (score_body([image, "not base64!"], ["a", "b"]),
         "images[1]: not base64 (Only base64 data is allowed)"),
        (score_body([base64.b64encode(jpeg.getvalue()).decode()], ["a"]),
         "images[0]: not a PNG image (cannot identify image file <_io.BytesIO object"),
        (score_body([base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()], ["a"]), "images[0]: not a PNG"),
    ]
    with running(CountingShapes()) as server:
        for body, message in cases:
            status, answer = post(server.url + "/score", body)
            assert status == 400 and answer["error"].startswith(message), (body[:40], answer)
        assert post(server.url + "/score", b"{}", {"Content-Type": "text/plain"}) == (
            415, {"error": "send the request body as application/json"})
        assert post(server.url + "/nowhere", b"{}") == (
            404, {"error": "no route POST /nowhere; the routes are GET /info and POST /score"})
        assert post(server.url + "/info", b"{}", {"Host": "evil.example:80"}) == (
            403, {"error": "unexpected Host header 'evil.example:80'"})


def test_a_scorer_error_is_a_500_with_its_message_and_nan_is_null():
    images, prompts = shapes_batch(2)
    with running(CountingShapes()) as server:
        body = score_body([png(i) for i in images], ["fail", prompts[1]])
        assert post(server.url + "/score", body) == (
            500, {"error": "counting: the scorer cannot read this prompt"})
        status, answer = post(server.url + "/score", score_body([png(i) for i in images], ["nan", prompts[1]]))
        assert status == 200 and answer["scores"][0] is None and isinstance(answer["scores"][1], float)


def test_a_scorer_error_is_narrowed_down_to_its_image_by_score_in_batches():
    scorer = CountingShapes()
    images, prompts = shapes_batch(4)
    prompts[2] = "fail"
    with running(scorer) as server:
        result = score_in_batches(RemoteScorer(server.url), images, prompts)
    assert result.failed == [2]
    assert result.failures[0].reason == (f"remote:{server.url}: remote scorer {server.url}: /score answered 500: "
                                         "counting: the scorer cannot read this prompt")
    assert torch.isfinite(result.values()[[0, 1, 3]]).all()
    assert scorer.calls.count(4) == 1  # a 500 is not retried: the same images would fail again


# --- the client's faults -------------------------------------------------------------------------------------


INFO = {"protocol": 1, "name": "fake", "scale": "unit", "logit_scale": 1.0, "max_batch": 8, "max_request_bytes": 10**6}


@contextmanager
def fake_server(answer):
    """A stdlib server whose every request is answered by `answer(handler) -> (status, body bytes)` or, for None,
    by closing the connection; yields (URL, the list of request paths)."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _any(self):
            seen.append(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            reply = answer(self)
            if reply is None:
                self.close_connection = True
                return
            status, body = reply
            try:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except ConnectionError:  # the client gave up waiting (the timeout test)
                pass

        do_GET = do_POST = _any

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def info_then(score_answer):
    """Answer /info with INFO and /score with `score_answer(handler)`."""
    return lambda h: (200, json.dumps(INFO).encode()) if h.path == "/info" else score_answer(h)


def test_a_dead_address_is_one_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError) as caught:
        build_scorer(f"remote:{url}", retries=1, **FAST)
    assert str(caught.value) == (f"remote scorer {url}: cannot connect (Connection refused) after 2 tries; is "
                                 "`diffalign serve-scorer` running there?")


@pytest.mark.parametrize("reply, message", [
    ((200, b"<html>hello</html>"), "/score answered '<html>hello</html>', not a JSON object; is it a `diffalign "
                                   "serve-scorer` address?"),
    ((200, b'{"scores": [0.5]}'), "/score answered 1 scores for 2 images"),
    ((200, b'{"result": 1}'), "/score answered '{\"result\": 1}', without a 'scores' list; is it a `diffalign "
                              "serve-scorer` address?"),
    ((200, b'{"scores": [0.5, "high"]}'), "/score answered score 1 as '\"high\"', not a number or null"),
    ((404, b"not found"), "/score answered 404 ('not found')"),
])
def test_garbage_answers_are_one_clear_error(reply, message):
    with fake_server(info_then(lambda h: reply)) as (url, _):
        remote = RemoteScorer(url)
        with pytest.raises(ValueError) as caught:
            remote.score(*shapes_batch(2))
    assert str(caught.value) == f"remote scorer {url}: {message}"


@pytest.mark.parametrize("info, message", [
    (b"hello", "/info answered 'hello', not a JSON object; is it a `diffalign serve-scorer` address?"),
    (json.dumps({**INFO, "protocol": 2}).encode(), "the server speaks protocol 2, this diffalign speaks 1; install "
                                                   "the same diffalign version on both sides"),
    (json.dumps({**INFO, "max_batch": 0}).encode(), "/info answered max_batch=0; is it a `diffalign serve-scorer` "
                                                    "address?"),
])
def test_a_wrong_info_answer_fails_when_the_scorer_is_built(info, message):
    with fake_server(lambda h: (200, info)) as (url, _):
        with pytest.raises(ValueError) as caught:
            build_scorer(f"remote:{url}")
    assert str(caught.value) == f"remote scorer {url}: {message}"


def test_retries_are_bounded_and_only_for_what_a_retry_may_cure():
    with fake_server(info_then(lambda h: (503, b'{"error": "busy"}'))) as (url, seen):
        remote = RemoteScorer(url, retries=2, **FAST)
        with pytest.raises(ValueError) as caught:
            remote.score(*shapes_batch(1))
        assert str(caught.value) == (f"remote scorer {url}: /score answered 503: busy after 3 tries; is `diffalign "
                                     "serve-scorer` running there?")
        assert seen.count("/score") == 3
    flaky = iter([None, (200, b'{"scores": [0.25]}')])  # the connection drops once, then an answer
    with fake_server(info_then(lambda h: next(flaky))) as (url, seen):
        assert RemoteScorer(url, retries=1, **FAST).score(*shapes_batch(1)).tolist() == [0.25]
        assert seen.count("/score") == 2
    with fake_server(info_then(lambda h: (500, b'{"error": "boom"}'))) as (url, seen):
        with pytest.raises(ValueError, match="/score answered 500: boom$"):
            RemoteScorer(url, retries=2, **FAST).score(*shapes_batch(1))
        assert seen.count("/score") == 1


def test_a_server_that_stops_answering_fails_the_batch_at_once_not_once_per_image():
    with fake_server(info_then(lambda h: None)) as (url, seen):
        remote = RemoteScorer(url, retries=1, **FAST)
        images, prompts = shapes_batch(8)
        result = score_in_batches(remote, images, prompts)
        assert seen.count("/score") == 2  # one call and its retry; the narrowing-down calls fail at once
        assert result.failed == list(range(8))
        reason = (f"remote:{url}: remote scorer {url}: cannot connect (Remote end closed connection without "
                  "response) after 2 tries; is `diffalign serve-scorer` running there?")
        assert {f.reason for f in result.failures} == {reason}
        with pytest.raises(ScorerFailure, match="failed on all 8 images of the first batch"):
            score_in_batches(remote, images, prompts, stop_if_first_batch_fails=True)
        assert seen.count("/score") == 2  # within the cooldown: not tried again


def test_a_server_that_does_not_answer_in_time_is_a_timeout_error():
    def slow(handler):
        time.sleep(1.0)
        return 200, b'{"scores": [1.0]}'

    with fake_server(info_then(slow)) as (url, seen):
        remote = RemoteScorer(url, timeout=0.2, retries=2, **FAST)
        with pytest.raises(ValueError) as caught:
            remote.score(*shapes_batch(1))
    assert str(caught.value) == (f"remote scorer {url}: no answer to /score within 0.2 s; is the server busy or "
                                 "stuck? (raise the scorer option timeout=SECONDS for a slow scorer)")
    assert seen.count("/score") == 1


@pytest.mark.parametrize("name, message", [
    ("remote:127.0.0.1:8765", "remote:127.0.0.1:8765: expected remote:http://HOST:PORT"),
    ("remote:ftp://host:1", "remote:ftp://host:1: expected remote:http://HOST:PORT"),
    ("remote:http://host:port", "remote:http://host:port: Port could not be cast to integer value as 'port'"),
])
def test_a_malformed_address_is_refused_before_any_connection(name, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        scorer_factory(name)


def test_a_bad_client_option_names_the_option():
    with fake_server(info_then(lambda h: None)) as (url, _):
        with pytest.raises(ValueError, match=rf"^remote scorer {url}: option retries must be a whole number >= 0, "
                                             "got -1$"):
            RemoteScorer(url, retries=-1)
        with pytest.raises(ValueError, match="option timeout must be a number of seconds >= 0, got 'soon'$"):
            RemoteScorer(url, timeout="soon")


def test_the_options_every_caller_passes_are_taken():
    images, prompts = shapes_batch(3)
    batch = torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2) / 255  # float, [0, 1]
    with running(CountingShapes()) as server:
        remote = build_scorer(f"remote:{server.url}", device="cuda", dtype="fp16", batch_size=2, timeout=5)
        scores = remote.score(batch, prompts)
    assert torch.equal(scores, build_scorer("shapes").score(images, prompts).double())  # 8-bit images: the same


# --- the command -------------------------------------------------------------------------------------------


def test_the_command_defaults_are_the_servers():
    args = build_parser().parse_args(["serve-scorer", "shapes"])
    assert (args.host, args.port, args.max_batch, args.max_request_mb) == (
        server_module.DEFAULT_HOST, server_module.DEFAULT_PORT, server_module.DEFAULT_MAX_BATCH,
        server_module.DEFAULT_MAX_REQUEST_MB) == ("127.0.0.1", 8765, 64, 64.0)


def test_binding_to_the_network_warns(monkeypatch, capsys):
    served: list[ScorerServer] = []
    monkeypatch.setattr(server_module, "serve", lambda server: (served.append(server), server.server_close()))
    assert main(["serve-scorer", "shapes", "--host", "0.0.0.0", "--port", "0"]) == 0
    assert served and served[0].host == "0.0.0.0"
    assert capsys.readouterr().err.startswith(
        f"warning: bound to 0.0.0.0: anyone who can reach this machine on port {served[0].port} can use the scorer "
        "(there is no authentication)")
    served.clear()
    assert main(["serve-scorer", "shapes", "--port", "0", "--scorer-option", "shapes.device=cpu"]) == 0
    assert served and capsys.readouterr().err == ""


@pytest.mark.parametrize("argv, message", [
    (["shapes", "--scorer-option", "shapes.device"], "--scorer-option 'shapes.device': expected shapes.KEY=VALUE (or "
                                                      "KEY=VALUE), e.g. shapes.model=/path/to/weights"),
    (["shapes", "--scorer-option", "shapes.colour=red"], "scorer 'shapes' has no option 'colour'"),
    (["shapes", "--max-request-mb", "0"], "--max-request-mb must be more than 0, got 0"),
    (["shapes", "--max-batch", "0"], "--max-batch must be at least 1, got 0"),
    (["shapes", "--port", "70000"], "--port must be 0 (any free port) to 65535, got 70000"),
    (["shape"], "unknown scorer 'shape'; did you mean 'shapes'?"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    assert main(["serve-scorer", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"diffalign serve-scorer: error: {message}"), err


def test_a_port_in_use_is_a_clear_error(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["serve-scorer", "shapes", "--port", str(port)]) == 2
    assert capsys.readouterr().err.startswith(
        f"diffalign serve-scorer: error: cannot listen on 127.0.0.1:{port}: Address already in use; choose another "
        "--port (0 picks a free one) or --host")


# --- the HPSv3 example (its real model cannot run here: a stand-in `hpsv3` package checks the glue) -----------

FAKE_HPSV3 = '''
import torch
calls = []

class HPSv3RewardInferencer:
    def __init__(self, config_path=None, checkpoint_path=None, device="cuda", differentiable=False):
        calls.append(("init", checkpoint_path, device))

    def reward(self, prompts, image_paths):
        calls.append(("reward", [type(image).__name__ for image in image_paths], list(prompts)))
        mean = torch.tensor([float(len(p)) for p in prompts], dtype=torch.bfloat16)
        return torch.stack([mean, torch.ones_like(mean)], dim=1)
'''


def test_the_hpsv3_example_calls_the_inferencer_as_hpsv3_documents_it(tmp_path, monkeypatch):
    (tmp_path / "hpsv3").mkdir()
    (tmp_path / "hpsv3" / "__init__.py").write_text(FAKE_HPSV3)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "hpsv3", raising=False)
    spec = importlib.util.spec_from_file_location("hpsv3_scorer", ROOT / "examples" / "rewards" / "hpsv3_scorer.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    import hpsv3

    scorer = example.HPSv3(device="cuda:1", batch_size=2)
    images = np.zeros((3, 16, 16, 3), dtype=np.uint8)  # a uint8 batch: PIL images reach the inferencer
    scores = scorer.score(images, ["a", "bb", "ccc"])
    assert scores.dtype == torch.float32 and scores.tolist() == [1.0, 2.0, 3.0]  # the mean column
    assert hpsv3.calls == [("init", None, "cuda:1"), ("reward", ["Image", "Image"], ["a", "bb"]),
                           ("reward", ["Image"], ["ccc"])]
    with pytest.raises(ValueError, match=r"checkpoint 'model\.pth': give HPSv3's \.safetensors file"):
        example.HPSv3(checkpoint="model.pth")

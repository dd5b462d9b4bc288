"""The local web page on which a person labels a round's images (`diffalign label`): standard-library
`http.server`, no other dependency, so it works offline.

Routes: `GET /` the page (label_page.html); `GET /api/state` the round, its prompts and image URLs, the
decisions so far and the progress; `GET /images/<file>` an image listed in round.json (nothing else);
`POST /api/choice` `{"prompt": int, "choice": int | "tie" | "skip"}` and `POST /api/undo`, each appended
to labels.jsonl (fsynced) and followed by a rewrite of pairs.jsonl, answered with the new state.

Bound to 127.0.0.1 by default. A loopback server answers only requests whose Host header names a loopback
address (no DNS rebinding), and a POST must be `application/json` (no cross-site form posts).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from ..config.options import MISSING, host_option, option
from ..data.label_rounds import (
    PAIRS_FILE,
    actions_of,
    pairs_of,
    read_round,
    record_choice,
    record_undo,
    write_pairs,
)

PAGE = "label_page.html"
MAX_BODY = 64 * 1024
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """Whether `host` is an address only this machine can reach."""
    return host in LOOPBACK_NAMES or host.startswith("127.")


@dataclass
class LabelOptions:
    """The options of `diffalign label`: which round to label and where the page listens."""

    round_dir: str = option(MISSING, "the round folder (holding round.json and the images)", positional=True,
                            metavar="ROUND_DIR")
    host: str = host_option()
    port: int = option(0, "port to listen on (0: a free one, printed at start)")


class LabelServer(ThreadingHTTPServer):
    """The labelling server of one round folder; `url` is its address, `shutdown()` stops `serve_forever`."""

    daemon_threads = True  # an open browser connection never holds up stopping

    def __init__(self, folder: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.round = read_round(folder)
        actions_of(self.round)  # a damaged labels.jsonl is an error at start, naming the line
        self.page = resources.files(__package__).joinpath(PAGE).read_bytes()
        self.lock = threading.Lock()  # one action at a time: append to the log, then rewrite the pairs
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), LabelHandler)
        self.host = host

    def handle_error(self, request: object, client_address: object) -> None:
        """A browser that hangs up mid-request (a closed tab, a reload) is no error to report; anything else is."""
        if isinstance(sys.exc_info()[1], ConnectionError):  # BrokenPipeError, ConnectionResetError, ...
            return
        super().handle_error(request, client_address)

    @property
    def port(self) -> int:
        """The port it listens on (the free one picked for port 0)."""
        return self.server_address[1]

    @property
    def url(self) -> str:
        """The page's address, e.g. http://127.0.0.1:8000/."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def allowed_hosts(self) -> set[str] | None:
        """The Host header values answered (loopback names with the port), or None for any (non-loopback)."""
        if not is_loopback(self.host):
            return None
        return {f"{name}:{self.port}" for name in ("127.0.0.1", "localhost", "[::1]", self.host)}

    def state(self) -> dict:
        """The round, its prompts with image URLs, each prompt's decision (None while undecided) and progress."""
        round_ = self.round
        actions = actions_of(round_)
        decisions = dict(actions)
        return {
            "round": round_.index,
            "folder": str(round_.folder.resolve()),
            "prompts": [{"prompt": p.prompt, "images": [f"images/{quote(name)}" for name in p.images]}
                        for p in round_.prompts],
            "decisions": [decisions.get(p) for p in range(len(round_.prompts))],
            "labelled": len(decisions),
            "total": len(round_.prompts),
            "complete": len(decisions) == len(round_.prompts),
            "pairs": len(pairs_of(round_, decisions)),
            "pairs_file": str((round_.folder / PAIRS_FILE).resolve()),
            "can_undo": bool(actions),
        }

    def choose(self, prompt: object, choice: object) -> dict:
        """Record a decision, rewrite pairs.jsonl; the new state."""
        with self.lock:
            prompt, choice = self.round.check_choice(prompt, choice)
            record_choice(self.round.folder, prompt, choice)
            write_pairs(self.round.folder)
            state = self.state()
        if state["complete"]:
            print(f"all {state['total']} prompts labelled: {state['pairs']} pairs in {state['pairs_file']}", flush=True)
        return state

    def undo(self) -> dict:
        """Take the last action back, rewrite pairs.jsonl; the new state plus `undone`, the prompt whose
        decision was taken back (None when there was nothing to undo)."""
        with self.lock:
            undone = record_undo(self.round.folder)
            if undone is not None:
                write_pairs(self.round.folder)
            return {**self.state(), "undone": undone}


class LabelHandler(BaseHTTPRequestHandler):
    """The routes of `LabelServer`."""

    server: LabelServer
    server_version = "diffalign-label"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the terminal shows the address and the progress, not every request."""

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: object) -> None:
        self._send(status, json.dumps(value).encode("utf-8"), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message})

    def _host_allowed(self) -> bool:
        allowed = self.server.allowed_hosts()
        if allowed is None or (self.headers.get("Host") or "").lower() in allowed:
            return True
        self._error(HTTPStatus.FORBIDDEN, f"unexpected Host header {self.headers.get('Host')!r}")
        return False

    def do_GET(self) -> None:
        """The page, the state or an image of the round."""
        if not self._host_allowed():
            return
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/state":
            self._json(HTTPStatus.OK, self.server.state())
        elif path.startswith("/images/"):
            self._image(unquote(path[len("/images/"):]))
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    do_HEAD = do_GET

    def _image(self, name: str) -> None:
        if name not in self.server.round.image_files:  # only the listed files: no way out of the folder
            self._error(HTTPStatus.NOT_FOUND, f"{name!r} is not an image of this round")
            return
        try:
            body = (self.server.round.folder / name).read_bytes()
        except OSError as error:
            self._error(HTTPStatus.NOT_FOUND, f"{name}: {error.strerror}")
            return
        self._send(HTTPStatus.OK, body, "image/png")

    def _body(self) -> dict | None:
        """The request's JSON object, or None after answering with the error."""
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the request body as application/json")
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._error(HTTPStatus.BAD_REQUEST, f"Content-Length must be 0 to {MAX_BODY} bytes")
            return None
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            self._error(HTTPStatus.BAD_REQUEST, f"request body is not JSON: {error}")
            return None
        if not isinstance(body, dict):
            self._error(HTTPStatus.BAD_REQUEST, "request body must be a JSON object")
            return None
        return body

    def do_POST(self) -> None:
        """A choice or an undo, recorded; answered with the new state."""
        if not self._host_allowed():
            return
        path = urlsplit(self.path).path
        if path not in ("/api/choice", "/api/undo"):
            self._error(HTTPStatus.NOT_FOUND, f"no such action: {path}")
            return
        body = self._body()
        if body is None:
            return
        try:
            if path == "/api/choice":
                self._json(HTTPStatus.OK, self.server.choose(body.get("prompt"), body.get("choice")))
            else:
                self._json(HTTPStatus.OK, self.server.undo())
        except ValueError as error:
            self._error(HTTPStatus.BAD_REQUEST, str(error))
        except OSError as error:
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"could not save the label: {error}")


def _announce(server: LabelServer) -> None:
    state = server.state()
    if not is_loopback(server.host):
        print(f"warning: listening on {server.host}, not only this machine: anyone who can reach port {server.port} "
              "can see the images and label them", file=sys.stderr, flush=True)
    print(f"round {state['round']} in {state['folder']}: {state['labelled']} / {state['total']} prompts labelled\n"
          f"label at {server.url}  (Ctrl-C to stop)", flush=True)


def _run(server: LabelServer, ready: Callable[[LabelServer], object] | None) -> None:
    try:
        _announce(server)
        if ready is not None:
            ready(server)
        server.serve_forever()
    finally:
        server.server_close()


def serve(folder: str | Path, host: str = LabelOptions.host, port: int = LabelOptions.port,
          ready: Callable[[LabelServer], object] | None = None) -> None:
    """Serve the labelling page of a round folder until `server.shutdown()` (from another thread) or Ctrl-C.

    Prints the address; `ready(server)` is called once it listens (`server.url`, `server.shutdown`).
    Raises FileNotFoundError/ValueError naming the file when `folder` is not a readable round folder.
    """
    _run(LabelServer(folder, host, port), ready)


@contextmanager
def running(folder: str | Path, host: str = "127.0.0.1", port: int = 0) -> Iterator[LabelServer]:
    """The labelling server of `folder` serving in a background thread for the `with` block, then stopped."""
    server = LabelServer(folder, host, port)
    thread = threading.Thread(target=_run, args=(server, None), name=f"label-server-{server.port}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()

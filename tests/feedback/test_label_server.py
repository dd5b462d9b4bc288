"""The labelling server over HTTP: state, images (and nothing else), choices and undo, resume after a restart."""

import json
import queue
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from diffalign.cli.main import main
from diffalign.data.label_rounds import read_decisions, write_round
from diffalign.feedback.label_server import LabelServer, running, serve

PROMPTS = ["a red circle", "a green square"]
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to 127.0.0.1, whatever proxy is set


@pytest.fixture
def folder(tmp_path):
    colours = np.arange(6 * 3, dtype=np.uint8).reshape(6, 1, 1, 3) * 14
    return write_round(tmp_path / "round", 5, PROMPTS, np.broadcast_to(colours, (6, 64, 64, 3)).copy())


def get(url: str, headers: dict | None = None) -> tuple[int, bytes, str]:
    """(status, body, content type) of a GET, errors included."""
    try:
        with LOCAL.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers["Content-Type"]


def post(url: str, body: object, content_type: str = "application/json") -> tuple[int, dict]:
    """(status, JSON answer) of a POST of `body` as JSON."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": content_type}, method="POST")
    try:
        with LOCAL.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_serve_in_a_thread_answers_the_state_and_stops_cleanly(folder, capsys):
    started: queue.Queue[LabelServer] = queue.Queue()
    thread = threading.Thread(target=serve, args=(folder,), kwargs={"port": 0, "ready": started.put})
    thread.start()
    server = started.get(timeout=10)
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/" and server.port > 0
        status, body, kind = get(server.url + "api/state")
        state = json.loads(body)
        assert status == 200 and kind == "application/json"
        assert state["round"] == 5 and state["total"] == 2 and state["labelled"] == 0 and not state["complete"]
        assert [p["prompt"] for p in state["prompts"]] == PROMPTS
        assert state["prompts"][1]["images"] == ["images/p0001-i0.png", "images/p0001-i1.png", "images/p0001-i2.png"]
        assert state["decisions"] == [None, None] and not state["can_undo"]
        status, page, kind = get(server.url)
        assert status == 200 and kind.startswith("text/html") and b"labelled" in page
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert f"label at {server.url}" in capsys.readouterr().out


def test_images_are_served_and_nothing_else(folder):
    (folder / "secret.txt").write_text("SECRET")
    with running(folder) as server:
        status, body, kind = get(server.url + "images/p0000-i1.png")
        assert status == 200 and kind == "image/png" and body == (folder / "p0000-i1.png").read_bytes()
        for path in ("images/secret.txt", "images/round.json", "images/..%2F..%2Fetc%2Fpasswd", "images/../round.json",
                     "images/%2Fetc%2Fpasswd", "round.json", "nothing"):
            status, body, _ = get(server.url + path)
            assert status == 404, path
            assert b"SECRET" not in body and b"prompts" not in body


def test_choice_and_undo_over_http(folder):
    with running(folder) as server:
        status, state = post(server.url + "api/choice", {"prompt": 1, "choice": 2})
        assert status == 200 and state["decisions"] == [None, 2] and state["labelled"] == 1 and state["pairs"] == 2
        rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
        assert rows == [{"prompt": "a green square", "chosen": "p0001-i2.png", "rejected": f"p0001-i{k}.png"}
                        for k in (0, 1)]
        status, state = post(server.url + "api/choice", {"prompt": 0, "choice": "tie"})
        assert state["complete"] and state["pairs"] == 2
        status, state = post(server.url + "api/undo", {})
        assert status == 200 and state["undone"] == 0 and state["decisions"] == [None, 2]
        status, state = post(server.url + "api/undo", {})
        assert state["undone"] == 1 and (folder / "pairs.jsonl").read_text() == ""
        status, state = post(server.url + "api/undo", {})
        assert status == 200 and state["undone"] is None and not state["can_undo"]
        assert (folder / "labels.jsonl").read_text().count("\n") == 4  # the empty undo wrote nothing


def test_bad_requests_are_refused_and_not_recorded(folder):
    with running(folder) as server:
        status, answer = post(server.url + "api/choice", {"prompt": 0, "choice": 3})
        assert status == 400 and "expected an image index 0 to 2" in answer["error"]
        status, answer = post(server.url + "api/choice", {"prompt": 9, "choice": 0})
        assert status == 400 and "prompt 9" in answer["error"]
        status, answer = post(server.url + "api/choice", {"prompt": 0, "choice": 0}, content_type="text/plain")
        assert status == 415  # a cross-site form cannot post a label
        status, body, _ = get(server.url + "api/state", headers={"Host": f"evil.example:{server.port}"})
        assert status == 403  # DNS rebinding: another site's name for this address
    assert not (folder / "labels.jsonl").exists()


def test_labels_resume_after_a_restart(folder):
    with running(folder) as server:
        post(server.url + "api/choice", {"prompt": 0, "choice": 1})
    with running(folder) as server:
        _, body, _ = get(server.url + "api/state")
        state = json.loads(body)
        assert state["decisions"] == [1, None] and state["labelled"] == 1 and state["can_undo"]
        post(server.url + "api/choice", {"prompt": 1, "choice": "skip"})
    assert read_decisions(folder) == {0: 1, 1: "skip"}


def test_listening_beyond_this_machine_warns(folder, capsys):
    with running(folder, host="0.0.0.0") as server:
        status, _, _ = get(f"http://127.0.0.1:{server.port}/api/state")
        assert status == 200  # any Host header is answered: the server is meant to be reached by other names
    assert "warning: listening on 0.0.0.0, not only this machine" in capsys.readouterr().err


def test_cli_refuses_a_folder_that_is_not_a_round(tmp_path, capsys):
    assert main(["label", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "diffalign label: error:" in err and f"{tmp_path}/round.json: not found" in err


def test_cli_ctrl_c_prints_the_progress(folder, capsys, monkeypatch):
    import diffalign.feedback.label_server as label_server

    def interrupted(folder, host, port):
        raise KeyboardInterrupt

    (folder / "labels.jsonl").write_text('{"prompt": 1, "choice": 0}\n')
    monkeypatch.setattr(label_server, "serve", interrupted)
    assert main(["label", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"stopped: 1 / 2 prompts labelled, 2 pair(s) in {folder / 'pairs.jsonl'}" in out


def _wait_for_handlers(deadline_s: float = 5.0) -> None:
    """Until the server's request threads (socketserver's process_request_thread) have finished."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and any("process_request" in t.name for t in threading.enumerate()):
        time.sleep(0.02)


def test_a_client_that_hangs_up_mid_request_leaves_no_traceback(folder, capsys):
    with running(folder) as server:
        host = f"127.0.0.1:{server.port}"
        requests = [  # a body announced but never sent, then a reset; a request reset before its answer is read
            f"POST /api/choice HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{{",
            f"GET /images/p0000-i0.png HTTP/1.1\r\nHost: {host}\r\n\r\n",
        ]
        for request in requests:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
                client.sendall(request.encode())
                time.sleep(0.2)  # the server is now waiting for the rest of the body
        status, _, _ = get(server.url + "api/state")
        assert status == 200
        _wait_for_handlers()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err
    assert read_decisions(folder) == {}

"""static/protocol.json is the one table of close codes, error codes and frame types: the
server reads it, the browser client imports it. These tests fail when either side grows a
code or a frame type of its own that the file does not list."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from hubbub import errors
from hubbub.errors import Close, HubError
from hubbub.extension import HTTP_ERROR_CODES
from hubbub.hub.message import presence_frame
from hubbub.protocol import CLIENT_FRAMES, CLOSE_CODES, ERROR_STATUS, SERVER_FRAMES, STATIC_DIR
from hubbub.transports.common import ack_frame, welcome_frame
from hubbub.transports.inbound import parse_frame

TABLES = json.loads((STATIC_DIR / "protocol.json").read_text())
CLIENT_JS = (STATIC_DIR / "hubbub.js").read_text()
# A frame written as JSON text, such as '{"type":"pong"}': its type.
JSON_TEXT_FRAME = re.compile(r"'\{\"type\":\"(\w+)\"")


def error_classes() -> list[type[HubError]]:
    found, todo = [], [HubError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def test_every_close_code_of_the_server_is_in_the_file_and_every_one_is_used() -> None:
    named = {name: value for name, value in vars(Close).items() if name.isupper()}
    assert sorted(named.values()) == sorted(CLOSE_CODES.values())
    assert {name.lower() for name in named} == set(CLOSE_CODES)


def test_every_error_the_server_raises_has_its_code_and_status_from_the_file() -> None:
    raised = {cls.code for cls in error_classes()}
    for cls in error_classes():
        assert cls.status == ERROR_STATUS[cls.code], cls
        assert cls.close_code in CLOSE_CODES.values(), cls
    # Every code of the file is one the server can answer (werkzeug's statuses included).
    assert set(ERROR_STATUS) <= raised | set(HTTP_ERROR_CODES.values())
    assert errors.Unauthorized("x").status == 401  # read from the file, not a default


def test_the_browser_client_exports_exactly_the_files_tables() -> None:
    script = ('import { CLOSE_CODES, ERROR_CODES } from "./static/hubbub.js";'
              "console.log(JSON.stringify({ CLOSE_CODES, ERROR_CODES }));")
    ran = subprocess.run(["node", "--input-type=module", "-e", script], cwd=STATIC_DIR.parent,
                         capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stderr
    client = json.loads(ran.stdout)
    assert client["CLOSE_CODES"] == TABLES["close_codes"]
    assert client["ERROR_CODES"] == TABLES["errors"]


def test_every_frame_the_server_composes_is_a_server_frame_of_the_file() -> None:
    composed = [welcome_frame("room:lobby", "alice", None, 15), ack_frame("e-1", "r1"),
                errors.BadRequest("x").frame(), presence_frame("join", "room:lobby", "alice"),
                presence_frame("leave", "room:lobby", "alice"), '{"type":"resync"}', '{"type":"pong"}',
                '{"type":"ping"}']
    kinds = {json.loads(frame)["type"] for frame in composed}
    assert kinds <= SERVER_FRAMES
    sources = "\n".join(path.read_text() for path in Path(errors.__file__).parent.rglob("*.py"))
    literal = set(JSON_TEXT_FRAME.findall(sources))
    assert literal <= SERVER_FRAMES | CLIENT_FRAMES, literal - SERVER_FRAMES


@pytest.mark.parametrize("kind", sorted(CLIENT_FRAMES))
def test_the_server_accepts_every_client_frame_of_the_file(kind: str) -> None:
    frame = {"type": kind, "text": "hi", "token": "t", "channel": "room:lobby"}
    assert parse_frame(json.dumps(frame)).type == kind


def test_the_server_refuses_a_frame_type_the_file_does_not_list() -> None:
    with pytest.raises(errors.BadRequest, match="expected one of auth, chat, ping, subscribe, unsubscribe"):
        parse_frame('{"type":"publish"}')


def test_the_client_handles_and_sends_only_frame_types_of_the_file() -> None:
    switches = re.findall(r"switch \(frame\.type\) \{(.*?)\n    \}", CLIENT_JS, re.DOTALL)
    handled = {kind for switch in switches for kind in re.findall(r'case "(\w+)":', switch)}
    stringified = set(re.findall(r'JSON.stringify\(\{ type: "(\w+)"', CLIENT_JS))
    changes = set(re.findall(r'#sendChange\("(\w+)"', CLIENT_JS))  # subscribe, unsubscribe
    sent = stringified | changes | set(JSON_TEXT_FRAME.findall(CLIENT_JS))
    assert len(switches) == 2 and {"welcome", "ack", "subscribed"} <= handled, handled
    assert handled <= SERVER_FRAMES, handled - SERVER_FRAMES
    assert sent == {"chat", "ping", "subscribe", "unsubscribe"} and sent <= CLIENT_FRAMES, sent

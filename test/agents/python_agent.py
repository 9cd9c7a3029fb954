#!/usr/bin/env python3
"""A Switchyard agent in Python 3, standard library only, written from docs/protocol.md.

It is an example and the agent of test/node/python-agent.e2e.test.ts. It speaks just
enough RFC 6455 to be an agent: no extensions, no reconnect, no token refresh (a real
agent reconnects with backoff and sends `auth.refresh` before `tokenExpiresAt`).

    SWITCHYARD_TOKEN=<agent token> python3 python_agent.py --url http://127.0.0.1:8787 \
        --agent demo [--exit-after N]

Actions:
  echo    completed, with the payload as its result
  fail    failed, with payload["message"] as its error
  output  streams each of payload["lines"] as output, then completed
  sleep   completed after payload["seconds"], unless cancelled first

It exits 0 after N finished commands (--exit-after), on SIGTERM or SIGINT, or when the
server closes the socket with 1000; otherwise 1.
"""

import argparse
import base64
import hashlib
import json
import os
import select
import signal
import socket
import ssl
import struct
import sys
import time
import urllib.parse

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
PING_EVERY = 30.0  # seconds; the server closes a socket silent for 90 s
stop_requested = False  # set by SIGTERM/SIGINT


def log(*parts):
    print("[python-agent]", *parts, file=sys.stderr, flush=True)


class WebSocket:
    """A minimal RFC 6455 client: text frames, ping/pong, close. No extensions."""

    def __init__(self, url, headers):
        u = urllib.parse.urlsplit(url)
        secure = u.scheme in ("https", "wss")
        port = u.port or (443 if secure else 80)
        sock = socket.create_connection((u.hostname, port), timeout=30)
        if secure:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=u.hostname)
        self.sock = sock
        self.buf = b""
        self.fragments = []
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {u.path or '/'} HTTP/1.1",
            f"Host: {u.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ] + [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status, *header_lines = head.decode("latin-1").split("\r\n")
        if status.split(" ")[1:2] != ["101"]:
            raise ConnectionError(f"upgrade refused: {status}")  # 401: bad token; 426: not a WebSocket
        got = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if got.get("sec-websocket-accept") != expected:
            raise ConnectionError("bad Sec-WebSocket-Accept")
        sock.settimeout(None)

    def send_frame(self, opcode, payload=b""):
        # Client frames are always masked (RFC 6455 5.3).
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send_text(self, text):
        self.send_frame(OP_TEXT, text.encode("utf-8"))

    def close(self, code=1000):
        """Sends a close frame and waits briefly for the server's, as RFC 6455 asks."""
        try:
            self.send_frame(OP_CLOSE, struct.pack("!H", code))
            while (event := self.receive(5)) is not None and event[0] != "close":
                pass
        except OSError:
            pass  # already gone
        self.sock.close()

    def receive(self, timeout):
        """Waits up to `timeout` s for a message: ("text", str), ("close", code), or None."""
        deadline = time.monotonic() + timeout
        while (event := self._next_event()) is None:
            tls_pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
            left = deadline - time.monotonic()
            if not tls_pending and (left <= 0 or not select.select([self.sock], [], [], left)[0]):
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                return ("close", 1006)
            self.buf += chunk
        return event

    def _next_event(self):
        """The next message among the frames already read; answers pings on the way."""
        while (frame := self._parse()) is not None:
            fin, opcode, payload = frame
            if opcode == OP_PING:
                self.send_frame(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return ("close", code)
            elif opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                self.fragments.append(payload)
                if fin:
                    data, self.fragments = b"".join(self.fragments), []
                    return ("text", data.decode("utf-8"))
        return None

    def _parse(self):
        """Takes one whole frame off the buffer: (fin, opcode, payload), or None."""
        b = self.buf
        if len(b) < 2:
            return None
        fin, opcode, n, at = b[0] & 0x80, b[0] & 0x0F, b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, at = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, at = struct.unpack("!Q", b[2:10])[0], 10
        if b[1] & 0x80:
            raise ConnectionError("the server masked a frame (RFC 6455 5.1 forbids it)")
        if len(b) < at + n:
            return None
        self.buf = b[at + n :]
        return bool(fin), opcode, b[at : at + n]


class Agent:
    def __init__(self, ws, exit_after):
        self.ws = ws
        self.exit_after = exit_after
        # id -> the result frame sent, to answer a redelivery without running twice
        # (a long-lived agent would keep only the recent ones)
        self.finished = {}
        self.sleeping = {}  # id -> when its sleep ends (time.monotonic())
        self.stopping = False

    def send(self, frame):
        # Compact separators: a ping must be exactly {"type":"ping"} to be answered at the edge.
        self.ws.send_text(json.dumps(frame, separators=(",", ":")))

    def finish(self, cid, status, result=None, error=None):
        frame = {"type": "result", "id": cid, "status": status}
        if status == "completed":
            frame["result"] = result
            frame["error"] = None  # the server reads null as absent
        if error is not None:
            frame["error"] = error
        self.finished[cid] = frame
        self.send(frame)
        log(f"{cid} {status}")
        if self.exit_after and len(self.finished) >= self.exit_after:
            self.stopping = True

    def on_command(self, frame):
        cid, action, payload = frame["id"], frame["action"], frame.get("payload")
        if cid in self.finished:  # delivered again after a lost result: the first result stands
            self.send(self.finished[cid])
            return
        self.send({"type": "ack", "id": cid})
        if cid in self.sleeping:
            return
        args = payload if isinstance(payload, dict) else {}
        if action == "echo":
            self.finish(cid, "completed", result=payload)
        elif action == "fail":
            self.finish(cid, "failed", error=str(args.get("message", "failed on purpose")))
        elif action == "output":
            lines = [str(line) for line in args.get("lines", [])]
            for seq, line in enumerate(lines):
                self.send({"type": "output", "id": cid, "seq": seq, "data": line + "\n"})
            self.finish(cid, "completed", result={"lines": len(lines)})
        elif action == "sleep":
            self.sleeping[cid] = time.monotonic() + float(args.get("seconds", 1))
        else:
            self.finish(cid, "failed", error=f"unknown action {action!r}; this agent handles echo, fail, output, sleep")

    def on_cancel(self, frame):
        cid = frame["id"]
        if cid in self.finished:  # already done: answer with what it was
            self.send(self.finished[cid])
        else:
            self.sleeping.pop(cid, None)
            self.finish(cid, "cancelled", error=f"cancelled ({frame.get('reason', 'requested')})")

    def run(self):
        event = self.ws.receive(30)
        welcome = json.loads(event[1]) if event and event[0] == "text" else {}
        if welcome.get("type") != "welcome":
            raise ConnectionError(f"expected welcome, got {event}")
        log(f"connected as {welcome['agentId']} (generation {welcome['generation']})")
        self.send({"type": "hello", "concurrency": 4, "running": None})  # null: running nothing
        next_ping = time.monotonic() + PING_EVERY
        while not (self.stopping or stop_requested):
            now = time.monotonic()
            for cid, until in list(self.sleeping.items()):
                if until <= now:
                    del self.sleeping[cid]
                    self.finish(cid, "completed", result="slept")
            if now >= next_ping:
                self.send({"type": "ping"})
                next_ping = now + PING_EVERY
            # Wake at least once a second to notice SIGTERM and sleeps that ended.
            event = self.ws.receive(1.0)
            if event is None:
                continue
            kind, value = event
            if kind == "close":
                log(f"server closed the socket with {value}")
                if value not in (1005, 1006, 1015):  # reserved: never sent in a close frame
                    self.ws.close(value)
                return 0 if value == 1000 else 1
            frame = json.loads(value)
            if frame.get("type") == "command":
                self.on_command(frame)
            elif frame.get("type") == "cancel":
                self.on_cancel(frame)
            elif frame.get("type") == "error":
                log(f"server refused a frame: {frame}")
            # pong, auth.refreshed and frame types added later need nothing here
        self.ws.close(1000)
        log("closed")
        return 0


def main():
    p = argparse.ArgumentParser(description="A Switchyard agent in Python (standard library only).")
    p.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8787")
    p.add_argument("--agent", required=True, help="agent id")
    p.add_argument("--exit-after", type=int, default=0, help="exit 0 after this many finished commands")
    opts = p.parse_args()
    token = os.environ.get("SWITCHYARD_TOKEN")
    if not token:
        sys.exit("set SWITCHYARD_TOKEN to an agent token (POST /v1/agents/<id>/token)")
    url = f"{opts.url.rstrip('/')}/v1/agents/{urllib.parse.quote(opts.agent, safe='')}/connect"

    def stop(_signum, _frame):
        global stop_requested
        stop_requested = True  # the loop notices within a second and closes with 1000

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent = Agent(WebSocket(url, {"Authorization": f"Bearer {token}"}), opts.exit_after)
    sys.exit(agent.run())


if __name__ == "__main__":
    main()

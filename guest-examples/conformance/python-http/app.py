"""The conformance function in Python: a container serving HTTP/1.1 on $PORT with the standard
library alone. Every conformance function answers the same routes (conformance/README.md)."""

import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

calls_seen = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def __getattr__(self, name):
        # Every method, extension methods included, goes to one handler.
        if name.startswith("do_"):
            return self.handle_call
        raise AttributeError(name)

    def log_message(self, *args):
        pass  # the access log is the platform's job

    def param(self, name, default=""):
        return parse_qs(self.query, keep_blank_values=True).get(name, [default])[0]

    def number(self, name):
        try:
            return int(self.param(name, "0"))
        except ValueError:
            return 0

    def send(self, status, body, content_type="text/plain; charset=utf-8", headers=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)

    def handle_call(self):
        global calls_seen
        self.path_only, _, self.query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        route = self.path_only.split("/")[1] if "/" in self.path_only else ""

        if route == "echo":
            extra = [("X-Echo-Content-Type", self.headers["Content-Type"])] if "Content-Type" in self.headers else []
            self.send(200, body, "application/octet-stream", extra)
        elif route == "request":
            self.send(200, f"method={self.command}\npath={self.path_only}\nquery={self.query}\nbody_len={len(body)}\n")
        elif route == "header":
            values = self.headers.get_all(self.param("name")) or []
            if values:
                self.send(200, ", ".join(values))
            else:
                self.send(404, "absent")
        elif route == "meta":
            deadline = int(self.headers.get("amphi-deadline-ms") or 0)
            now = int(time.time() * 1000)
            ok = "true" if now < deadline <= now + 900000 else "false"
            self.send(200, f"id={self.headers.get('amphi-invocation-id', '')}\n"
                           f"function={self.headers.get('amphi-function', '')}\n"
                           f"version={self.headers.get('amphi-function-version', '')}\n"
                           f"deadline_ok={ok}\n")
        elif route == "status":
            code = self.number("code")
            code = code if 100 <= code <= 999 else 400
            self.send(code, f"status {code}", "text/plain")
        elif route == "headers-out":
            self.send(200, "headers", headers=[("X-Repeat", "a"), ("X-Repeat", "b"),
                                               ("X-Unusual", 'a "quoted" value; with=odd, chars')])
        elif route == "headers-forged":
            self.send(200, "forged", headers=[("Amphi-Shim-Error", "forged"), ("Amphi-Function", "forged"),
                                              ("Amphi-Backend", "forged"), ("Amphi-Anything", "forged")])
        elif route == "stream":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(self.number("chunks")):
                time.sleep(self.number("delay_ms") / 1000)
                chunk = f"chunk {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif route == "env":
            value = os.environ.get(self.param("name"))
            if value is None:
                self.send(404, "unset")
            else:
                self.send(200, value)
        elif route == "log":
            text = self.param("text")
            print(text, flush=True)
            print(f"amphi-invocation={self.headers.get('amphi-invocation-id', '')} logger: {text}",
                  file=sys.stderr, flush=True)
            self.send(200, "logged")
        elif route == "big":
            self.send(200, b"x" * (self.number("mb") << 20))
        elif route == "flood":
            # `mb` MiB to stderr, in lines of 1 KiB: far past any log budget.
            line = b"x" * 1023 + b"\n"
            for _ in range(self.number("mb") * 1024):
                sys.stderr.buffer.write(line)
            sys.stderr.flush()
            self.send(200, "flooded")
        elif route == "sleep":
            time.sleep(self.number("ms") / 1000)
            self.send(200, "slept")
        elif route == "crash":
            print("the conformance function was asked to crash", file=sys.stderr, flush=True)
            os._exit(1)
        elif route == "alloc":
            mib = self.number("mib")
            try:
                block = bytearray(b"\x01") * (mib << 20)
            except MemoryError:
                os._exit(1)
            self.send(200, f"allocated {len(block) >> 20} MiB")
        elif route == "state":
            calls_seen += 1
            self.send(200, str(calls_seen))
        else:
            self.send(404, "no such route")


ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()

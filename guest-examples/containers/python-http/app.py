"""A container function in Python: serves HTTP on $PORT, logs to stdout and stderr.

Routes (by first path segment):
  /           greeting with the invocation id the platform sent
  /echo       the request body back
  /log?lines  writes N lines to stdout and one to stderr
  /sleep?ms   waits, then answers
  /alloc?mb   allocates and touches that many MiB (to hit a memory limit)
  /crash      exits the process with code 3
  /status/N   an answer with status N
  /env        the environment variable GREETING
  /sandbox    what the process may do: network interfaces, writable paths, capabilities
"""

import json
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without this, Nagle and delayed ACKs add ~40ms.
    disable_nagle_algorithm = True

    def answer(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route(self):
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        segment = url.path.strip("/").split("/")[0]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        invocation = self.headers.get("amphi-invocation-id", "")
        if segment == "":
            print(f"hello called ({invocation})")
            self.answer(200, {"hello": "from python", "invocation": invocation, "method": self.command})
        elif segment == "echo":
            self.answer(200, body, self.headers.get("Content-Type", "application/octet-stream"))
        elif segment == "log":
            lines = int(query.get("lines", "3"))
            for i in range(lines):
                print(f"line {i}")
            print("to stderr", file=sys.stderr, flush=True)
            self.answer(200, {"logged": lines})
        elif segment == "status":
            code = int(url.path.strip("/").split("/")[1])
            print(f"answering {code}")
            self.answer(code, {"status": code})
        elif segment == "sleep":
            time.sleep(int(query.get("ms", "100")) / 1000)
            self.answer(200, {"slept_ms": int(query.get("ms", "100"))})
        elif segment == "alloc":
            mib = int(query.get("mb", "1"))
            print(f"allocating {mib} MiB")
            block = bytearray(mib << 20)
            for i in range(0, len(block), 4096):
                block[i] = 1
            self.answer(200, {"allocated_mb": mib})
        elif segment == "crash":
            print("crashing on purpose", flush=True)
            os._exit(3)
        elif segment == "env":
            self.answer(200, {"GREETING": os.environ.get("GREETING")})
        elif segment == "sandbox":
            self.answer(200, sandbox())
        else:
            self.answer(404, {"error": f"no route {url.path}"})

    do_GET = do_POST = do_PUT = do_DELETE = route

    def log_message(self, format, *args):
        pass  # the platform records every call; no access log needed


def writable(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        os.remove(path)
        return True
    except OSError:
        return False


def first_readable(*paths):
    for path in paths:
        try:
            return open(path).read().strip()
        except OSError:
            pass
    return None


def sandbox():
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return {
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
        "root_writable": writable("/probe"),
        "tmp_writable": writable("/tmp/probe"),
        "uid": os.getuid(),
        "capabilities": status["CapEff"].strip(),
        "no_new_privs": status.get("NoNewPrivs", "").strip(),
        # cgroup v2, else v1
        "pids_max": first_readable("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"),
        "memory_max": first_readable("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    }


class Server(ThreadingHTTPServer):
    # The default backlog of 5 overflows when the platform opens many connections at once (a
    # burst of concurrent calls), and a refused connection is retried only after a second.
    request_queue_size = 128


print("python function starting", flush=True)
Server(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()

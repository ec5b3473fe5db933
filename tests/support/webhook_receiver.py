"""A webhook receiver for adgate's tests that verifies every delivery with an independent
Standard Webhooks implementation (the `standardwebhooks` package from PyPI).

Usage: webhook_receiver.py SECRET OUT_FILE MODE_FILE [PORT]
Prints the bound port on its first line. Every request becomes one JSON line in OUT_FILE:
{"id", "type", "valid", "answered", "data_id", "data_state", "custody", "sha256"} (custody
state and checksum of each output). MODE_FILE holds "ok" (answer 204
to valid deliveries) or "fail" (answer 503 to everything); it is read on every request.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET, OUT, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
PORT = int(sys.argv[4]) if len(sys.argv) > 4 else 0
HOOK = Webhook(SECRET)
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            with open(MODE) as f:
                mode = f.read().strip()
        except OSError:
            mode = "ok"
        record = {"id": self.headers.get("webhook-id"), "valid": False}
        try:
            payload = HOOK.verify(body, dict(self.headers.items()))
            record["valid"] = True
            record["type"] = payload.get("type")
            data = payload.get("data") or {}
            record["data_id"] = data.get("id")
            record["data_state"] = data.get("state")
            record["custody"] = [o.get("custody") for o in data.get("outputs", [])]
            record["sha256"] = [o.get("sha256") for o in data.get("outputs", [])]
        except WebhookVerificationError as e:
            record["error"] = str(e)
        status = 503 if mode == "fail" else (204 if record["valid"] else 400)
        record["answered"] = status
        with LOCK, open(OUT, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()

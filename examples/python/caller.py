#!/usr/bin/env python3
"""Calls any agent with the capability "echo" through agentmesh and prints the result.

Run: python3 caller.py "hello"   (AGENTMESH_SOCKET picks the daemon's socket)
"""
import json
import os
import socket
import sys


def socket_path():
    if os.environ.get("AGENTMESH_SOCKET"):
        return os.environ["AGENTMESH_SOCKET"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "agentmesh", "agentmeshd.sock")
    return "/run/agentmesh/agentmeshd.sock"


sock = socket.socket(socket.AF_UNIX)
sock.connect(socket_path())
conn = sock.makefile("rwb")


def call(op, **args):
    """Sends one operation and returns its result, skipping pushed events."""
    conn.write(json.dumps({"op": op, "id": op, **args}).encode() + b"\n")
    conn.flush()
    while True:
        line = conn.readline()
        if not line:
            raise SystemExit("agentmeshd closed the connection")
        msg = json.loads(line)
        if msg.get("id") == op and "event" not in msg:
            if "error" in msg:
                raise SystemExit(f"{op} failed: {msg['error']['code']}: {msg['error']['message']}")
            return msg["ok"]


me = call("register", manifest={"name": "py-caller"})["agent_id"]
text = sys.argv[1] if len(sys.argv) > 1 else "hello from python"
result = call("request", **{"from": me, "capability": "echo", "skill": "echo",
                            "input": text, "timeout_ms": 10000})
if result["state"] != "completed":
    raise SystemExit(f"task {result['state']}: {result.get('error')}")
print(json.dumps(result["output"]))

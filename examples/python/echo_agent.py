#!/usr/bin/env python3
"""An agentmesh echo agent in plain Python (stdlib only).

Registers the skill "echo" under the capability "echo" and answers every request with
its input. Run: python3 echo_agent.py   (AGENTMESH_SOCKET picks the daemon's socket)
"""
import json
import os
import socket


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


def send(op, **args):
    conn.write(json.dumps({"op": op, "id": op, **args}).encode() + b"\n")
    conn.flush()


def read():
    line = conn.readline()
    if not line:
        raise SystemExit("agentmeshd closed the connection")
    return json.loads(line)


send("register", manifest={"name": "py-echo", "capabilities": ["echo"],
                           "skills": [{"id": "echo", "name": "Echo"}]})
reply = read()
if "error" in reply:
    raise SystemExit(f"register failed: {reply['error']['message']}")
print("ready", reply["ok"]["agent_id"], flush=True)

while True:
    msg = read()
    if msg.get("event") != "request":
        continue  # replies to our respond calls, cancels, ...
    if msg["skill"] == "echo":
        send("respond", task_id=msg["task_id"], state="completed",
             output={"echo": msg["input"], "by": "python"})
    else:
        send("respond", task_id=msg["task_id"], state="failed",
             error={"code": "SKILL_NOT_FOUND", "message": f"no skill {msg['skill']}"})

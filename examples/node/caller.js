#!/usr/bin/env node
// Calls any agent with the capability "echo" through agentmesh and prints the result.
// Run: node caller.js "hello"   (AGENTMESH_SOCKET picks the daemon's socket)
'use strict';
const net = require('net');
const path = require('path');
const readline = require('readline');

function socketPath() {
  if (process.env.AGENTMESH_SOCKET) return process.env.AGENTMESH_SOCKET;
  if (process.env.XDG_RUNTIME_DIR) {
    return path.join(process.env.XDG_RUNTIME_DIR, 'agentmesh', 'agentmeshd.sock');
  }
  return '/run/agentmesh/agentmeshd.sock';
}

const sock = net.createConnection(socketPath());
const lines = readline.createInterface({ input: sock })[Symbol.asyncIterator]();
sock.on('error', (e) => { console.error(`cannot reach agentmeshd: ${e.message}`); process.exit(1); });

// Sends one operation and resolves with its result, skipping pushed events.
async function call(op, args) {
  sock.write(JSON.stringify({ op, id: op, ...args }) + '\n');
  for (;;) {
    const { value, done } = await lines.next();
    if (done) throw new Error('agentmeshd closed the connection');
    const msg = JSON.parse(value);
    if (msg.id !== op || msg.event) continue;
    if (msg.error) throw new Error(`${op} failed: ${msg.error.code}: ${msg.error.message}`);
    return msg.ok;
  }
}

(async () => {
  const me = (await call('register', { manifest: { name: 'node-caller' } })).agent_id;
  const text = process.argv[2] || 'hello from node';
  const result = await call('request', {
    from: me, capability: 'echo', skill: 'echo', input: text, timeout_ms: 10000,
  });
  if (result.state !== 'completed') throw new Error(`task ${result.state}: ${JSON.stringify(result.error)}`);
  console.log(JSON.stringify(result.output));
  sock.end();
})().catch((e) => { console.error(e.message); process.exit(1); });

#!/usr/bin/env node
// An agentmesh echo agent in plain Node.js (no dependencies).
// Registers the skill "echo" under the capability "echo" and answers every request
// with its input. Run: node echo_agent.js   (AGENTMESH_SOCKET picks the daemon's socket)
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
const send = (op, args) => sock.write(JSON.stringify({ op, id: op, ...args }) + '\n');
sock.on('error', (e) => { console.error(`cannot reach agentmeshd: ${e.message}`); process.exit(1); });
sock.on('close', () => process.exit(0));

send('register', {
  manifest: { name: 'node-echo', capabilities: ['echo'], skills: [{ id: 'echo', name: 'Echo' }] },
});

readline.createInterface({ input: sock }).on('line', (line) => {
  const msg = JSON.parse(line);
  if (msg.id === 'register') {
    if (msg.error) { console.error(`register failed: ${msg.error.message}`); process.exit(1); }
    console.log(`ready ${msg.ok.agent_id}`);
  } else if (msg.event === 'request' && msg.skill === 'echo') {
    send('respond', {
      task_id: msg.task_id, state: 'completed', output: { echo: msg.input, by: 'node' },
    });
  } else if (msg.event === 'request') {
    send('respond', {
      task_id: msg.task_id, state: 'failed',
      error: { code: 'SKILL_NOT_FOUND', message: `no skill ${msg.skill}` },
    });
  }
});

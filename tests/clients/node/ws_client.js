#!/usr/bin/env node
// A node `ws` client (the WebSocket library node users pick; nobody here wrote it) for ringhold's
// end-to-end tests (tests/tests/websocket.rs). One scenario per run; prints one JSON line and exits 0
// only if the scenario went as RFC 6455 says it must. Loopback only, bounded by --deadline seconds.
// `ws` is found through NODE_PATH (the test sets it to the node_modules .ci/run installs with `npm ci`).
//
// Scenarios:
//   sizes        every size of --sizes as binary and as text, one after the other, then all in flight
//   fragments    fragmented messages (send(..., {fin: false}) then a final fragment), text and binary,
//                a 4-byte character split across fragments, a ping between two fragments
//   ping         pings with 0, 5 and 125 byte payloads: each pong must carry the same payload
//   close        a close with --code and a reason: the server must answer with the same code
//   invalid-utf8 a text frame that is not UTF-8: reports the close code the connection ended with
//   too-big      a binary message of --size bytes: reports the close code
//   many         --connections connections open at once, --messages echoes each, then a close each
'use strict';

let WebSocket;
try {
  WebSocket = require('ws');
} catch (e) {
  process.stderr.write(`ws is not installed: ${e.message}\n`);
  process.exit(3);
}
const crypto = require('crypto');

function parse() {
  const a = {
    scenario: process.argv[2], host: '127.0.0.1', port: 0, sizes: '0,1,125,126,65535,65536,1048576',
    code: 4001, size: 1 << 16, connections: 1000, messages: 3, deadline: 120,
  };
  const args = process.argv.slice(3);
  for (let i = 0; i < args.length; i += 2) {
    const k = args[i].replace(/^--/, '');
    if (!(k in a)) throw new Error(`unknown argument ${args[i]}`);
    a[k] = typeof a[k] === 'number' ? Number(args[i + 1]) : args[i + 1];
  }
  if (!['127.0.0.1', 'localhost', '::1'].includes(a.host)) throw new Error('loopback only');
  if (!(a.connections > 0 && a.connections <= 2000)) throw new Error('--connections must be 1..2000');
  return a;
}

// A string whose UTF-8 encoding is exactly n bytes, mixing 1- to 4-byte characters.
function textOf(n, seed) {
  const chars = ['a', 'Z', 'é', 'ß', '€', '✓', '😀', '𝄞'];
  let out = '';
  let size = 0;
  let x = seed >>> 0 || 1;
  while (size < n) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    let c = chars[x % chars.length];
    let b = Buffer.byteLength(c);
    if (size + b > n) { c = 'x'; b = 1; }
    out += c;
    size += b;
  }
  return out;
}

function binaryOf(n) {
  return crypto.randomBytes(n);
}

// An open connection whose messages arrive through `next()`, in order.
function open(a) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${a.host}:${a.port}/`, { perMessageDeflate: false, maxPayload: 0 });
    const queue = [];
    const waiting = [];
    let closed = null;
    ws.on('message', (data, isBinary) => {
      const m = isBinary ? data : data.toString('utf8');
      if (waiting.length) waiting.shift().resolve(m); else queue.push(m);
    });
    ws.on('close', (code, reason) => {
      closed = { code, reason: reason.toString() };
      while (waiting.length) waiting.shift().reject(Object.assign(new Error(`closed ${code}`), { closed }));
    });
    ws.on('error', (e) => { ws.lastError = e.message; });
    ws.once('open', () => resolve({
      ws,
      next: () => new Promise((res, rej) => {
        if (queue.length) return res(queue.shift());
        if (closed) return rej(Object.assign(new Error(`closed ${closed.code}`), { closed }));
        waiting.push({ resolve: res, reject: rej });
      }),
      closed: () => closed,
      waitClose: () => new Promise((res) => {
        if (closed) return res(closed);
        ws.once('close', (code, reason) => res({ code, reason: reason.toString() }));
      }),
    }));
    ws.once('unexpected-response', (req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    ws.once('error', reject);
  });
}

function same(a, b) {
  if (typeof a === 'string') return a === b;
  return Buffer.isBuffer(b) && a.equals(b);
}

function send(ws, data, opts) {
  return new Promise((res, rej) => ws.send(data, opts || {}, (e) => (e ? rej(e) : res())));
}

async function sizes(a) {
  const c = await open(a);
  const msgs = [];
  a.sizes.split(',').filter(Boolean).map(Number).forEach((n, i) => {
    msgs.push(binaryOf(n));
    msgs.push(textOf(n, i + 1));
  });
  for (const m of msgs) {
    await send(c.ws, m);
    const back = await c.next();
    if (!same(m, back)) return { ok: false, error: `${typeof m} of ${m.length}: echo differs` };
  }
  for (const m of msgs) c.ws.send(m);
  for (const m of msgs) {
    const back = await c.next();
    if (!same(m, back)) return { ok: false, error: `pipelined ${typeof m} of ${m.length}: echo differs` };
  }
  c.ws.close(1000);
  const cl = await c.waitClose();
  return { ok: cl.code === 1000, messages: 2 * msgs.length, close_code: cl.code };
}

async function fragments(a) {
  const c = await open(a);
  const cases = [
    { name: 'binary', frags: [Buffer.from('ab'), Buffer.alloc(0), Buffer.from('cdef')], binary: true },
    { name: 'text', frags: ['héllo', ' ', 'wörld €'], binary: false },
    { name: 'large binary', frags: [binaryOf(100000), binaryOf(70000), binaryOf(1)], binary: true },
  ];
  for (const k of cases) {
    for (let i = 0; i < k.frags.length; i++) {
      await send(c.ws, k.frags[i], { binary: k.binary, fin: i === k.frags.length - 1 });
    }
    const whole = k.binary ? Buffer.concat(k.frags) : k.frags.join('');
    const back = await c.next();
    if (!same(whole, back)) return { ok: false, error: `${k.name} fragments: echo differs` };
  }
  // A 4-byte character split across three fragments of a text message.
  const clef = Buffer.from('𝄞');
  await send(c.ws, Buffer.concat([Buffer.from('a'), clef.subarray(0, 1)]), { binary: false, fin: false });
  await send(c.ws, clef.subarray(1, 3), { binary: false, fin: false });
  await send(c.ws, Buffer.concat([clef.subarray(3), Buffer.from('b')]), { binary: false, fin: true });
  let back = await c.next();
  if (back !== 'a𝄞b') return { ok: false, error: `split character: ${JSON.stringify(back)}` };
  // A ping between two fragments.
  const pong = new Promise((res) => c.ws.once('pong', res));
  await send(c.ws, 'first half, ', { binary: false, fin: false });
  c.ws.ping(Buffer.from('between'));
  await send(c.ws, 'second half', { binary: false, fin: true });
  back = await c.next();
  const p = await pong;
  if (back !== 'first half, second half' || p.toString() !== 'between') {
    return { ok: false, error: `interleaved ping: ${JSON.stringify(back)} / pong ${p}` };
  }
  c.ws.close(1000);
  const cl = await c.waitClose();
  return { ok: cl.code === 1000, messages: cases.length + 2, close_code: cl.code };
}

async function ping(a) {
  const c = await open(a);
  const payloads = [Buffer.alloc(0), Buffer.from('hello'), Buffer.from([...Array(125).keys()])];
  for (const p of payloads) {
    const got = new Promise((res) => c.ws.once('pong', res));
    c.ws.ping(p);
    const back = await got;
    if (!p.equals(back)) return { ok: false, error: `pong payload ${back.toString('hex')} for ping ${p.toString('hex')}` };
  }
  c.ws.close(1000);
  const cl = await c.waitClose();
  return { ok: cl.code === 1000, pongs: payloads.length };
}

async function close(a) {
  const c = await open(a);
  await send(c.ws, 'before close');
  await c.next();
  c.ws.close(a.code, 'bye');
  const cl = await c.waitClose();
  return { ok: cl.code === a.code, close_code: cl.code, close_reason: cl.reason };
}

async function invalidUtf8(a) {
  const c = await open(a);
  // ws does not check what it sends: a Buffer sent as text goes out as is.
  await send(c.ws, Buffer.from([0x6f, 0x6b, 0xff, 0xfe]), { binary: false });
  const cl = await c.waitClose();
  return { ok: true, close_code: cl.code, error_seen: c.ws.lastError || null };
}

async function tooBig(a) {
  const c = await open(a);
  c.ws.send(binaryOf(a.size));
  const cl = await c.waitClose();
  return { ok: true, close_code: cl.code };
}

async function many(a) {
  const res = { open: 0, ok: 0, messages: 0, payload_bytes: 0, errors: [] };
  const conns = await Promise.all([...Array(a.connections).keys()].map((i) => open(a).then(
    (c) => { res.open++; return c; },
    (e) => { res.errors.push(`conn ${i}: connect: ${e.message}`); return null; },
  )));
  await Promise.all(conns.map(async (c, i) => {
    if (!c) return;
    try {
      for (let m = 0; m < a.messages; m++) {
        const n = Math.floor(Math.random() * 4097);
        const msg = m % 2 ? binaryOf(n) : textOf(n, i * 31 + m + 1);
        await send(c.ws, msg);
        const back = await c.next();
        if (!same(msg, back)) { res.errors.push(`conn ${i} message ${m}: echo differs`); return; }
        res.messages++;
        res.payload_bytes += n;
      }
      c.ws.close(1000);
      const cl = await c.waitClose();
      if (cl.code !== 1000) { res.errors.push(`conn ${i}: close code ${cl.code}`); return; }
      res.ok++;
    } catch (e) {
      res.errors.push(`conn ${i}: ${e.message}`);
    }
  }));
  const errors = res.errors;
  delete res.errors;
  res.error_count = errors.length;
  res.first_errors = errors.slice(0, 5);
  res.ok_all = res.ok === a.connections;
  return res;
}

async function main() {
  let a;
  try {
    a = parse();
  } catch (e) {
    process.stderr.write(`${e.message}\n`);
    process.exit(2);
  }
  const f = {
    sizes, fragments, ping, close, 'invalid-utf8': invalidUtf8, 'too-big': tooBig, many,
  }[a.scenario];
  if (!f) {
    process.stderr.write(`unknown scenario ${a.scenario}\n`);
    process.exit(2);
  }
  const timer = setTimeout(() => {
    process.stdout.write(`${JSON.stringify({ ok: false, error: `deadline of ${a.deadline} s passed` })}\n`);
    process.exit(1);
  }, a.deadline * 1000);
  let out;
  try {
    out = await f(a);
  } catch (e) {
    out = { ok: false, error: e.message, closed: e.closed || null };
  }
  clearTimeout(timer);
  process.stdout.write(`${JSON.stringify(out)}\n`, () => process.exit((out.ok_all ?? out.ok) ? 0 : 1));
}

main();

//! Clients nobody here wrote for ringhold: python3's asyncio (1000 connections at once), netcat and
//! socat piping binary data through the echo. (`ab` and `wrk` speak HTTP, which an echo server does
//! not; they come in with the HTTP keep-alive mode.)

use std::process::Command;

use ringhold_tests::tools::{python3, require, run_with_input, Client};
use ringhold_tests::{both_engines, secs, serial, Engine, Pattern, Server};
use serde_json::Value;

/// python3 asyncio: 1000 connections open at once, 5 messages of random sizes each, every byte checked,
/// then a half-close and a clean EOF on each.
fn asyncio_1000_connections(engine: Engine) {
    let Some(python) = python3("asyncio_1000_connections") else {
        return;
    };
    let _g = serial();
    let server = Server::start(engine, &[]);
    let port = server.addr.port().to_string();
    let args = [
        "--port",
        &port,
        "--connections",
        "1000",
        "--messages",
        "5",
        "--deadline",
        &secs(100).as_secs().to_string(),
    ];
    let mut c = Client::python(&python, "asyncio_echo.py", &args.map(String::from));
    let status = c.wait(secs(120));
    let out = c.rest(secs(5));
    let summary: Value = out
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no summary from asyncio_echo.py ({status}); stderr:\n{}",
                c.stderr()
            )
        });
    eprintln!("{}: asyncio client: {summary}", engine.name());
    assert!(
        status.success(),
        "asyncio client failed ({status}): {summary}\nstderr:\n{}",
        c.stderr()
    );
    assert_eq!(summary["ok"].as_u64(), Some(1000), "{summary}");
}

/// netcat (OpenBSD's, `-N` to send FIN at the end of input): 1 MiB of binary in, the same out.
fn netcat_pipes_binary(engine: Engine) {
    let Some(nc) = require("nc", "netcat-openbsd", "netcat_pipes_binary") else {
        return;
    };
    let server = Server::start(engine, &[]);
    let input = Pattern::bytes(11, 1 << 20);
    let mut cmd = Command::new(nc);
    cmd.args(["-N", "127.0.0.1", &server.addr.port().to_string()]);
    let (status, out, err) = run_with_input(cmd, input.clone(), secs(60));
    assert!(status.success(), "nc exited with {status}: {err}");
    assert_eq!(
        out.len(),
        input.len(),
        "nc got back {} of {} bytes; stderr: {err}",
        out.len(),
        input.len()
    );
    assert!(out == input, "nc got different bytes back");
}

/// socat: 1 MiB of binary in, the same out; socat half-closes at the end of input and exits when the
/// server's EOF arrives.
fn socat_pipes_binary(engine: Engine) {
    let Some(socat) = require("socat", "socat", "socat_pipes_binary") else {
        return;
    };
    let server = Server::start(engine, &[]);
    let input = Pattern::bytes(12, 1 << 20);
    let mut cmd = Command::new(socat);
    cmd.args([
        "-t",
        "30",
        "-",
        &format!("TCP:127.0.0.1:{}", server.addr.port()),
    ]);
    let (status, out, err) = run_with_input(cmd, input.clone(), secs(60));
    assert!(status.success(), "socat exited with {status}: {err}");
    assert_eq!(
        out.len(),
        input.len(),
        "socat got back {} of {} bytes; stderr: {err}",
        out.len(),
        input.len()
    );
    assert!(out == input, "socat got different bytes back");
}

/// python3's plain blocking sockets, the way a quick script talks to a server: sendall, shutdown,
/// read to EOF; 50 connections one after the other.
fn python_blocking_sockets(engine: Engine) {
    let Some(python) = python3("python_blocking_sockets") else {
        return;
    };
    let server = Server::start(engine, &[]);
    let script = r#"
import socket, sys, os
port = int(sys.argv[1])
for i in range(50):
    data = os.urandom(1 + (i * 7919) % 200000)
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    back = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        back += chunk
    s.close()
    if bytes(back) != data:
        print("connection %d: sent %d bytes, got %d back" % (i, len(data), len(back)))
        sys.exit(1)
print("ok")
"#;
    let mut cmd = Command::new(python);
    cmd.args(["-c", script, &server.addr.port().to_string()]);
    let (status, out, err) = run_with_input(cmd, Vec::new(), secs(60));
    let out = String::from_utf8_lossy(&out);
    assert!(
        status.success() && out.trim() == "ok",
        "python3 client: {status}: {out} {err}"
    );
}

both_engines!(
    asyncio_1000_connections,
    netcat_pipes_binary,
    socat_pipes_binary,
    python_blocking_sockets
);

//! What every bench peer server shares: the command line (`--listen ADDR --threads N`), raising
//! RLIMIT_NOFILE, and building a listener the way ringhold does (backlog 4096, SO_REUSEPORT), so that
//! a comparison measures the runtime and not a different listen backlog.
//!
//! The echo loops themselves stay in each peer's `main.rs`, written as that runtime's examples write them.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::process::exit;

use socket2::{Domain, Protocol, Socket, Type};

/// listen(2) backlog of every peer listener (ringhold's default `--backlog`).
pub const BACKLOG: i32 = 4096;

/// Parsed command line of a peer server.
#[derive(Debug, Clone)]
pub struct Args {
    pub listen: SocketAddr,
    pub threads: usize,
}

/// Parses `--listen ADDR` (default 127.0.0.1:0) and `--threads N` (default: number of cores).
/// Prints a one-line error and exits with status 2 on bad input.
pub fn args(name: &str) -> Args {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let (key, inline) = match flag.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        let mut value = |what: &str| -> String {
            inline
                .clone()
                .or_else(|| it.next())
                .unwrap_or_else(|| fail(name, &format!("{key} needs {what}")))
        };
        match key.as_str() {
            "--listen" => {
                let v = value("an address");
                listen = v
                    .parse()
                    .unwrap_or_else(|_| fail(name, &format!("'{v}' is not an ip:port")));
            }
            "--threads" => {
                let v = value("a number");
                threads = match v.parse::<usize>() {
                    Ok(n) if (1..=1024).contains(&n) => n,
                    _ => fail(
                        name,
                        &format!("--threads '{v}' must be a number from 1 to 1024"),
                    ),
                };
            }
            "-h" | "--help" => {
                println!("{name}: TCP echo server for ringhold's bench\n\nUsage: {name} [--listen ADDR] [--threads N]\n\n  --listen ADDR  address to listen on (port 0 picks one; default 127.0.0.1:0)\n  --threads N    worker threads (default: number of cores)");
                exit(0);
            }
            other => fail(name, &format!("unknown argument '{other}' (try --help)")),
        }
    }
    Args { listen, threads }
}

fn fail(name: &str, msg: &str) -> ! {
    eprintln!("{name}: {msg}");
    exit(2)
}

/// Raises the RLIMIT_NOFILE soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; setrlimit only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Process setup every peer does first: raise RLIMIT_NOFILE (a warning if it cannot).
pub fn setup(name: &str) -> Args {
    let args = args(name);
    if let Err(e) = raise_nofile() {
        eprintln!("{name}: warning: cannot raise RLIMIT_NOFILE: {e}");
    }
    args
}

/// A listener with SO_REUSEADDR + SO_REUSEPORT and backlog [`BACKLOG`]. Thread-per-core peers call
/// this once per thread with the same (resolved) address; `nonblocking` as the runtime expects.
pub fn listener(addr: SocketAddr, nonblocking: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(nonblocking)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Runs `serve` on `args.threads` threads, thread-per-core: the first thread binds `args.listen`
/// (port 0 resolves there) and sends back the bound address; the others bind that same address with
/// SO_REUSEPORT. Announces readiness, then waits for the threads (they serve until killed).
pub fn thread_per_core(
    name: &str,
    args: Args,
    serve: fn(SocketAddr, Option<std::sync::mpsc::Sender<SocketAddr>>),
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut threads = vec![std::thread::spawn(move || serve(args.listen, Some(tx)))];
    let Ok(addr) = rx.recv() else {
        eprintln!("{name}: the first runtime thread exited before listening");
        exit(1);
    };
    for _ in 1..args.threads {
        threads.push(std::thread::spawn(move || serve(addr, None)));
    }
    announce(addr);
    for t in threads {
        let _ = t.join();
    }
}

/// Prints the line the bench driver waits for.
pub fn announce(addr: SocketAddr) {
    eprintln!("listening on {addr}");
}

/// Unwraps a setup step or exits with a one-line error (setup errors are not recoverable).
pub fn or_exit<T>(name: &str, what: &str, r: io::Result<T>) -> T {
    r.unwrap_or_else(|e| fail(name, &format!("{what}: {e}")))
}

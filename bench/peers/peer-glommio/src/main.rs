//! Echo server on glommio: one executor per core (a pool with `Unbound` placement: not pinned, like
//! every other server in bench/run), each with its own SO_REUSEPORT listener, one task per connection
//! with a 4 KiB buffer, written as glommio's docs do.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::Duration;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

const NAME: &str = "peer-glommio";

async fn echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn main() {
    let args = peer_common::setup(NAME);
    // All listeners are made here so that port 0 resolves once; each executor adopts one of them.
    let first = peer_common::or_exit(
        NAME,
        "cannot listen",
        peer_common::listener(args.listen, false),
    );
    let addr = peer_common::or_exit(NAME, "local address", first.local_addr());
    let mut fds = vec![first.into_raw_fd()];
    for _ in 1..args.threads {
        let l = peer_common::or_exit(NAME, "cannot listen", peer_common::listener(addr, false));
        fds.push(l.into_raw_fd());
    }
    let fds = std::sync::Arc::new(std::sync::Mutex::new(fds));
    // Unbound: the executors are not pinned to CPUs. bench/run runs every server unpinned (ringhold
    // with --no-pin) because the load client shares the cores; MaxSpread pinned glommio alone.
    let pool = LocalExecutorPoolBuilder::new(PoolPlacement::Unbound(args.threads))
        .on_all_shards(move || {
            let fd = fds.lock().ok().and_then(|mut v| v.pop());
            async move {
                let Some(fd) = fd else { return };
                // SAFETY: `fd` is a bound, listening socket this process owns; it was taken out of the
                // shared list exactly once, so only this listener will own and close it.
                let listener = unsafe { TcpListener::from_raw_fd(fd) };
                let mut warned = false;
                loop {
                    match listener.accept().await {
                        Ok(stream) => {
                            glommio::spawn_local(echo(stream)).detach();
                        }
                        Err(e) => {
                            if !warned {
                                eprintln!("{NAME}: accept: {e}");
                                warned = true;
                            }
                            glommio::timer::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        });
    let pool = match pool {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("{NAME}: cannot start the executors: {e}");
            std::process::exit(1);
        }
    };
    peer_common::announce(addr);
    pool.join_all();
}

//! Echo server on tokio's multi-thread runtime: one task per connection, each with its own reusable
//! 4 KiB buffer, as tokio's `examples/echo.rs` writes it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const NAME: &str = "peer-tokio";

fn main() {
    let args = peer_common::setup(NAME);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build();
    let rt = peer_common::or_exit(NAME, "cannot start the tokio runtime", rt);
    rt.block_on(async move {
        let std_listener = peer_common::or_exit(
            NAME,
            "cannot listen",
            peer_common::listener(args.listen, true),
        );
        let listener =
            peer_common::or_exit(NAME, "cannot listen", TcpListener::from_std(std_listener));
        peer_common::announce(peer_common::or_exit(
            NAME,
            "local address",
            listener.local_addr(),
        ));
        let mut warned = false;
        loop {
            let mut socket = match listener.accept().await {
                Ok((socket, _)) => socket,
                Err(e) => {
                    // EMFILE and friends: say it once, back off, keep serving (as axum/hyper do).
                    if !warned {
                        eprintln!("{NAME}: accept: {e}");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                loop {
                    let n = match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if socket.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

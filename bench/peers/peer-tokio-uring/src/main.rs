//! Echo server on tokio-uring. tokio-uring runs one single-threaded runtime per thread, so `--threads N`
//! starts N of them, each with its own SO_REUSEPORT listener; one task per connection with an owned
//! 4 KiB buffer, as tokio-uring's `examples/tcp_listener.rs` writes it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

const NAME: &str = "peer-tokio-uring";

async fn echo(stream: TcpStream) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (result, nbuf) = stream.read(buf).await;
        buf = nbuf;
        let read = match result {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (res, slice) = stream.write_all(buf.slice(..read)).await;
        if res.is_err() {
            return;
        }
        buf = slice.into_inner();
    }
}

fn serve(addr: SocketAddr, first: Option<std::sync::mpsc::Sender<SocketAddr>>) {
    tokio_uring::start(async move {
        let std_listener =
            peer_common::or_exit(NAME, "cannot listen", peer_common::listener(addr, false));
        let listener = TcpListener::from_std(std_listener);
        if let Some(tx) = first {
            let _ = tx.send(peer_common::or_exit(
                NAME,
                "local address",
                listener.local_addr(),
            ));
        }
        let mut warned = false;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio_uring::spawn(echo(stream));
                }
                Err(e) => {
                    if !warned {
                        eprintln!("{NAME}: accept: {e}");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
}

fn main() {
    let args = peer_common::setup(NAME);
    peer_common::thread_per_core(NAME, args, serve);
}

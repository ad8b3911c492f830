//! Echo server on monoio with the io_uring driver, thread-per-core: every thread runs its own runtime
//! and its own SO_REUSEPORT listener, one task per connection, an owned 4 KiB buffer passed to each
//! read and write and handed back (monoio's rent-style I/O), as monoio's echo examples write it.

use std::net::SocketAddr;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

const NAME: &str = "peer-monoio";

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut res;
    loop {
        (res, buf) = stream.read(buf).await;
        if res? == 0 {
            return Ok(());
        }
        (res, buf) = stream.write_all(buf).await;
        res?;
        buf.clear();
    }
}

fn serve(addr: SocketAddr, first: Option<std::sync::mpsc::Sender<SocketAddr>>) {
    let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build();
    let mut rt = peer_common::or_exit(NAME, "cannot start the io_uring runtime", rt);
    rt.block_on(async move {
        let std_listener =
            peer_common::or_exit(NAME, "cannot listen", peer_common::listener(addr, false));
        let listener =
            peer_common::or_exit(NAME, "cannot listen", TcpListener::from_std(std_listener));
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
                    monoio::spawn(echo(stream));
                }
                Err(e) => {
                    if !warned {
                        eprintln!("{NAME}: accept: {e}");
                        warned = true;
                    }
                    monoio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
}

fn main() {
    let args = peer_common::setup(NAME);
    peer_common::thread_per_core(NAME, args, serve);
}

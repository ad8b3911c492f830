//! WebSocket echo server on tokio-tungstenite, as its `examples/echo-server.rs` writes it: one task per
//! connection on tokio's multi-thread runtime, `accept_async`, then every text and binary message
//! forwarded back (tungstenite answers pings and the close handshake itself). No extension is
//! negotiated (tokio-tungstenite has no permessage-deflate), default limits (64 MiB messages).

use std::time::Duration;

use futures_util::{future, StreamExt, TryStreamExt};
use tokio::net::{TcpListener, TcpStream};

const NAME: &str = "peer-tungstenite";

async fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (write, read) = ws.split();
    // The example's echo: text and binary messages go back; control frames are tungstenite's.
    let _ = read
        .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
        .forward(write)
        .await;
}

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
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream));
                }
                Err(e) => {
                    // EMFILE and friends: say it once, back off, keep serving.
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

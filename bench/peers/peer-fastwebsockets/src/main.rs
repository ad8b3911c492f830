//! WebSocket echo server on fastwebsockets, as its `examples/echo_server.rs` writes it: hyper 1 serves
//! the HTTP/1.1 upgrade (`fastwebsockets::upgrade`), then one task per connection reads whole messages
//! through a `FragmentCollector` (which checks UTF-8) and writes each text/binary one back; pongs and
//! the close handshake are fastwebsockets' own (auto_pong, auto_close). No extension is negotiated.

use std::time::Duration;

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const NAME: &str = "peer-fastwebsockets";

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn upgrade(mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        let _ = echo(fut).await;
    });
    Ok(response)
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
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if !warned {
                        eprintln!("{NAME}: accept: {e}");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                let conn = http1::Builder::new()
                    .serve_connection(io, service_fn(upgrade))
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });
}

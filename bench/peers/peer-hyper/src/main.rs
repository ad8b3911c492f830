//! HTTP/1.1 peer for bench/http: hyper 1 on tokio's multi-thread runtime, written as hyper's
//! `examples/hello.rs` writes a server (one task per connection, `http1::Builder::serve_connection`,
//! keep-alive on, the default buffers). Every request, whatever its method or path, gets 200
//! `text/plain` with the same 1024-byte body ringhold's `--protocol http` sends for `GET /`
//! (hyper adds `Date` and `Content-Length`). A request body is not read.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const NAME: &str = "peer-hyper";

/// The body: 1024 bytes of the same line ringhold repeats.
fn body() -> Bytes {
    let line =
        "ringhold holds a million mostly idle connections with the least memory per socket.\n";
    Bytes::from(line.repeat(1024 / line.len() + 1)[..1024].to_string())
}

async fn hello(_: Request<Incoming>, body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut res = Response::new(Full::new(body));
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    Ok(res)
}

fn main() {
    let args = peer_common::setup(NAME);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build();
    let rt = peer_common::or_exit(NAME, "cannot start the tokio runtime", rt);
    let body = body();
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
                    // EMFILE and friends: say it once, back off, keep serving (as axum/hyper do).
                    if !warned {
                        eprintln!("{NAME}: accept: {e}");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| hello(req, body.clone()));
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

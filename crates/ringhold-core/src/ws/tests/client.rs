//! A real client nobody here wrote (tungstenite, strict about what a server may send) talking to
//! [`WsConn`] in memory: its handshake, masked frames, fragments, pings, closes.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::rc::Rc;

use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::frame::coding::{CloseCode as TCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame as TFrame};
use tungstenite::{Message, WebSocket};

use super::*;

/// The client's end of an in-memory connection.
#[derive(Clone, Default)]
struct Pipe {
    to_server: Rc<RefCell<Vec<u8>>>,
    to_client: Rc<RefCell<VecDeque<u8>>>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut q = self.to_client.borrow_mut();
        if q.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        q.read(buf)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.to_server.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Pair {
    pipe: Pipe,
    server: Driver,
    ws: WebSocket<Pipe>,
}

impl Pair {
    /// Whatever the client wrote goes to the server (cut in pieces of `chunk` bytes), the answer
    /// back to the client.
    fn pump(server: &mut Driver, pipe: &Pipe, chunk: usize) {
        let bytes = std::mem::take(&mut *pipe.to_server.borrow_mut());
        for piece in bytes.chunks(chunk) {
            server.feed(piece);
        }
        pipe.to_client.borrow_mut().extend(server.take());
    }

    fn connect(chunk: usize) -> Pair {
        let pipe = Pipe::default();
        let mut server = Driver::new(WsConfig::default());
        let mut hs = tungstenite::client("ws://localhost/echo", pipe.clone());
        let ws = loop {
            match hs {
                Ok((ws, resp)) => {
                    assert_eq!(resp.status(), 101);
                    break ws;
                }
                Err(HandshakeError::Interrupted(mid)) => {
                    Self::pump(&mut server, &pipe, chunk);
                    hs = mid.handshake();
                }
                Err(HandshakeError::Failure(e)) => panic!("handshake: {e}"),
            }
        };
        Pair { pipe, server, ws }
    }

    /// Send, let the server answer, read one message.
    fn roundtrip(&mut self, msg: Message, chunk: usize) -> Message {
        self.ws.send(msg).unwrap();
        self.recv(chunk)
    }

    fn recv(&mut self, chunk: usize) -> Message {
        Self::pump(&mut self.server, &self.pipe, chunk);
        self.ws.read().expect("a message from the server")
    }
}

#[test]
fn tungstenite_client_echo_of_text_binary_and_sizes() {
    for chunk in [1, 7, 4096] {
        let mut p = Pair::connect(chunk);
        for n in [0usize, 1, 125, 126, 65_535, 65_536, 300_000] {
            if chunk == 1 && n > 70_000 {
                continue;
            }
            let bin: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let got = p.roundtrip(Message::binary(bin.clone()), chunk);
            assert_eq!(got, Message::binary(bin), "n={n} chunk={chunk}");
            let s: String = "ж€𝄞a".chars().cycle().take(n / 3).collect();
            let got = p.roundtrip(Message::text(s.clone()), chunk);
            assert_eq!(got, Message::text(s));
        }
        assert_eq!(p.server.stats.messages_in, p.server.stats.messages_out);
    }
}

#[test]
fn tungstenite_client_fragments_pings_and_close() {
    let mut p = Pair::connect(3);
    // A text message in three frames with a ping between them; the client reassembles the echo.
    let text_op = OpCode::Data(Data::Text);
    let cont = OpCode::Data(Data::Continue);
    p.ws.write(Message::Frame(TFrame::message(
        "frag€".as_bytes()[..6].to_vec(),
        text_op,
        false,
    )))
    .unwrap();
    p.ws.write(Message::Ping(b"hi".to_vec().into())).unwrap();
    p.ws.write(Message::Frame(TFrame::message(
        "frag€".as_bytes()[6..].to_vec(),
        cont,
        false,
    )))
    .unwrap();
    p.ws.write(Message::Frame(TFrame::message(
        b" end".to_vec(),
        cont,
        true,
    )))
    .unwrap();
    p.ws.flush().unwrap();
    assert_eq!(p.recv(3), Message::Pong(b"hi".to_vec().into()));
    assert_eq!(p.ws.read().unwrap(), Message::text("frag€ end"));

    // The server's own ping is answered by the client; the pong reaches the server.
    assert!(p.server.quiet());
    p.pipe.to_client.borrow_mut().extend(p.server.take());
    assert_eq!(p.ws.read().unwrap(), Message::Ping(Default::default()));
    p.ws.flush().unwrap();
    Pair::pump(&mut p.server, &p.pipe, 3);
    assert_eq!(p.server.stats.pongs_in, 1);

    // The client closes: the server answers with the same code and ends.
    p.ws.close(Some(CloseFrame {
        code: TCode::Away,
        reason: "bye".into(),
    }))
    .unwrap();
    let got = p.recv(3);
    assert_eq!(
        got,
        Message::Close(Some(CloseFrame {
            code: TCode::Away,
            reason: "".into()
        }))
    );
    assert_eq!(p.server.step, DONE);
}

#[test]
fn tungstenite_client_sees_the_servers_close_codes() {
    // The server goes away.
    let mut p = Pair::connect(4096);
    p.server.server_close();
    p.pipe.to_client.borrow_mut().extend(p.server.take());
    match p.ws.read().unwrap() {
        Message::Close(Some(f)) => assert_eq!(f.code, TCode::Away),
        m => panic!("{m:?}"),
    }
    // Too big.
    let mut p = Pair::connect(4096);
    p.server.cfg.max_message_size = 100;
    match p.roundtrip(Message::binary(vec![0u8; 101]), 4096) {
        Message::Close(Some(f)) => assert_eq!(f.code, TCode::Size),
        m => panic!("{m:?}"),
    }
    assert_eq!(p.server.step, VIOLATION);
}

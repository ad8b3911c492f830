//! One test per rule of the protocol.

use super::*;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

fn assert_out(d: &Driver, want: &[u8]) {
    assert_eq!(show(&d.out), show(want));
}

#[test]
fn state_is_small() {
    assert!(std::mem::size_of::<HttpConn>() <= 16);
}

#[test]
fn get_answers_1024_bytes_of_the_text_by_default() {
    let d = run(GET);
    assert_eq!(d.last, Step::Continue);
    assert_out(&d, &get_answer(1024, ""));
    assert_eq!(d.stats.requests(Method::Get), 1);
    assert_eq!(d.stats.responses[Method::Get as usize][0], 1);
}

#[test]
fn get_length_parameter() {
    for n in [1usize, 7, 4096, BODY_TEXT_LEN] {
        let req = format!("GET /any/path?x=1&length={n} HTTP/1.1\r\nHost: x\r\n\r\n");
        let d = run(req.as_bytes());
        assert_eq!(d.last, Step::Continue);
        assert_out(&d, &get_answer(n, ""));
    }
}

#[test]
fn get_body_is_static_text_not_a_copy() {
    let mut conn = HttpConn::default();
    let mut sink = RecSink::default();
    let mut input = b"GET /?length=10 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let step = conn.on_input(
        &HttpConfig::default(),
        &Ctx { date: DATE },
        &mut input,
        &mut sink,
        &mut HttpStats::default(),
    );
    assert_eq!(step, Step::Continue);
    assert_eq!(sink.segs.len(), 2);
    assert!(matches!(sink.segs[0], Seg::Generated(_)));
    match sink.segs[1] {
        Seg::Static(b) => assert_eq!(b.as_ptr(), BODY_TEXT.as_ptr()),
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn bad_or_out_of_range_length_is_400() {
    let cfg = HttpConfig {
        max_length: 100,
        ..HttpConfig::default()
    };
    for q in [
        "length=0",
        "length=101",
        "length=abc",
        "length=",
        "length=-5",
    ] {
        let req = format!("GET /?{q} HTTP/1.1\r\nHost: x\r\n\r\n");
        let d = run_with(cfg, req.as_bytes());
        assert_eq!(d.last, Step::Close(Closing::Violation), "{q}");
        assert_out(&d, &error_answer(400));
    }
    // The default is capped too.
    let d = run_with(cfg, GET);
    assert_out(&d, &get_answer(100, ""));
}

#[test]
fn head_gets_the_get_head_without_body() {
    let d = run(b"HEAD /?length=77 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(d.last, Step::Continue);
    assert_out(&d, &ok_head(&cl(77), ""));
    assert_eq!(d.stats.requests(Method::Head), 1);
}

#[test]
fn post_echoes_a_content_length_body_as_it_streams() {
    let mut d = Driver::new(HttpConfig::default());
    assert_eq!(
        d.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhel"),
        Step::Continue
    );
    let mut want = ok_head(&cl(11), "");
    want.extend_from_slice(b"hel");
    assert_eq!(show(&d.per_call[0]), show(&want));
    assert_eq!(d.feed(b"lo w"), Step::Continue);
    assert_eq!(d.per_call[1], b"lo w");
    assert_eq!(d.feed(b"orld"), Step::Continue);
    assert_eq!(d.per_call[2], b"orld");
    assert!(d.conn.is_idle());
    assert_eq!(d.stats.requests(Method::Post), 1);
}

#[test]
fn put_without_body_answers_empty() {
    for req in [
        &b"PUT / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    ] {
        let d = run(req);
        assert_eq!(d.last, Step::Continue);
        assert_out(&d, &ok_head(&cl(0), ""));
    }
}

#[test]
fn chunked_request_is_echoed_chunked_verbatim() {
    let body: &[u8] =
        b"5;name=val\r\nhello\r\n1 \r\n!\r\nA\r\n0123456789\r\n0\r\nX-Sum: 1\r\nX-B: two\r\n\r\n";
    let mut req = b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(body);
    req.extend_from_slice(GET);
    let d = run(&req);
    assert_eq!(d.last, Step::Continue);
    let mut want = ok_head(CHUNKED, "");
    want.extend_from_slice(body);
    want.extend_from_slice(&get_answer(1024, ""));
    assert_out(&d, &want);
    assert!(d.conn.is_idle());
}

#[test]
fn chunked_body_streams_at_every_call() {
    let mut d = Driver::new(HttpConfig::default());
    // The answer waits for the first size line, which is held until it is whole.
    let mut req = CHUNKED_POST.to_vec();
    req.extend_from_slice(b"4\r");
    let step = d.feed(&req);
    assert_eq!(
        step,
        Step::Hold {
            from: CHUNKED_POST.len()
        }
    );
    assert_eq!(d.held, b"4\r");
    assert!(d.per_call[0].is_empty());
    assert!(!d.conn.is_idle());
    d.feed(b"\nab");
    let mut want = ok_head(CHUNKED, "");
    want.extend_from_slice(b"4\r\nab");
    assert_eq!(show(&d.per_call[1]), show(&want));
    // Data streams; the last chunk and its trailers go out once they are whole.
    d.feed(b"cd\r\n0\r\n");
    assert_eq!(d.per_call[2], b"cd\r\n");
    assert_eq!(d.held, b"0\r\n");
    assert!(!d.conn.is_idle());
    assert_eq!(d.feed(b"\r\n"), Step::Continue);
    assert_eq!(d.per_call[3], b"0\r\n\r\n");
    assert!(d.conn.is_idle());
    assert_eq!(d.stats.responses[Method::Post as usize][0], 1);
}

const CHUNKED_POST: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

/// A chunked request whose first chunk-size line is malformed gets 400 (not a 200 head and a cut),
/// however the line is split.
#[test]
fn malformed_first_chunk_line_is_400() {
    for body in [
        &b"zz\r\n"[..],
        b"4\nabcd",
        b"3;ext\x01\r\n",
        b" 4\r\n",
        b"\r\n",
        b"-1\r\n",
        b"4 x\r\n",
        b"4\r\r",
        b"0\r\n:bad\r\n\r\n",
        b"0\r\n\r\r",
    ] {
        for method in ["POST", "PUT", "GET"] {
            let mut req = CHUNKED_POST.to_vec();
            req.splice(..4, method.bytes());
            req.extend_from_slice(body);
            let whole = run(&req);
            for d in [whole, {
                let mut d = Driver::new(HttpConfig::default());
                for b in &req {
                    d.feed(std::slice::from_ref(b));
                }
                d
            }] {
                assert_eq!(d.last, Step::Close(Closing::Violation), "{}", show(body));
                assert_out(&d, &error_answer(400));
                assert_eq!(d.stats.protocol_errors[HttpError::BadRequest as usize], 1);
                let m = Method::from_token(method);
                assert_eq!(d.stats.responses[m as usize], [0, 0, 1, 0], "{method}");
            }
        }
    }
}

/// The first chunk-size line is held up to `max_header_bytes`; longer is a 400. An oversized first
/// chunk is a 413, answered. A FIN before the first size line is whole is a 400 (truncated).
#[test]
fn first_chunk_line_limits() {
    let cfg = HttpConfig {
        max_header_bytes: 80,
        max_body_bytes: 100,
        ..HttpConfig::default()
    };
    // 79 bytes of a size line with an extension: held.
    let mut line = b"5;e=".to_vec();
    line.resize(79, b'x');
    let mut d = Driver::new(cfg);
    d.feed(CHUNKED_POST);
    assert_eq!(d.feed(&line), Step::Hold { from: 0 });
    assert!(d.out.is_empty());
    // Its CR makes it 80: still within the bound, and complete with the LF... which is byte 81.
    let mut d2 = Driver::new(cfg);
    d2.feed(CHUNKED_POST);
    d2.feed(&line);
    assert_eq!(d2.feed(b"\r"), Step::Close(Closing::Violation));
    assert_out(&d2, &error_answer(400));
    // A line that fits: 78 bytes and CRLF.
    let mut d3 = Driver::new(cfg);
    d3.feed(CHUNKED_POST);
    let mut fits = line[..78].to_vec();
    fits.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    assert_eq!(d3.feed(&fits), Step::Continue);
    let mut want = ok_head(CHUNKED, "");
    want.extend_from_slice(&fits);
    assert_out(&d3, &want);
    // Over the body limit at the first size: 413, answered.
    let mut req = CHUNKED_POST.to_vec();
    req.extend_from_slice(b"65\r\n");
    let d = run_with(cfg, &req);
    assert_eq!(d.last, Step::Close(Closing::Violation));
    assert_out(&d, &error_answer(413));
    assert_eq!(
        d.stats.protocol_errors[HttpError::PayloadTooLarge as usize],
        1
    );
    // FIN before the line is whole.
    let mut d = Driver::new(cfg);
    d.feed(CHUNKED_POST);
    d.feed(b"5");
    assert_eq!(d.fin(), Step::Close(Closing::Violation));
    assert_out(&d, &error_answer(400));
    assert_eq!(d.stats.truncated, 1);
    // FIN right after the head.
    let mut d = Driver::new(cfg);
    assert_eq!(d.feed(CHUNKED_POST), Step::Continue);
    assert!(!d.conn.is_idle());
    assert_eq!(d.fin(), Step::Close(Closing::Violation));
    assert_out(&d, &error_answer(400));
}

/// After the 200 head went out, a body that breaks its framing ends the echo before the unit that
/// broke: never a partial size line, never the last chunk. The client sees an incomplete message,
/// then the connection closes.
#[test]
fn malformed_later_chunk_ends_the_echo_without_its_last_chunk() {
    for (body, echoed) in [
        (&b"4\r\nabcdX\r\n"[..], &b"4\r\nabcd"[..]),
        (b"1\r\na\r\nzz\r\n", b"1\r\na\r\n"),
        (b"1\r\na\r\n4\nabcd", b"1\r\na\r\n"),
        (b"1\r\na\r\n0\r\n:bad\r\n\r\n", b"1\r\na\r\n"),
        (b"1\r\na\r\n0\r\nX: y\r\n\x01", b"1\r\na\r\n"),
        (b"1\r\na\r\n3;ext\x01\r\n", b"1\r\na\r\n"),
    ] {
        let mut req = CHUNKED_POST.to_vec();
        req.extend_from_slice(body);
        let d = run(&req);
        assert_eq!(d.last, Step::Close(Closing::Violation), "{}", show(body));
        let mut want = ok_head(CHUNKED, "");
        want.extend_from_slice(echoed);
        assert_out(&d, &want);
        assert!(!d.out.ends_with(b"0\r\n"), "{}", show(body));
        assert_eq!(d.stats.protocol_errors[HttpError::BadRequest as usize], 1);
        assert_eq!(d.stats.responses[Method::Post as usize], [1, 0, 0, 0]);
    }
}

#[test]
fn chunked_body_over_the_limit_is_cut() {
    let cfg = HttpConfig {
        max_body_bytes: 20,
        ..HttpConfig::default()
    };
    // Exactly 20 bytes of chunked body fit; one more is cut.
    let body = b"a\r\n0123456789\r\n0\r\n\r\n";
    assert_eq!(body.len(), 20);
    let mut req = CHUNKED_POST.to_vec();
    req.extend_from_slice(body);
    let d = run_with(cfg, &req);
    assert_eq!(d.last, Step::Continue);
    let mut req = CHUNKED_POST.to_vec();
    req.extend_from_slice(b"a\r\n0123456789\r\n0\r\nX:y\r\n\r\n");
    let d = run_with(cfg, &req);
    assert_eq!(d.last, Step::Close(Closing::Violation));
    let mut want = ok_head(CHUNKED, "");
    want.extend_from_slice(b"a\r\n0123456789\r\n");
    assert_out(&d, &want);
    assert_eq!(
        d.stats.protocol_errors[HttpError::PayloadTooLarge as usize],
        1
    );
    // A later chunk over what is left of the budget.
    let mut req = CHUNKED_POST.to_vec();
    req.extend_from_slice(b"2\r\nab\r\nf\r\n");
    let d = run_with(cfg, &req);
    assert_eq!(d.last, Step::Close(Closing::Violation));
    let mut want = ok_head(CHUNKED, "");
    want.extend_from_slice(b"2\r\nab\r\n");
    assert_out(&d, &want);
    // Huge sizes never overflow: a 413 answer when it is the first.
    let mut req = CHUNKED_POST.to_vec();
    req.extend_from_slice(b"ffffffffffffffffffffff\r\n");
    let d = run(&req);
    assert_eq!(d.last, Step::Close(Closing::Violation));
    assert_out(&d, &error_answer(413));
}

/// A GET or HEAD with a chunked body is answered once the first size line parsed; the body is read
/// and dropped. With `Connection: close` the connection closes after the answer.
#[test]
fn chunked_get_is_answered_after_its_first_size_line() {
    let mut d = Driver::new(HttpConfig::default());
    d.feed(b"HEAD /?length=3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(d.out.is_empty());
    d.feed(b"2\r\nyy\r\n0\r\n\r\n");
    assert_out(&d, &ok_head(&cl(3), ""));
    assert!(d.conn.is_idle());
    let d = run(
        b"GET /?length=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n",
    );
    assert_eq!(d.last, Step::Close(Closing::Done));
    assert_out(&d, &get_answer(3, CLOSE));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut input = GET.to_vec();
    input.extend_from_slice(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    input.extend_from_slice(b"HEAD /?length=5 HTTP/1.1\r\nHost: x\r\n\r\n");
    input.extend_from_slice(b"GET /?length=2 HTTP/1.1\r\nHost: x\r\n\r\n");
    let d = run(&input);
    assert_eq!(d.last, Step::Continue);
    let mut want = get_answer(1024, "");
    want.extend_from_slice(&ok_head(&cl(3), ""));
    want.extend_from_slice(b"abc");
    want.extend_from_slice(&ok_head(&cl(5), ""));
    want.extend_from_slice(&get_answer(2, ""));
    assert_out(&d, &want);
}

#[test]
fn a_split_head_is_held_from_its_start_and_parsed_whole() {
    let mut d = Driver::new(HttpConfig::default());
    let mut input = GET.to_vec();
    input.extend_from_slice(b"GET /?length=3 HT");
    assert_eq!(d.feed(&input), Step::Hold { from: GET.len() });
    assert_eq!(d.held, b"GET /?length=3 HT");
    assert!(!d.conn.is_idle());
    assert_eq!(d.feed(b"TP/1.1\r\nHo"), Step::Hold { from: 0 });
    assert_eq!(d.feed(b"st: x\r\n\r\n"), Step::Continue);
    let mut want = get_answer(1024, "");
    want.extend_from_slice(&get_answer(3, ""));
    assert_out(&d, &want);
}

#[test]
fn connection_close_is_honoured() {
    let mut input =
        b"GET /?length=4 HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, close\r\n\r\n".to_vec();
    input.extend_from_slice(GET); // ignored: after the close
    let d = run(&input);
    assert_eq!(d.last, Step::Close(Closing::Done));
    assert_out(&d, &get_answer(4, CLOSE));
    // POST: the body is echoed before the close.
    let mut d = Driver::new(HttpConfig::default());
    d.feed(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4\r\n\r\nab");
    assert_eq!(d.last, Step::Continue);
    assert_eq!(d.feed(b"cdGET"), Step::Close(Closing::Done));
    let mut want = ok_head(&cl(4), CLOSE);
    want.extend_from_slice(b"abcd");
    assert_out(&d, &want);
    assert_eq!(d.feed(GET), Step::Close(Closing::Done));
    assert_out(&d, &want);
}

#[test]
fn http10_closes_unless_keep_alive() {
    let d = run(b"GET /?length=3 HTTP/1.0\r\n\r\n");
    assert_eq!(d.last, Step::Close(Closing::Done));
    assert_out(&d, &get_answer(3, CLOSE));

    // ApacheBench -k: the response must say keep-alive.
    let req = b"GET /?length=3 HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: x\r\nUser-Agent: ApacheBench/2.3\r\nAccept: */*\r\n\r\n";
    let mut input = req.to_vec();
    input.extend_from_slice(req);
    let d = run(&input);
    assert_eq!(d.last, Step::Continue);
    let mut want = get_answer(3, KEEP);
    want.extend_from_slice(&get_answer(3, KEEP));
    assert_out(&d, &want);

    // HTTP/1.0 POST with keep-alive.
    let d = run(b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi");
    let mut want = ok_head(&cl(2), KEEP);
    want.extend_from_slice(b"hi");
    assert_out(&d, &want);
    assert_eq!(d.last, Step::Continue);
}

#[test]
fn expect_100_continue() {
    let mut d = Driver::new(HttpConfig::default());
    let step =
        d.feed(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(step, Step::Continue);
    let mut want = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
    want.extend_from_slice(&ok_head(&cl(2), ""));
    assert_out(&d, &want);
    d.feed(b"ok");
    want.extend_from_slice(b"ok");
    assert_out(&d, &want);
    assert_eq!(d.stats.continues, 1);

    // Chunked too (the 200 after the first size line); not for HTTP/1.0, not without a body, not
    // when refused.
    let mut d = Driver::new(HttpConfig::default());
    d.feed(
        b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_out(&d, b"HTTP/1.1 100 Continue\r\n\r\n");
    d.feed(b"1\r\n");
    assert!(d
        .out
        .starts_with(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"));
    assert!(d.out.ends_with(b"chunked\r\n\r\n1\r\n"));
    let d = run(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    assert!(d.out.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let d = run(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n");
    assert_out(&d, &ok_head(&cl(0), ""));
    let cfg = HttpConfig {
        max_body_bytes: 10,
        ..HttpConfig::default()
    };
    let d = run_with(
        cfg,
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n",
    );
    assert_out(&d, &error_answer(413));
    assert_eq!(d.stats.continues, 0);
}

#[test]
fn head_over_the_limit_is_431() {
    let cfg = HttpConfig {
        max_header_bytes: 64,
        ..HttpConfig::default()
    };
    let exact = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "a".repeat(64 - 32)
    );
    assert_eq!(exact.len(), 64);
    let d = run_with(cfg, exact.as_bytes());
    assert_eq!(d.last, Step::Continue);
    let over = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "a".repeat(64 - 31)
    );
    let d = run_with(cfg, over.as_bytes());
    assert_eq!(d.last, Step::Close(Closing::Violation));
    assert_out(&d, &error_answer(431));
    // Incomplete and already over: no need to wait for the rest.
    let d = run_with(cfg, &over.as_bytes()[..65]);
    assert_out(&d, &error_answer(431));
    // Held bytes grow to the limit, then 431.
    let mut d = Driver::new(cfg);
    for b in over.as_bytes() {
        if let Step::Close(_) = d.feed(&[*b]) {
            break;
        }
    }
    assert_out(&d, &error_answer(431));
    assert_eq!(
        d.stats.protocol_errors[HttpError::HeaderTooLarge as usize],
        1
    );
}

#[test]
fn too_many_header_fields_is_431() {
    let mut req = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..MAX_HEADERS {
        req.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let d = run(&req);
    assert_out(&d, &error_answer(431));
}

#[test]
fn content_length_over_the_limit_is_413() {
    let cfg = HttpConfig {
        max_body_bytes: 100,
        ..HttpConfig::default()
    };
    let d = run_with(
        cfg,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
    );
    assert_eq!(d.last, Step::Continue);
    for len in ["101", "99999999999999999999999999"] {
        let req = format!("PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
        let d = run_with(cfg, req.as_bytes());
        assert_eq!(d.last, Step::Close(Closing::Violation));
        assert_out(&d, &error_answer(413));
    }
}

#[test]
fn other_versions_are_505() {
    for req in [
        &b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"[..],
        b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
        b"GET / HTTP/3\r\n",
        b"GET / HTTP/0.9\r\n\r\n",
    ] {
        let d = run(req);
        assert_eq!(d.last, Step::Close(Closing::Violation), "{}", show(req));
        assert_out(&d, &error_answer(505));
    }
}

#[test]
fn unknown_methods_and_codings_are_501() {
    for req in [
        &b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n",
        b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let d = run(req);
        assert_eq!(d.last, Step::Close(Closing::Violation), "{}", show(req));
        assert_out(&d, &error_answer(501));
    }
    let d = run(b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(d.stats.responses[Method::Other as usize][3], 1);
}

#[test]
fn malformed_requests_are_400() {
    for req in [
        &b"\x00\x01\x02\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTX/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"\r\r\n",
    ] {
        let d = run(req);
        assert_eq!(d.last, Step::Close(Closing::Violation), "{}", show(req));
        assert_out(&d, &error_answer(400));
        assert_eq!(d.stats.protocol_errors[HttpError::BadRequest as usize], 1);
    }
    // Equal repeated Content-Lengths are fine.
    let d = run(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nz");
    assert_eq!(d.last, Step::Continue);
}

#[test]
fn head_errors_have_no_body() {
    let d = run(b"HEAD /?length=0 HTTP/1.1\r\nHost: x\r\n\r\n");
    let want = error_answer(400);
    let body_len = b"Bad Request\n".len();
    assert_out(&d, &want[..want.len() - body_len]);
}

#[test]
fn a_get_body_is_read_and_dropped() {
    let mut input =
        b"GET /?length=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nxxxxx".to_vec();
    input.extend_from_slice(b"GET /?length=2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nyy\r\n0\r\n\r\n");
    input.extend_from_slice(b"GET /?length=3 HTTP/1.1\r\nHost: x\r\n\r\n");
    let d = run(&input);
    assert_eq!(d.last, Step::Continue);
    let mut want = get_answer(1, "");
    want.extend_from_slice(&get_answer(2, ""));
    want.extend_from_slice(&get_answer(3, ""));
    assert_out(&d, &want);
}

#[test]
fn empty_lines_between_requests_are_skipped() {
    let mut input = b"\r\n\n".to_vec();
    input.extend_from_slice(GET);
    input.extend_from_slice(b"\r\n");
    input.extend_from_slice(GET);
    input.extend_from_slice(b"\r\n");
    let d = run(&input);
    assert_eq!(d.last, Step::Continue);
    assert!(d.conn.is_idle());
    let mut want = get_answer(1024, "");
    want.extend_from_slice(&get_answer(1024, ""));
    assert_out(&d, &want);
}

#[test]
fn peer_fin() {
    // Between requests: a normal end.
    let mut d = run(GET);
    assert_eq!(d.fin(), Step::Close(Closing::Done));
    assert_out(&d, &get_answer(1024, ""));
    let mut d = Driver::new(HttpConfig::default());
    assert_eq!(d.fin(), Step::Close(Closing::Done));
    assert!(d.out.is_empty());
    // Half a head: 400.
    let mut d = run(b"GET / HTTP/1.1\r\nHo");
    assert_eq!(d.fin(), Step::Close(Closing::Violation));
    assert_out(&d, &error_answer(400));
    assert_eq!(d.stats.truncated, 1);
    // Half a body: cut.
    let mut d = run(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab");
    let before = d.out.clone();
    assert_eq!(d.fin(), Step::Close(Closing::Violation));
    assert_eq!(d.out, before);
    assert_eq!(d.stats.truncated, 1);
}

#[test]
fn after_close_nothing_more_is_answered() {
    let mut conn = HttpConn::default();
    let cfg = HttpConfig::default();
    let ctx = Ctx { date: DATE };
    let mut stats = HttpStats::default();
    let mut sink = RecSink::default();
    let mut bad = b"BAD\x00".to_vec();
    assert_eq!(
        conn.on_input(&cfg, &ctx, &mut bad, &mut sink, &mut stats),
        Step::Close(Closing::Violation)
    );
    let n = sink.segs.len();
    let mut get = GET.to_vec();
    assert_eq!(
        conn.on_input(&cfg, &ctx, &mut get, &mut sink, &mut stats),
        Step::Close(Closing::Violation)
    );
    assert_eq!(
        conn.on_peer_fin(&ctx, &mut sink, &mut stats),
        Step::Close(Closing::Violation)
    );
    assert_eq!(sink.segs.len(), n);
}

#[test]
fn stats_add_up() {
    let mut input = Vec::new();
    for _ in 0..3 {
        input.extend_from_slice(GET);
    }
    input.extend_from_slice(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz");
    input.extend_from_slice(b"PATCH / HTTP/1.1\r\nHost: x\r\n\r\n");
    let d = run(&input);
    let s = &d.stats;
    assert_eq!(s.requests(Method::Get), 3);
    assert_eq!(s.requests(Method::Post), 1);
    assert_eq!(s.requests(Method::Other), 1);
    assert_eq!(s.responses[Method::Other as usize][3], 1);
    assert_eq!(s.protocol_errors[HttpError::NotImplemented as usize], 1);
    let mut total = HttpStats::default();
    total.add(s);
    total.add(s);
    assert_eq!(total.requests(Method::Get), 6);
    assert_eq!(total.protocol_errors.iter().sum::<u64>(), 2);
    assert_eq!(
        HttpError::ALL.map(|e| e.label()),
        ["400", "413", "431", "501", "505"]
    );
    assert_eq!(
        Method::ALL.map(|m| m.label()),
        ["GET", "HEAD", "POST", "PUT", "other"]
    );
}

#[test]
fn response_head_carries_the_shard_date() {
    let mut conn = HttpConn::default();
    let mut sink = RecSink::default();
    let date = format_date(std::time::SystemTime::UNIX_EPOCH);
    let mut input = GET.to_vec();
    conn.on_input(
        &HttpConfig::default(),
        &Ctx { date: &date },
        &mut input,
        &mut sink,
        &mut HttpStats::default(),
    );
    let Seg::Generated(head) = &sink.segs[0] else {
        panic!()
    };
    assert!(show(head).contains("\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n"));
}

//! Split invariance: the same bytes, cut anywhere into reads, give byte-identical output, the same
//! final step and the same counters as in one piece. Property tests (random requests, random
//! mutations, random cut points) and exhaustive single-byte splits of fixed inputs.

use super::*;
use proptest::prelude::*;
use proptest::sample::Index;

/// What a run ended with, comparable across splits (a `Hold` offset is relative to the last slice, so
/// the held bytes are compared instead).
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    out: Vec<u8>,
    last: Step,
    held: Vec<u8>,
    stats: HttpStats,
    after_fin: Step,
    out_after_fin: Vec<u8>,
}

fn outcome(mut d: Driver) -> Outcome {
    let last = match d.last {
        Step::Hold { .. } => Step::Hold { from: 0 },
        s => s,
    };
    let out = d.out.clone();
    let held = d.held.clone();
    let after_fin = d.fin();
    Outcome {
        out,
        last,
        held,
        stats: d.stats,
        after_fin,
        out_after_fin: d.out,
    }
}

fn split_run(cfg: HttpConfig, input: &[u8], cuts: &[usize]) -> Outcome {
    let mut cuts = cuts.to_vec();
    cuts.sort_unstable();
    let mut d = Driver::new(cfg);
    d.feed_split(input, &cuts);
    outcome(d)
}

fn assert_split_invariant(cfg: HttpConfig, input: &[u8], cuts: &[usize]) -> Outcome {
    let whole = split_run(cfg, input, &[]);
    let split = split_run(cfg, input, cuts);
    assert_eq!(whole, split, "input {:?} cut at {cuts:?}", show(input));
    whole
}

/// One generated request and the answer it must get.
#[derive(Clone, Debug)]
enum Req {
    Get {
        length: Option<u32>,
        head: bool,
        v10: bool,
    },
    Echo {
        body: Vec<u8>,
        put: bool,
        expect: bool,
        v10: bool,
    },
    Chunked {
        chunks: Vec<(Vec<u8>, bool)>,
        trailers: Vec<(String, String)>,
        expect: bool,
    },
}

fn req_strategy() -> impl Strategy<Value = Req> {
    let body = prop::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        (prop::option::of(1u32..3000), any::<bool>(), any::<bool>())
            .prop_map(|(length, head, v10)| Req::Get { length, head, v10 }),
        (body, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(body, put, expect, v10)| {
            Req::Echo {
                body,
                put,
                expect,
                v10,
            }
        }),
        (
            prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 1..30), any::<bool>()),
                0..4
            ),
            prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,8}", "[ -~]{0,12}"), 0..3),
            any::<bool>()
        )
            .prop_map(|(chunks, trailers, expect)| Req::Chunked {
                chunks,
                trailers,
                expect
            }),
    ]
}

/// Request bytes and expected answer bytes for `req`; `close` adds `Connection: close`.
fn encode(req: &Req, close: bool) -> (Vec<u8>, Vec<u8>) {
    let conn_req = |v10: bool| match (close, v10) {
        (true, _) => "Connection: close\r\n",
        (false, true) => "Connection: keep-alive\r\n",
        (false, false) => "",
    };
    let conn_resp = |v10: bool| match (close, v10) {
        (true, _) => CLOSE,
        (false, true) => KEEP,
        (false, false) => "",
    };
    match req {
        Req::Get { length, head, v10 } => {
            let method = if *head { "HEAD" } else { "GET" };
            let query = length.map_or(String::new(), |n| format!("?a=b&length={n}"));
            let version = if *v10 { "1.0" } else { "1.1" };
            let req = format!(
                "{method} /p{query} HTTP/{version}\r\nHost: h\r\n{}User-Agent: t\r\n\r\n",
                conn_req(*v10)
            );
            let n = length.unwrap_or(1024) as usize;
            let resp = if *head {
                ok_head(&cl(n), conn_resp(*v10))
            } else {
                get_answer(n, conn_resp(*v10))
            };
            (req.into_bytes(), resp)
        }
        Req::Echo {
            body,
            put,
            expect,
            v10,
        } => {
            let method = if *put { "PUT" } else { "POST" };
            let version = if *v10 { "1.0" } else { "1.1" };
            let expect_h = if *expect {
                "Expect: 100-continue\r\n"
            } else {
                ""
            };
            let mut req = format!(
                "{method} / HTTP/{version}\r\nHost: h\r\n{expect_h}{}Content-Length: {}\r\n\r\n",
                conn_req(*v10),
                body.len()
            )
            .into_bytes();
            req.extend_from_slice(body);
            let mut resp = Vec::new();
            if *expect && !*v10 && !body.is_empty() {
                resp.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            resp.extend_from_slice(&ok_head(&cl(body.len()), conn_resp(*v10)));
            resp.extend_from_slice(body);
            (req, resp)
        }
        Req::Chunked {
            chunks,
            trailers,
            expect,
        } => {
            let expect_h = if *expect {
                "Expect: 100-continue\r\n"
            } else {
                ""
            };
            let mut req = format!(
                "POST / HTTP/1.1\r\nHost: h\r\n{expect_h}{}Transfer-Encoding: chunked\r\n\r\n",
                conn_req(false)
            )
            .into_bytes();
            let mut body = Vec::new();
            for (data, ext) in chunks {
                let ext = if *ext { ";x=\"y z\"" } else { "" };
                body.extend_from_slice(format!("{:X}{ext}\r\n", data.len()).as_bytes());
                body.extend_from_slice(data);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n");
            for (k, v) in trailers {
                body.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
            }
            body.extend_from_slice(b"\r\n");
            req.extend_from_slice(&body);
            let mut resp = Vec::new();
            if *expect {
                resp.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            resp.extend_from_slice(&ok_head(CHUNKED, conn_resp(false)));
            resp.extend_from_slice(&body);
            (req, resp)
        }
    }
}

fn conversation(reqs: &[Req], close_last: bool) -> (Vec<u8>, Vec<u8>) {
    let mut input = Vec::new();
    let mut want = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let (req, resp) = encode(r, close_last && i + 1 == reqs.len());
        input.extend_from_slice(&req);
        want.extend_from_slice(&resp);
    }
    (input, want)
}

fn cut_points(len: usize, idx: &[Index]) -> Vec<usize> {
    idx.iter().map(|i| i.index(len.max(1))).collect()
}

/// Configurations that make the limits bite on generated input.
fn cfg_strategy() -> impl Strategy<Value = HttpConfig> {
    prop_oneof![
        3 => Just(HttpConfig::default()),
        1 => (20usize..200, 0u64..120, 1u32..2000).prop_map(|(h, b, l)| HttpConfig {
            max_header_bytes: h,
            max_body_bytes: b,
            max_length: l,
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Valid conversations get exactly the expected answers, however the bytes are cut.
    #[test]
    fn valid_requests_any_split(
        reqs in prop::collection::vec(req_strategy(), 1..6),
        close_last in any::<bool>(),
        idx in prop::collection::vec(any::<Index>(), 0..24),
    ) {
        let (input, want) = conversation(&reqs, close_last);
        let cuts = cut_points(input.len(), &idx);
        let o = assert_split_invariant(HttpConfig::default(), &input, &cuts);
        prop_assert_eq!(show(&o.out), show(&want));
        let end = if close_last { Step::Close(Closing::Done) } else { Step::Continue };
        prop_assert_eq!(o.last, end);
        prop_assert_eq!(o.stats.protocol_errors, [0; HttpError::COUNT]);
        prop_assert_eq!(o.stats.responses.iter().map(|c| c[0]).sum::<u64>(), reqs.len() as u64);
    }

    /// Broken input (random edits of valid conversations, small limits) parses the same at any split,
    /// and never panics.
    #[test]
    fn mutated_requests_any_split(
        reqs in prop::collection::vec(req_strategy(), 1..4),
        edits in prop::collection::vec(
            (any::<Index>(), 0u8..3, prop::sample::select(&b"\r\n :;0aZ\x00\xff\t-9?=&"[..])), 1..5),
        cfg in cfg_strategy(),
        idx in prop::collection::vec(any::<Index>(), 0..24),
    ) {
        let (mut input, _) = conversation(&reqs, false);
        for (at, kind, byte) in edits {
            let i = at.index(input.len());
            match kind {
                0 => input[i] = byte,
                1 => input.insert(i, byte),
                _ => { input.remove(i); }
            }
            if input.is_empty() { input.push(byte); }
        }
        let cuts = cut_points(input.len(), &idx);
        assert_split_invariant(cfg, &input, &cuts);
    }

    /// Arbitrary bytes: no panic, split-invariant.
    #[test]
    fn arbitrary_bytes_any_split(
        input in prop::collection::vec(any::<u8>(), 1..300),
        cfg in cfg_strategy(),
        idx in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let cuts = cut_points(input.len(), &idx);
        assert_split_invariant(cfg, &input, &cuts);
    }
}

/// Every way of cutting into two and every byte on its own, for fixed inputs covering every rule.
#[test]
fn every_single_byte_split() {
    let small = HttpConfig {
        max_header_bytes: 48,
        max_body_bytes: 24,
        max_length: 100,
    };
    let mut inputs: Vec<(HttpConfig, Vec<u8>)> = Vec::new();
    let (valid, _) = conversation(
        &[
            Req::Get {
                length: Some(5),
                head: false,
                v10: false,
            },
            Req::Echo {
                body: b"hello".to_vec(),
                put: true,
                expect: true,
                v10: false,
            },
            Req::Chunked {
                chunks: vec![
                    (b"abc".to_vec(), true),
                    (b"0123456789abcdef".to_vec(), false),
                ],
                trailers: vec![("X-T".into(), "v".into())],
                expect: true,
            },
            Req::Get {
                length: None,
                head: true,
                v10: true,
            },
        ],
        true,
    );
    inputs.push((HttpConfig::default(), valid));
    for raw in [
        &b"\r\nGET /?length=3 HTTP/1.1\r\nHost: x\r\n\r\n\r\nGET / HTTP/1.0\r\n\r\n"[..],
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.2\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 25\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n9\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /?length=101 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTT",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nab",
    ] {
        inputs.push((small, raw.to_vec()));
    }
    for (cfg, input) in &inputs {
        for c in 1..input.len() {
            assert_split_invariant(*cfg, input, &[c]);
        }
        let every: Vec<usize> = (1..input.len()).collect();
        assert_split_invariant(*cfg, input, &every);
    }
}

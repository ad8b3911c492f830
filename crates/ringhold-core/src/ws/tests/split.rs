//! However a byte stream is cut into inputs, the output bytes, the final step and the counters are
//! the same (proptest, and every cut of fixed streams).

use proptest::prelude::*;

use super::*;

/// One thing a client does.
#[derive(Clone, Debug)]
enum Ev {
    /// A data message cut into fragments at `cuts`, with a ping after each fragment whose flag is
    /// set.
    Msg {
        text: bool,
        data: Vec<u8>,
        cuts: Vec<usize>,
        pings: Vec<bool>,
        mask: [u8; 4],
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

fn payload(text: bool) -> BoxedStrategy<Vec<u8>> {
    if text {
        prop_oneof![
            8 => ".{0,40}".prop_map(String::into_bytes),
            1 => prop::collection::vec(any::<u8>(), 0..20),
        ]
        .boxed()
    } else {
        prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 0..60),
            1 => (0usize..70_000).prop_map(|n| (0..n).map(|i| (i % 253) as u8).collect()),
        ]
        .boxed()
    }
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        6 => any::<bool>().prop_flat_map(|text| (
            Just(text),
            payload(text),
            prop::collection::vec(any::<prop::sample::Index>(), 0..4),
            prop::collection::vec(prop::bool::weighted(0.3), 5),
            any::<[u8; 4]>(),
        )).prop_map(|(text, data, cuts, pings, mask)| {
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
            cuts.sort_unstable();
            Ev::Msg { text, data, cuts, pings, mask }
        }),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Ev::Ping),
        1 => prop::collection::vec(any::<u8>(), 0..=125).prop_map(Ev::Pong),
    ]
}

/// The client bytes of `evs` and the frames a correct echo sends back for them.
fn encode(evs: &[Ev]) -> (Vec<u8>, Vec<Frame>) {
    const PM: [u8; 4] = [1, 2, 3, 4];
    let mut bytes = Vec::new();
    let mut want = Vec::new();
    for ev in evs {
        match ev {
            Ev::Msg {
                text,
                data,
                cuts,
                pings,
                mask,
            } => {
                let mut start = 0;
                let ends = cuts.iter().copied().chain(std::iter::once(data.len()));
                let n = cuts.len() + 1;
                for (i, end) in ends.enumerate() {
                    let op = if i > 0 {
                        0
                    } else if *text {
                        1
                    } else {
                        2
                    };
                    let fin = i + 1 == n;
                    bytes.extend(frame(fin, op, &data[start..end], *mask));
                    want.push(Frame::new(fin, op, &data[start..end]));
                    start = end;
                    if !fin && pings[i] {
                        bytes.extend(frame(true, 9, b"between", PM));
                        want.push(Frame::new(true, 0xA, b"between"));
                    }
                }
            }
            Ev::Ping(p) => {
                bytes.extend(frame(true, 9, p, PM));
                want.push(Frame::new(true, 0xA, p));
            }
            Ev::Pong(p) => bytes.extend(frame(true, 0xA, p, PM)),
        }
    }
    (bytes, want)
}

/// What a run leaves: output bytes, final step (a hold's offset depends on the cuts, so a hold is
/// `Hold { from: 0 }` here and the held bytes are compared instead), counters, held bytes.
type Outcome = (Vec<u8>, Step, WsStats, Vec<u8>);

/// Run `stream` (handshake included) cut at `cuts`.
fn run_cut(cfg: WsConfig, stream: &[u8], cuts: &[usize]) -> Outcome {
    let mut d = Driver::new(cfg);
    let step = match d.feed_split(stream, cuts) {
        Step::Hold { .. } => Step::Hold { from: 0 },
        s => s,
    };
    (d.take(), step, d.stats, std::mem::take(&mut d.held))
}

fn cfg() -> WsConfig {
    WsConfig {
        max_message_size: 50_000,
        max_header_bytes: 1024,
    }
}

/// The stream, whole and cut at `cuts`, gives the same result.
fn same_whole_and_cut(stream: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, Step), TestCaseError> {
    let whole = run_cut(cfg(), stream, &[]);
    let cut = run_cut(cfg(), stream, cuts);
    prop_assert_eq!(&whole.1, &cut.1, "final step, cuts {:?}", cuts);
    prop_assert!(whole.0 == cut.0, "output differs, cuts {:?}", cuts);
    prop_assert_eq!(&whole.2, &cut.2);
    prop_assert_eq!(&whole.3, &cut.3);
    Ok((whole.0, whole.1))
}

fn cut_points() -> impl Strategy<Value = Vec<prop::sample::Index>> {
    prop::collection::vec(any::<prop::sample::Index>(), 0..12)
}

fn to_cuts(idx: &[prop::sample::Index], len: usize) -> Vec<usize> {
    let mut c: Vec<usize> = idx.iter().map(|i| i.index(len + 1)).collect();
    c.sort_unstable();
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Valid sessions: any split gives the same output, which is the expected echo; a close at the
    /// end is answered.
    #[test]
    fn valid_sessions_split_anywhere(evs in prop::collection::vec(ev(), 0..6), close in any::<bool>(), idx in cut_points()) {
        let (frames, mut want) = encode(&evs);
        let mut stream = REQUEST.to_vec();
        stream.extend(&frames);
        if close {
            stream.extend(frame(true, 8, &[0x03, 0xE8, b'o', b'k'], [9, 8, 7, 6]));
            want.push(Frame::close(1000));
        }
        let cuts = to_cuts(&idx, stream.len());
        let (out, step) = same_whole_and_cut(&stream, &cuts)?;
        prop_assert_eq!(&out[..RESPONSE.len()], RESPONSE);
        let got = decode(&out[RESPONSE.len()..]);
        let too_big = evs.iter().any(|e| matches!(e, Ev::Msg { data, .. } if data.len() > 50_000));
        let bad_text = evs.iter().any(|e| matches!(e, Ev::Msg { text: true, data, .. } if std::str::from_utf8(data).is_err()));
        if !too_big && !bad_text {
            prop_assert_eq!(got, want);
            prop_assert_eq!(step, if close { DONE } else { Step::Continue });
        } else {
            prop_assert_eq!(step, VIOLATION);
            let last = got.last().cloned();
            let code = last.map(|f| f.payload).unwrap_or_default();
            prop_assert!(code == b"\x03\xef" || code == b"\x03\xf1", "{:?}", code);
        }
    }

    /// Sessions with one byte changed (any error the decoder can meet) or cut short: any split
    /// still gives the same output, step and counters, and the output decodes into whole frames
    /// unless the client's stream ends inside a frame.
    #[test]
    fn damaged_sessions_split_anywhere(
        evs in prop::collection::vec(ev(), 1..5),
        flip in any::<prop::sample::Index>(),
        xor in 1u8..,
        truncate in any::<Option<prop::sample::Index>>(),
        idx in cut_points(),
    ) {
        let (frames, _) = encode(&evs);
        let mut stream = REQUEST.to_vec();
        let at = REQUEST.len() + flip.index(frames.len().max(1));
        stream.extend(&frames);
        if at < stream.len() {
            stream[at] ^= xor;
        }
        if let Some(t) = truncate {
            stream.truncate(REQUEST.len() + t.index(frames.len() + 1));
        }
        let cuts = to_cuts(&idx, stream.len());
        let (out, step) = same_whole_and_cut(&stream, &cuts)?;
        if matches!(step, Step::Close(_)) {
            decode(&out[RESPONSE.len()..]);
        }
    }

    /// Arbitrary bytes after the handshake.
    #[test]
    fn arbitrary_bytes_split_anywhere(bytes in prop::collection::vec(any::<u8>(), 0..300), idx in cut_points()) {
        let mut stream = REQUEST.to_vec();
        stream.extend(&bytes);
        let cuts = to_cuts(&idx, stream.len());
        same_whole_and_cut(&stream, &cuts)?;
    }

    /// Arbitrary bytes as a request head.
    #[test]
    fn arbitrary_heads_split_anywhere(head in "[ -~\r\n]{0,200}", idx in cut_points()) {
        let cfg = WsConfig { max_header_bytes: 100, ..cfg() };
        let stream = head.into_bytes();
        let cuts = to_cuts(&idx, stream.len());
        let whole = run_cut(cfg, &stream, &[]);
        let cut = run_cut(cfg, &stream, &cuts);
        prop_assert_eq!(whole, cut);
    }
}

/// A fixed stream with every kind of frame and boundary: headers with 16- and 64-bit lengths,
/// fragments with a ping between them, a character cut by a frame, a pong, a close.
fn fixed_stream() -> Vec<u8> {
    let m = [0x11, 0x22, 0x33, 0x44];
    let mut s = REQUEST.to_vec();
    s.extend(text("añb€".as_bytes()));
    s.extend(frame(false, 1, b"ab\xe2", m));
    s.extend(frame(true, 9, b"ping!", m));
    s.extend(frame(false, 0, b"\x82", m));
    s.extend(frame(true, 0, b"\xac!", m));
    s.extend(frame(true, 2, &[5; 300], m));
    s.extend(frame(true, 0xA, b"pong", m));
    s.extend(frame(true, 2, &[6; 66_000], m));
    s.extend(frame(true, 8, b"\x03\xe8bye", m));
    s
}

#[test]
fn every_byte_on_its_own_gives_the_same_result() {
    let cfg = WsConfig::default();
    let stream = fixed_stream();
    let whole = run_cut(cfg, &stream, &[]);
    assert_eq!(whole.1, DONE);
    let all: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(run_cut(cfg, &stream, &all), whole);
    // And with invalid UTF-8 inside a cut character, and with a one-byte close payload.
    for bad in [&b"\xe2\x28"[..], b"\xf0\x9f\x98"] {
        let mut s = REQUEST.to_vec();
        s.extend(frame(false, 1, &bad[..1], [1, 2, 3, 4]));
        s.extend(frame(true, 0, &bad[1..], [1, 2, 3, 4]));
        s.extend(text(b"unreached"));
        let whole = run_cut(cfg, &s, &[]);
        assert_eq!(whole.1, VIOLATION);
        let all: Vec<usize> = (1..s.len()).collect();
        assert_eq!(run_cut(cfg, &s, &all), whole);
    }
}

#[test]
fn every_single_cut_gives_the_same_result() {
    let cfg = WsConfig::default();
    let mut stream = fixed_stream();
    // Without the 66 kB frame, so that every cut point is affordable.
    let big = frame(true, 2, &[6; 66_000], [0x11, 0x22, 0x33, 0x44]);
    let at = stream
        .windows(big.len())
        .position(|w| w == big.as_slice())
        .unwrap();
    stream.drain(at..at + big.len());
    let whole = run_cut(cfg, &stream, &[]);
    assert_eq!(whole.1, DONE);
    for cut in 0..=stream.len() {
        assert_eq!(run_cut(cfg, &stream, &[cut]), whole, "cut at {cut}");
    }
    for a in (0..stream.len()).step_by(7) {
        for b in (a..stream.len()).step_by(5) {
            assert_eq!(run_cut(cfg, &stream, &[a, b]), whole, "cuts at {a}, {b}");
        }
    }
}

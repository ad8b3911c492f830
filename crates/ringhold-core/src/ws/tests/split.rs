//! However a byte stream is cut into inputs, the output bytes, the final step and the counters are
//! the same (proptest, and every cut of fixed streams).

use proptest::prelude::*;

use super::*;
use crate::ws::TEXT_CHUNK;

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

/// Byte sequences that are not UTF-8 wherever they stand: a byte never used, an overlong form, a
/// surrogate, past U+10FFFF, a lead byte followed by ASCII, a character cut short (invalid when
/// anything but its rest follows, or when the message ends there).
const BAD: [&[u8]; 6] = [
    b"\xff",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x28",
    b"\xf0\x9f\x98",
];

fn payload(text: bool) -> BoxedStrategy<Vec<u8>> {
    if text {
        prop_oneof![
            8 => ".{0,40}".prop_map(String::into_bytes),
            1 => prop::collection::vec(any::<u8>(), 0..20),
            // Longer than a text chunk: echoed in fragments.
            1 => prop::collection::vec(any::<char>(), 1000..3000)
                .prop_map(|c| c.into_iter().collect::<String>().into_bytes()),
            // Valid text with one bad sequence anywhere (inside a character too).
            2 => (".{0,40}", any::<prop::sample::Index>(), 0..BAD.len()).prop_map(|(s, at, bad)| {
                let mut v = s.into_bytes();
                let at = at.index(v.len() + 1);
                v.splice(at..at, BAD[bad].iter().copied());
                v
            }),
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

/// The echo a correct server sends, written independently of `frame.rs` (std's UTF-8 check): binary
/// frames as they came, text frames in chunks of [`TEXT_CHUNK`] echoed as frames that end on a
/// character boundary (the cut character's start goes with the next one), a close code at the first
/// error; nothing after it.
struct Model {
    limit: u64,
    want: Vec<Frame>,
    /// The close code sent, once failed.
    failed: Option<u16>,
    /// The current message's length so far.
    total: u64,
    /// Text bytes not yet echoed: the start of a cut character.
    pending: Vec<u8>,
}

impl Model {
    fn new(limit: u64) -> Self {
        Model {
            limit,
            want: Vec::new(),
            failed: None,
            total: 0,
            pending: Vec::new(),
        }
    }

    fn fail(&mut self, code: u16) {
        self.want.push(Frame::close(code));
        self.failed = Some(code);
    }

    /// A data frame: `first` of its message, `fin` its last.
    fn data(&mut self, text: bool, first: bool, fin: bool, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if first {
            self.total = 0;
            self.pending.clear();
        }
        self.total += data.len() as u64;
        if self.total > self.limit {
            return self.fail(1009);
        }
        let op = match (first, text) {
            (false, _) => 0,
            (true, true) => 1,
            (true, false) => 2,
        };
        if !text {
            self.want.push(Frame::new(fin, op, data));
            return;
        }
        let mut chunks: Vec<&[u8]> = data.chunks(TEXT_CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let n = chunks.len();
        for (j, c) in chunks.into_iter().enumerate() {
            let last = fin && j + 1 == n;
            self.pending.extend_from_slice(c);
            let keep = match std::str::from_utf8(&self.pending) {
                Ok(_) => 0,
                Err(e) if e.error_len().is_none() => self.pending.len() - e.valid_up_to(),
                Err(_) => return self.fail(1007),
            };
            if last && keep > 0 {
                return self.fail(1007);
            }
            let cut = self.pending.len() - keep;
            let p: Vec<u8> = self.pending.drain(..cut).collect();
            self.want
                .push(Frame::new(last, if j == 0 { op } else { 0 }, &p));
        }
    }

    fn control(&mut self, f: Frame) {
        if self.failed.is_none() {
            self.want.push(f);
        }
    }
}

/// The client bytes of `evs` and what the model says the server sends back for them.
fn encode(evs: &[Ev], limit: u64) -> (Vec<u8>, Model) {
    const PM: [u8; 4] = [1, 2, 3, 4];
    let mut bytes = Vec::new();
    let mut m = Model::new(limit);
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
                    m.data(*text, i == 0, fin, &data[start..end]);
                    start = end;
                    if !fin && pings[i] {
                        bytes.extend(frame(true, 9, b"between", PM));
                        m.control(Frame::new(true, 0xA, b"between"));
                    }
                }
            }
            Ev::Ping(p) => {
                bytes.extend(frame(true, 9, p, PM));
                m.control(Frame::new(true, 0xA, p));
            }
            Ev::Pong(p) => bytes.extend(frame(true, 0xA, p, PM)),
        }
    }
    (bytes, m)
}

/// Every echo frame of a text message is UTF-8 on its own (so whatever the client has read of a
/// text message is a prefix of a valid one).
fn text_frames_are_utf8(frames: &[Frame]) -> Result<(), TestCaseError> {
    let mut text = false;
    for f in frames {
        match f.op {
            1 => text = true,
            2 => text = false,
            _ => {}
        }
        if f.op < 8 && text {
            prop_assert!(
                std::str::from_utf8(&f.payload).is_ok(),
                "an echo text frame that is not UTF-8: {:02x?}",
                f
            );
        }
    }
    Ok(())
}

/// What a run leaves: output bytes, final step (a hold's offset depends on the cuts, so a hold is
/// `Hold { from: 0 }` here and the held bytes are compared instead), counters, held bytes.
type Outcome = (Vec<u8>, Step, WsStats, Vec<u8>);

/// Run `stream` (handshake included) cut at `cuts`.
fn run_cut(cfg: WsConfig, stream: &[u8], cuts: &[usize]) -> Outcome {
    run_paused(cfg, stream, cuts, None, &[])
}

/// Run `stream` cut at `cuts` with an output budget: after the `i`-th piece, `resumes[i % len]`
/// says whether to resume (`None`: stay paused; `Some(once)`: one call, or until all is handled);
/// everything left is resumed at the end.
fn run_paused(
    cfg: WsConfig,
    stream: &[u8],
    cuts: &[usize],
    budget: Option<usize>,
    resumes: &[Option<bool>],
) -> Outcome {
    let mut d = Driver::new(cfg);
    d.budget = budget;
    let mut last = 0;
    for (i, &c) in cuts
        .iter()
        .chain(std::iter::once(&stream.len()))
        .enumerate()
    {
        let c = c.clamp(last, stream.len());
        d.feed(&stream[last..c]);
        last = c;
        if let Some(Some(once)) = resumes.get(i % resumes.len().max(1)) {
            d.resume(*once);
        }
    }
    d.resume(false);
    let step = match d.step {
        Step::Hold { .. } => Step::Hold { from: 0 },
        s => s,
    };
    (d.take(), step, d.stats, std::mem::take(&mut d.held))
}

/// A budget (0: pause after every echo frame; small; large) and resume points.
fn pausing() -> impl Strategy<Value = (usize, Vec<Option<bool>>)> {
    (
        prop_oneof![Just(0usize), 1usize..100, 100usize..5000],
        prop::collection::vec(prop::option::of(any::<bool>()), 1..6),
    )
}

fn cfg() -> WsConfig {
    WsConfig {
        max_message_size: 50_000,
        max_header_bytes: 1024,
    }
}

/// The stream, whole and cut at `cuts`, gives the same result; and cut and paused as `p` says.
fn same_whole_and_cut(
    stream: &[u8],
    cuts: &[usize],
    p: &(usize, Vec<Option<bool>>),
) -> Result<(Vec<u8>, Step), TestCaseError> {
    let whole = run_cut(cfg(), stream, &[]);
    let cut = run_cut(cfg(), stream, cuts);
    prop_assert_eq!(&whole.1, &cut.1, "final step, cuts {:?}", cuts);
    prop_assert!(whole.0 == cut.0, "output differs, cuts {:?}", cuts);
    prop_assert_eq!(&whole.2, &cut.2);
    prop_assert_eq!(&whole.3, &cut.3);
    let paused = run_paused(cfg(), stream, cuts, Some(p.0), &p.1);
    prop_assert_eq!(
        &whole.1,
        &paused.1,
        "final step, cuts {:?}, pausing {:?}",
        cuts,
        p
    );
    prop_assert!(
        whole.0 == paused.0,
        "output differs, cuts {:?}, pausing {:?}",
        cuts,
        p
    );
    prop_assert_eq!(&whole.2, &paused.2);
    prop_assert_eq!(&whole.3, &paused.3);
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

    /// Sessions (text valid or not, messages over the limit): any split gives the same output,
    /// which is what the model says; a close at the end is answered unless the session failed.
    #[test]
    fn sessions_split_anywhere(evs in prop::collection::vec(ev(), 0..6), close in any::<bool>(), idx in cut_points(), p in pausing()) {
        let (frames, mut m) = encode(&evs, cfg().max_message_size);
        let mut stream = REQUEST.to_vec();
        stream.extend(&frames);
        if close {
            stream.extend(frame(true, 8, &[0x03, 0xE8, b'o', b'k'], [9, 8, 7, 6]));
            m.control(Frame::close(1000));
        }
        let cuts = to_cuts(&idx, stream.len());
        let (out, step) = same_whole_and_cut(&stream, &cuts, &p)?;
        prop_assert_eq!(&out[..RESPONSE.len()], RESPONSE);
        let got = decode(&out[RESPONSE.len()..]);
        text_frames_are_utf8(&got)?;
        prop_assert_eq!(got, m.want);
        let want_step = match m.failed {
            Some(_) => VIOLATION,
            None if close => DONE,
            None => Step::Continue,
        };
        prop_assert_eq!(step, want_step);
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
        p in pausing(),
    ) {
        let (frames, _) = encode(&evs, cfg().max_message_size);
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
        let (out, step) = same_whole_and_cut(&stream, &cuts, &p)?;
        if matches!(step, Step::Close(_)) {
            text_frames_are_utf8(&decode(&out[RESPONSE.len()..]))?;
        }
    }

    /// Arbitrary bytes after the handshake.
    #[test]
    fn arbitrary_bytes_split_anywhere(bytes in prop::collection::vec(any::<u8>(), 0..300), idx in cut_points(), p in pausing()) {
        let mut stream = REQUEST.to_vec();
        stream.extend(&bytes);
        let cuts = to_cuts(&idx, stream.len());
        same_whole_and_cut(&stream, &cuts, &p)?;
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

/// Resume patterns with a budget of 0 (a pause after every echo frame): at once, one call at a
/// time, only at the end, every other piece.
const PAUSINGS: [&[Option<bool>]; 4] =
    [&[Some(false)], &[Some(true)], &[None], &[None, Some(true)]];

/// A budget of 0 pauses after every echo frame: 30 pings in one piece take 30 calls.
#[test]
fn a_zero_budget_echoes_one_frame_per_call() {
    let mut d = Driver::open();
    d.budget = Some(0);
    let mut s = Vec::new();
    for i in 0..30u8 {
        s.extend(frame(true, 9, &[i], [1, 2, 3, 4]));
    }
    assert!(matches!(d.feed(&s), Step::Pause { .. }));
    let mut calls = 1;
    while d.paused {
        d.resume(true);
        calls += 1;
    }
    assert_eq!((calls, d.pauses), (30, 29));
    assert_eq!(d.step, Step::Continue);
    let want: Vec<u8> = (0..30u8).flat_map(|i| [0x8A, 1, i]).collect();
    assert_eq!(d.take(), want);
}

#[test]
fn every_byte_on_its_own_gives_the_same_result() {
    let cfg = WsConfig::default();
    let stream = fixed_stream();
    let whole = run_cut(cfg, &stream, &[]);
    assert_eq!(whole.1, DONE);
    let all: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(run_cut(cfg, &stream, &all), whole);
    for resumes in PAUSINGS {
        assert_eq!(
            run_paused(cfg, &stream, &all, Some(0), resumes),
            whole,
            "{resumes:?}"
        );
        assert_eq!(
            run_paused(cfg, &stream, &[], Some(0), resumes),
            whole,
            "{resumes:?}"
        );
    }
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
        for resumes in PAUSINGS {
            let paused = run_paused(cfg, &stream, &[cut], Some(0), resumes);
            assert_eq!(
                paused, whole,
                "cut at {cut}, pausing after every echo, {resumes:?}"
            );
        }
    }
    for a in (0..stream.len()).step_by(7) {
        for b in (a..stream.len()).step_by(5) {
            assert_eq!(run_cut(cfg, &stream, &[a, b]), whole, "cuts at {a}, {b}");
        }
    }
}

/// A text message in three fragments (a ping between two), with each bad sequence inserted at each
/// position: the output is the model's (nothing of a chunk with bad bytes, close 1007), whole and at
/// every single cut.
#[test]
fn invalid_utf8_anywhere_at_every_cut() {
    let cfg = WsConfig::default();
    let good = "a€b𝄞cñ".as_bytes();
    for bad in BAD {
        for at in 0..=good.len() {
            let mut data = good.to_vec();
            data.splice(at..at, bad.iter().copied());
            let ev = Ev::Msg {
                text: true,
                cuts: vec![4, 9],
                pings: vec![true, false, false, false, false],
                data,
                mask: [0x5a, 0x01, 0xfe, 0x77],
            };
            let (frames, mut m) = encode(&[ev, Ev::Ping(b"after".to_vec())], cfg.max_message_size);
            let mut stream = REQUEST.to_vec();
            stream.extend(&frames);
            stream.extend(frame(true, 8, &[0x03, 0xE8], [9, 8, 7, 6]));
            m.control(Frame::close(1000));
            let whole = run_cut(cfg, &stream, &[]);
            assert_eq!(m.failed, Some(1007), "{bad:02x?} at {at}");
            assert_eq!(whole.1, VIOLATION);
            let got = decode(&whole.0[RESPONSE.len()..]);
            assert_eq!(got, m.want, "{bad:02x?} at {at}");
            text_frames_are_utf8(&got).unwrap();
            for cut in 0..=stream.len() {
                assert_eq!(
                    run_cut(cfg, &stream, &[cut]),
                    whole,
                    "{bad:02x?} at {at}, cut at {cut}"
                );
            }
        }
    }
}

/// A text frame of two and a half chunks with characters of every width, cut in one place
/// anywhere, and every byte on its own: the same output, which is the model's.
#[test]
fn long_text_frames_at_every_cut() {
    let cfg = WsConfig::default();
    let s: String = "a€ñ𝄞".chars().cycle().take(4000).collect();
    let data = s.into_bytes();
    assert!(data.len() > 2 * TEXT_CHUNK);
    let ev = Ev::Msg {
        text: true,
        cuts: vec![TEXT_CHUNK + 1],
        pings: vec![true; 5],
        data,
        mask: [1, 0x80, 0x7f, 0xff],
    };
    let (frames, m) = encode(&[ev], cfg.max_message_size);
    let mut stream = REQUEST.to_vec();
    stream.extend(&frames);
    let whole = run_cut(cfg, &stream, &[]);
    assert_eq!(whole.1, Step::Continue);
    assert_eq!(decode(&whole.0[RESPONSE.len()..]), m.want);
    assert_eq!(m.want.len(), 5, "3 + 1 fragments and a pong");
    for cut in 0..=stream.len() {
        assert_eq!(run_cut(cfg, &stream, &[cut]), whole, "cut at {cut}");
    }
    let all: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(run_cut(cfg, &stream, &all), whole);
}

//! Frames: the streamed echo, control frames, every close code.

use super::*;
use crate::ws::{CloseCode, MAX_MESSAGE_CAP, TEXT_CHUNK};

const M: [u8; 4] = [0xa1, 0x02, 0xc3, 0x7e];

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Feed `input` to an open connection; the decoded output and the step.
fn run(input: &[u8]) -> (Vec<Frame>, Step, WsStats) {
    run_with(WsConfig::default(), input)
}

fn run_with(cfg: WsConfig, input: &[u8]) -> (Vec<Frame>, Step, WsStats) {
    let mut d = Driver::open_with(cfg);
    let step = d.feed(input);
    (frames_of(&mut d), step, d.stats)
}

/// `input` must end in a close with `code` after echoing `echoed`.
fn assert_fails(input: &[u8], code: u16, echoed: &[Frame]) {
    let (frames, step, stats) = run(input);
    let mut want = echoed.to_vec();
    want.push(Frame::close(code));
    assert_eq!(frames, want);
    assert_eq!(step, VIOLATION);
    assert_eq!(stats.closes(CloseCode::of(code)), 1);
}

#[test]
fn state_fits_in_20_bytes() {
    assert!(std::mem::size_of::<WsConn>() <= 20);
}

#[test]
fn text_is_echoed_in_one_segment_with_the_header_written_in_place() {
    let mut d = Driver::open();
    assert_eq!(d.feed(&text(b"Hello")), Step::Continue);
    assert_eq!(d.segs.len(), 1, "{:?}", d.segs);
    assert_eq!(d.segs[0], Seg::Input(4, 7)); // 2-byte header over the 4 mask bytes, 5 payload
    assert_eq!(d.take(), b"\x81\x05Hello");
    assert_eq!(d.stats.messages_in, 1);
    assert_eq!(d.stats.messages_out, 1);
    assert_eq!(d.stats.frames_in, 1);
    assert_eq!(d.stats.frames_out, 1);
}

#[test]
fn binary_of_every_length_encoding_is_echoed() {
    for n in [0usize, 1, 125, 126, 127, 65535, 65536, 200_000] {
        let payload: Vec<u8> = (0..n).map(|i| (i * 7 + i / 251) as u8).collect();
        let (frames, step, _) = run(&frame(true, 2, &payload, M));
        assert_eq!(step, Step::Continue);
        assert_eq!(frames, vec![Frame::new(true, 2, &payload)], "n={n}");
    }
}

#[test]
fn a_header_split_before_its_mask_ends_gets_a_generated_header() {
    let f = frame(true, 2, &[9; 300], M);
    let mut d = Driver::open();
    d.feed(&f[..5]);
    assert!(d.out.is_empty());
    d.feed(&f[5..]);
    assert!(matches!(d.segs[0], Seg::Bytes(ref b) if b == &[0x82, 126, 1, 44]));
    assert_eq!(frames_of(&mut d), vec![Frame::new(true, 2, &[9; 300])]);
}

#[test]
fn payload_is_streamed_as_it_arrives() {
    let payload: Vec<u8> = (0..1000).map(|i| i as u8).collect();
    let f = frame(true, 2, &payload, M);
    let mut d = Driver::open();
    d.feed(&f[..8 + 100]); // header (8) and 100 payload bytes
    assert_eq!(
        d.out.len(),
        4 + 100,
        "header and the first 100 bytes go out at once"
    );
    d.feed(&f[108..]);
    assert_eq!(frames_of(&mut d), vec![Frame::new(true, 2, &payload)]);
}

#[test]
fn fragmented_messages_are_echoed_with_the_same_framing() {
    let mut input = frame(false, 1, "héllo ".as_bytes(), M);
    input.extend(frame(false, 0, b"", M));
    input.extend(frame(true, 0, "wörld".as_bytes(), M));
    input.extend(frame(false, 2, &[1, 2], M));
    input.extend(frame(true, 0, &[3], M));
    let (frames, step, stats) = run(&input);
    assert_eq!(step, Step::Continue);
    assert_eq!(
        frames,
        vec![
            Frame::new(false, 1, "héllo ".as_bytes()),
            Frame::new(false, 0, b""),
            Frame::new(true, 0, "wörld".as_bytes()),
            Frame::new(false, 2, &[1, 2]),
            Frame::new(true, 0, &[3]),
        ]
    );
    assert_eq!(stats.messages_in, 2);
    assert_eq!(stats.frames_in, 5);
}

#[test]
fn ping_gets_a_pong_with_its_payload_even_inside_a_fragmented_message() {
    let mut input = frame(false, 1, b"ab", M);
    input.extend(frame(true, 9, b"are you there", M));
    input.extend(frame(true, 9, b"", M));
    input.extend(frame(true, 0, b"cd", M));
    let (frames, step, stats) = run(&input);
    assert_eq!(step, Step::Continue);
    assert_eq!(
        frames,
        vec![
            Frame::new(false, 1, b"ab"),
            Frame::new(true, 0xA, b"are you there"),
            Frame::new(true, 0xA, b""),
            Frame::new(true, 0, b"cd"),
        ]
    );
    assert_eq!((stats.pings_in, stats.pongs_out), (2, 2));
}

#[test]
fn pong_is_answered_with_nothing() {
    let mut input = frame(true, 0xA, b"unsolicited", M);
    input.extend(frame(false, 2, b"x", M));
    input.extend(frame(true, 0xA, b"", M));
    input.extend(frame(true, 0, b"y", M));
    let (frames, step, stats) = run(&input);
    assert_eq!(step, Step::Continue);
    assert_eq!(
        frames,
        vec![Frame::new(false, 2, b"x"), Frame::new(true, 0, b"y")]
    );
    assert_eq!(stats.pongs_in, 2);
}

#[test]
fn close_is_answered_with_its_code_and_ends_the_connection() {
    for code in [1000u16, 1001, 1003, 1011, 1014, 3000, 4999] {
        let mut input = frame(true, 8, &close_payload(code, "bye ✓".as_bytes()), M);
        input.extend(text(b"after the close: ignored"));
        let (frames, step, stats) = run(&input);
        assert_eq!(frames, vec![Frame::close(code)], "{code}");
        assert_eq!(step, DONE);
        assert_eq!(stats.closes_received, 1);
    }
    let (frames, step, stats) = run(&frame(true, 8, b"", M));
    assert_eq!(frames, vec![Frame::new(true, 8, b"")]);
    assert_eq!(step, DONE);
    assert_eq!(stats.closes(CloseCode::Empty), 1);
}

#[test]
fn a_close_split_across_inputs_is_held_until_whole() {
    let f = frame(true, 8, &close_payload(1000, b"see you"), M);
    let mut d = Driver::open();
    assert_eq!(d.feed(&f[..9]), Step::Hold { from: 6 });
    assert_eq!(d.held.len(), 3);
    assert!(d.out.is_empty());
    // The next input is the held rest of the payload with the new bytes.
    assert_eq!(d.feed(&f[9..12]), Step::Hold { from: 0 });
    assert_eq!(d.feed(&f[12..]), DONE);
    assert_eq!(frames_of(&mut d), vec![Frame::close(1000)]);
}

#[test]
fn a_close_inside_a_fragmented_message_is_answered() {
    let mut input = frame(false, 1, b"part", M);
    input.extend(frame(true, 8, &close_payload(1000, b""), M));
    let (frames, step, _) = run(&input);
    assert_eq!(
        frames,
        vec![Frame::new(false, 1, b"part"), Frame::close(1000)]
    );
    assert_eq!(step, DONE);
}

#[test]
fn bad_close_payloads_fail() {
    // One byte.
    assert_fails(&frame(true, 8, &[3], M), 1002, &[]);
    // Codes that may not be sent.
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        assert_fails(&frame(true, 8, &close_payload(code, b""), M), 1002, &[]);
    }
    // A reason that is not UTF-8.
    assert_fails(
        &frame(
            true,
            8,
            &close_payload(
                1000,
                b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
            ),
            M,
        ),
        1007,
        &[],
    );
}

#[test]
fn an_unmasked_client_frame_fails_with_1002() {
    let mut input = text(b"ok");
    input.extend(frame_raw(0x81, b"no mask", None));
    assert_fails(&input, 1002, &[Frame::new(true, 1, b"ok")]);
}

#[test]
fn reserved_bits_and_opcodes_fail_with_1002() {
    for b0 in [0xC1u8, 0xA1, 0x91, 0xF2] {
        assert_fails(&frame_raw(b0, b"x", Some(M)), 1002, &[]);
    }
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        assert_fails(&frame(true, op, b"", M), 1002, &[]);
    }
}

#[test]
fn control_frames_are_short_and_never_fragmented() {
    assert_fails(&frame(false, 9, b"ping", M), 1002, &[]);
    assert_fails(&frame(false, 8, b"", M), 1002, &[]);
    assert_fails(&frame(false, 0xA, b"", M), 1002, &[]);
    assert_fails(&frame(true, 9, &[0; 126], M), 1002, &[]);
    assert_fails(&frame(true, 0xA, &[0; 126], M), 1002, &[]);
    // 125 is fine.
    let (frames, step, _) = run(&frame(true, 9, &[7; 125], M));
    assert_eq!(step, Step::Continue);
    assert_eq!(frames, vec![Frame::new(true, 0xA, &[7; 125])]);
}

#[test]
fn continuations_need_a_message_and_messages_may_not_nest() {
    assert_fails(&frame(true, 0, b"orphan", M), 1002, &[]);
    let mut input = text(b"whole");
    input.extend(frame(false, 0, b"orphan", M));
    assert_fails(&input, 1002, &[Frame::new(true, 1, b"whole")]);
    let mut input = frame(false, 1, b"a", M);
    input.extend(frame(true, 2, b"b", M));
    assert_fails(&input, 1002, &[Frame::new(false, 1, b"a")]);
    let mut input = frame(false, 2, b"a", M);
    input.extend(frame(false, 1, b"b", M));
    assert_fails(&input, 1002, &[Frame::new(false, 2, b"a")]);
}

#[test]
fn text_across_frames_and_inputs_is_valid_utf8() {
    // "€" is e2 82 ac, "𝄞" is f0 9d 84 9e: cut inside both by frames and by inputs.
    let msg = "a€b𝄞c".as_bytes();
    let mut input = frame(false, 1, &msg[..2], M);
    input.extend(frame(false, 0, &msg[2..6], M));
    input.extend(frame(true, 0, &msg[6..], M));
    for cut in 0..input.len() {
        let mut d = Driver::open();
        d.feed_split(&input, &[cut]);
        assert_eq!(d.step, Step::Continue, "cut {cut}");
        let frames = frames_of(&mut d);
        assert_text_frames_utf8(&frames);
        let payload: Vec<u8> = frames.into_iter().flat_map(|f| f.payload).collect();
        assert_eq!(payload, msg);
    }
}

/// Each echo frame of a text message is UTF-8 on its own.
fn assert_text_frames_utf8(frames: &[Frame]) {
    let mut text = false;
    for f in frames {
        match f.op {
            1 => text = true,
            2 => text = false,
            _ => {}
        }
        if f.op < 8 && text {
            assert!(
                std::str::from_utf8(&f.payload).is_ok(),
                "an echo text frame that is not UTF-8: {f:02x?}"
            );
        }
    }
}

#[test]
fn invalid_utf8_is_never_echoed_and_closes_1007() {
    // Invalid in the first frame: nothing of it is echoed, the close comes at once.
    let mut input = frame(false, 1, b"ab\xffcd", M);
    input.extend(frame(true, 0, b"never echoed", M));
    assert_fails(&input, 1007, &[]);
    // Surrogates, overlong forms, code points past U+10FFFF, a message ending inside a character.
    for bad in [
        &b"\xed\xa0\x80"[..],
        b"\xc0\xaf",
        b"\xf4\x90\x80\x80",
        b"\xce\xba\xe1\xbd",
        b"ok \xff\xfe bad",
    ] {
        assert_fails(&text(bad), 1007, &[]);
    }
    // The valid frames before the bad one were echoed; nothing of the bad one is.
    let mut input = frame(false, 1, "good €".as_bytes(), M);
    input.extend(frame(true, 9, b"ping", M));
    input.extend(frame(true, 0, b"b\xffd", M));
    assert_fails(
        &input,
        1007,
        &[
            Frame::new(false, 1, "good €".as_bytes()),
            Frame::new(true, 0xA, b"ping"),
        ],
    );
    // A character cut by a frame and continued wrongly: its start was never echoed.
    let mut input = frame(false, 1, b"\xe2\x82", M);
    input.extend(frame(true, 0, b"x", M));
    assert_fails(&input, 1007, &[Frame::new(false, 1, b"")]);
    // Binary is never checked.
    let (_, step, _) = run(&frame(true, 2, b"\xff\xfe", M));
    assert_eq!(step, Step::Continue);
}

#[test]
fn a_text_message_ending_inside_a_character_closes_1007() {
    let mut input = frame(false, 1, b"ok\xe2\x82", M);
    input.extend(frame(true, 0, b"", M));
    assert_fails(&input, 1007, &[Frame::new(false, 1, b"ok")]);
}

#[test]
fn a_character_cut_by_the_clients_fragments_moves_to_the_next_echo_frame() {
    let mut input = frame(false, 1, b"ab\xe2", M);
    input.extend(frame(true, 9, b"ping!", M));
    input.extend(frame(false, 0, b"\x82", M));
    input.extend(frame(true, 0, b"\xac!", M));
    let (frames, step, stats) = run(&input);
    assert_eq!(step, Step::Continue);
    assert_eq!(
        frames,
        vec![
            Frame::new(false, 1, b"ab"),
            Frame::new(true, 0xA, b"ping!"),
            Frame::new(false, 0, b""),
            Frame::new(true, 0, "€!".as_bytes()),
        ]
    );
    assert_eq!((stats.frames_in, stats.frames_out), (4, 4));
    assert_eq!((stats.messages_in, stats.messages_out), (1, 1));
}

#[test]
fn a_text_chunk_is_held_until_whole_then_checked() {
    // Invalid: nothing is echoed at all.
    let f = text(b"valid start \xff and the rest");
    let mut d = Driver::open();
    assert_eq!(d.feed(&f[..10]), Step::Hold { from: 6 });
    assert!(d.out.is_empty());
    assert_eq!(d.feed(&f[10..20]), Step::Hold { from: 0 }); // the bad byte is in here
    assert!(d.out.is_empty());
    assert_eq!(d.feed(&f[20..]), VIOLATION);
    assert_eq!(frames_of(&mut d), vec![Frame::close(1007)]);
    // Valid: echoed once whole, with a generated header.
    let f = text("valid €".as_bytes());
    let mut d = Driver::open();
    assert_eq!(d.feed(&f[..10]), Step::Hold { from: 6 });
    assert_eq!(d.feed(&f[10..]), Step::Continue);
    assert!(matches!(d.segs[0], Seg::Bytes(ref b) if b == &[0x81, 9]));
    assert_eq!(
        frames_of(&mut d),
        vec![Frame::new(true, 1, "valid €".as_bytes())]
    );
}

#[test]
fn long_text_frames_are_echoed_in_4_kib_fragments_ending_on_characters() {
    assert_eq!(TEXT_CHUNK, 4096);
    // ASCII: cut at 4096 exactly.
    for (n, parts) in [(4096usize, 1usize), (4097, 2), (8192, 2), (10_000, 3)] {
        let msg: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
        let (frames, step, stats) = run(&text(&msg));
        assert_eq!(step, Step::Continue);
        assert_eq!(frames.len(), parts, "n={n}");
        assert_eq!(stats.frames_out, parts as u64);
        assert_eq!(stats.messages_out, 1);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.op, if i == 0 { 1 } else { 0 });
            assert_eq!(f.fin, i + 1 == parts);
            assert_eq!(f.payload, msg[i * 4096..((i + 1) * 4096).min(n)]);
        }
    }
    // "€" is 3 bytes: 4096 cuts the 1366th; its start goes with the next fragment. A non-final
    // client frame and the final one after it.
    let msg = "€".repeat(2000);
    let msg = msg.as_bytes();
    let mut input = frame(false, 1, &msg[..5000], M);
    input.extend(frame(true, 0, &msg[5000..], M));
    let (frames, step, _) = run(&input);
    assert_eq!(step, Step::Continue);
    let lens: Vec<(bool, u8, usize)> = frames
        .iter()
        .map(|f| (f.fin, f.op, f.payload.len()))
        .collect();
    // 4096 = 3·1365 + 1; 904 + 1 = 905 = 3·301 + 2; the second client frame starts with 2 + 998.
    assert_eq!(
        lens,
        [(false, 1, 4095), (false, 0, 903), (true, 0, 1002)],
        "{lens:?}"
    );
    assert_text_frames_utf8(&frames);
    let back: Vec<u8> = frames.into_iter().flat_map(|f| f.payload).collect();
    assert_eq!(back, msg);
    // Cut in inputs anywhere: the same frames.
    let mut whole = Driver::open();
    whole.feed(&input);
    let want = whole.take();
    for cut in (0..input.len()).step_by(97) {
        let mut d = Driver::open();
        d.feed_split(&input, &[cut, cut + 4000]);
        assert_eq!(d.take(), want, "cut at {cut}");
    }
}

#[test]
fn messages_over_the_limit_close_1009_before_their_frame_is_echoed() {
    let cfg = WsConfig {
        max_message_size: 10,
        ..WsConfig::default()
    };
    // At the limit: fine.
    let (_, step, _) = run_with(cfg, &text(b"0123456789"));
    assert_eq!(step, Step::Continue);
    // One frame over.
    let (frames, step, stats) = run_with(cfg, &text(b"0123456789A"));
    assert_eq!(frames, vec![Frame::close(1009)]);
    assert_eq!(step, VIOLATION);
    assert_eq!(stats.closes(CloseCode::TooBig), 1);
    // Over across fragments: the earlier fragments were echoed.
    let mut input = frame(false, 2, b"012345", M);
    input.extend(frame(true, 9, b"ping is not counted", M));
    input.extend(frame(true, 0, b"6789A", M));
    let (frames, step, _) = run_with(cfg, &input);
    assert_eq!(step, VIOLATION);
    assert_eq!(
        frames,
        vec![
            Frame::new(false, 2, b"012345"),
            Frame::new(true, 0xA, b"ping is not counted"),
            Frame::close(1009)
        ]
    );
    // The count starts again with each message.
    let mut input = text(b"0123456789");
    input.extend(text(b"0123456789"));
    let (_, step, _) = run_with(cfg, &input);
    assert_eq!(step, Step::Continue);
}

#[test]
fn huge_64_bit_lengths_close_1009_and_the_top_bit_1002() {
    let cfg = WsConfig {
        max_message_size: u64::MAX,
        ..WsConfig::default()
    };
    let mut h = vec![0x82, 0xFF];
    h.extend_from_slice(&(MAX_MESSAGE_CAP + 1).to_be_bytes());
    let (frames, step, _) = run_with(cfg, &h);
    assert_eq!((frames, step), (vec![Frame::close(1009)], VIOLATION));
    let mut h = vec![0x82, 0xFF];
    h.extend_from_slice(&(1u64 << 63).to_be_bytes());
    let (frames, step, _) = run_with(cfg, &h);
    assert_eq!((frames, step), (vec![Frame::close(1002)], VIOLATION));
    // MAX_MESSAGE_CAP itself is accepted (the header is echoed as soon as it is whole).
    let mut h = vec![0x82, 0xFF];
    h.extend_from_slice(&MAX_MESSAGE_CAP.to_be_bytes());
    h.extend_from_slice(&M);
    let mut d = Driver::open_with(cfg);
    assert_eq!(d.feed(&h), Step::Continue);
    let mut want = vec![0x82, 127];
    want.extend_from_slice(&MAX_MESSAGE_CAP.to_be_bytes());
    assert_eq!(d.take(), want);
}

#[test]
fn quiet_sockets_get_a_ping_unless_an_echo_is_half_sent() {
    let mut d = Driver::new(WsConfig::default());
    assert!(!d.quiet(), "no ping before the handshake");
    let mut d = Driver::open();
    assert!(d.quiet());
    assert_eq!(d.take(), [0x89, 0]);
    // Half a frame header: nothing was echoed yet, a ping is fine.
    let f = frame(true, 2, b"abcdef", M);
    d.feed(&f[..3]);
    assert!(d.quiet());
    // Header and part of the payload: the echo frame is open.
    d.feed(&f[3..8]);
    assert!(!d.quiet());
    d.feed(&f[8..]);
    assert!(d.quiet());
    assert_eq!(
        frames_of(&mut d),
        vec![
            Frame::new(true, 9, b""),
            Frame::new(true, 2, b"abcdef"),
            Frame::new(true, 9, b"")
        ]
    );
    assert_eq!(d.stats.pings_out, 3);
    // A pong in answer counts and produces nothing.
    d.feed(&frame(true, 0xA, b"", M));
    assert_eq!(d.stats.pongs_in, 1);
    assert!(d.take().is_empty());
    // Inside a text frame no echo frame is ever half sent: its chunk is held.
    let f = text(b"abcdef");
    d.feed(&f[..8]);
    assert!(!d.conn.mid_echo());
    assert!(d.quiet());
    d.feed(&f[8..]);
    assert_eq!(
        frames_of(&mut d),
        vec![Frame::new(true, 9, b""), Frame::new(true, 1, b"abcdef")]
    );
}

#[test]
fn the_server_closes_with_1001_when_it_can() {
    let mut d = Driver::new(WsConfig::default());
    d.server_close();
    assert!(d.take().is_empty(), "nothing before the handshake");
    let mut d = Driver::open();
    d.server_close();
    assert_eq!(frames_of(&mut d), vec![Frame::close(1001)]);
    assert_eq!(d.stats.closes(CloseCode::GoingAway), 1);
    assert!(!d.conn.is_open());
    // Later input is ignored.
    let mut rec = Rec::default();
    let ctx = Ctx { date: DATE };
    let step = d
        .conn
        .on_input(&d.cfg, &ctx, &mut text(b"x"), &mut rec, &mut d.stats);
    assert_eq!(step, DONE);
    assert!(rec.segs.is_empty());
    // Mid-echo: no close frame can be sent.
    let mut d = Driver::open();
    d.feed(&frame(true, 2, b"abcdef", M)[..9]);
    d.take();
    assert!(d.conn.mid_echo());
    d.server_close();
    assert!(d.take().is_empty());
    // Inside a text frame it can (the chunk was held, nothing of it sent).
    let mut d = Driver::open();
    d.feed(&text(b"abcdef")[..9]);
    d.server_close();
    assert_eq!(frames_of(&mut d), vec![Frame::close(1001)]);
}

#[test]
fn peer_fin_is_clean_between_messages_only() {
    let mut d = Driver::open();
    d.feed(&text(b"x"));
    assert_eq!(d.peer_fin(), DONE);
    let mut d = Driver::open();
    d.feed(&text(b"x")[..1]);
    assert_eq!(d.peer_fin(), VIOLATION, "inside a header");
    let mut d = Driver::open();
    d.feed(&frame(false, 1, b"x", M));
    assert_eq!(d.peer_fin(), VIOLATION, "inside a fragmented message");
    let mut d = Driver::open();
    d.feed(&frame(true, 8, b"", M));
    assert_eq!(d.peer_fin(), DONE, "after the close handshake");
    assert!(frames_of(&mut d) == vec![Frame::new(true, 8, b"")]);
}

#[test]
fn stats_add_up() {
    let (_, _, a) = run(&text(b"x"));
    let mut sum = WsStats::default();
    sum.add(&a);
    sum.add(&a);
    assert_eq!(sum.upgrades, 2);
    assert_eq!(sum.messages_in, 2);
    assert_eq!(sum.frames_out, 2);
    assert_eq!(CloseCode::ALL.len(), CloseCode::COUNT);
    let labels: Vec<_> = CloseCode::ALL.iter().map(|c| c.label()).collect();
    assert_eq!(
        labels,
        ["1000", "1001", "1002", "1007", "1009", "other", "none"]
    );
}

//! Streaming UTF-8 validation of a text message whose bytes arrive in pieces (text chunks of its
//! frames), with simdutf8. The only state is the start of a character cut at the end of a piece
//! (≤ 3 bytes); the echo sends those bytes with the next piece (see `frame.rs`).

use simdutf8::compat::from_utf8;

use super::WsConn;

/// Length of the UTF-8 sequence a lead byte starts (the carry only ever starts with a valid one).
fn seq_len(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

impl WsConn {
    /// Check the next piece of the current text message. `false`: the message is not UTF-8. A piece
    /// that ends inside a character keeps its start in the carry; whether the message may end there
    /// is [`WsConn::utf8_complete`]'s question.
    pub(super) fn utf8_feed(&mut self, piece: &[u8]) -> bool {
        let mut rest = piece;
        let cl = self.carry_len();
        if cl > 0 {
            // Finish the cut character first, with as many bytes as it still needs.
            let take = seq_len(self.carry[0]).saturating_sub(cl).min(rest.len());
            let mut tmp = [0u8; 4];
            tmp[..cl].copy_from_slice(&self.carry[..cl]);
            tmp[cl..cl + take].copy_from_slice(&rest[..take]);
            match from_utf8(&tmp[..cl + take]) {
                Ok(_) => self.set_carry_len(0),
                Err(e) if e.error_len().is_some() => return false,
                Err(_) => {
                    // Still unfinished: the whole piece went into the carry (cl + take ≤ 3).
                    self.carry[cl..cl + take].copy_from_slice(&rest[..take]);
                    self.set_carry_len(cl + take);
                    return true;
                }
            }
            rest = &rest[take..];
        }
        match from_utf8(rest) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                let tail = &rest[e.valid_up_to()..];
                if tail.len() > 3 {
                    return false; // never: an unfinished character has at most 3 bytes
                }
                self.carry[..tail.len()].copy_from_slice(tail);
                self.set_carry_len(tail.len());
                true
            }
        }
    }

    /// The text message may end here: no character is cut.
    pub(super) fn utf8_complete(&self) -> bool {
        self.carry_len() == 0
    }
}

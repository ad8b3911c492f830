//! Heartbeat content: a pure function of (connection id, sequence number, byte offset), so that every
//! echoed byte is checked without keeping a copy of what was sent.
//!
//! Bytes 0..4 are the connection id (little endian), bytes 4..8 the sequence number, and every later
//! byte comes from a 64-bit mix of both, so a byte from another connection, another heartbeat or
//! another position does not match (except by chance for a single byte, never for a whole message).

/// The smallest message: the id and the sequence number.
pub const MIN_SIZE: usize = 8;

fn mix(mut z: u64) -> u64 {
    // splitmix64 finaliser.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 8-byte word at word index `w` of message (`conn`, `seq`).
fn word(conn: u32, seq: u32, w: usize) -> [u8; 8] {
    let key = (u64::from(conn) << 32) | u64::from(seq);
    if w == 0 {
        key.rotate_left(32).to_le_bytes() // conn in bytes 0..4, seq in 4..8
    } else {
        mix(key ^ (w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes()
    }
}

/// Writes message (`conn`, `seq`) into `buf` (its whole length).
pub fn fill(buf: &mut [u8], conn: u32, seq: u32) {
    for (w, chunk) in buf.chunks_mut(8).enumerate() {
        let bytes = word(conn, seq, w);
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Whether `data` equals bytes `offset..offset + data.len()` of message (`conn`, `seq`).
pub fn verify(data: &[u8], conn: u32, seq: u32, offset: usize) -> bool {
    let mut pos = offset;
    let mut rest = data;
    while !rest.is_empty() {
        let w = pos / 8;
        let within = pos % 8;
        let bytes = word(conn, seq, w);
        let take = (8 - within).min(rest.len());
        if rest[..take] != bytes[within..within + take] {
            return false;
        }
        rest = &rest[take..];
        pos += take;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_holds_id_and_sequence() {
        let mut b = [0u8; 16];
        fill(&mut b, 0x0102_0304, 7);
        assert_eq!(&b[..4], &0x0102_0304u32.to_le_bytes());
        assert_eq!(&b[4..8], &7u32.to_le_bytes());
    }

    #[test]
    fn verifies_any_split() {
        let mut b = vec![0u8; 100];
        fill(&mut b, 42, 9);
        for cut in 0..=b.len() {
            assert!(verify(&b[..cut], 42, 9, 0));
            assert!(verify(&b[cut..], 42, 9, cut));
        }
    }

    #[test]
    fn detects_wrong_connection_sequence_or_byte() {
        let mut b = vec![0u8; 64];
        fill(&mut b, 42, 9);
        assert!(!verify(&b, 43, 9, 0));
        assert!(!verify(&b, 42, 10, 0));
        assert!(!verify(&b[8..], 42, 9, 16));
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 1;
            assert!(!verify(&c, 42, 9, 0), "flip at {i} not detected");
        }
    }
}

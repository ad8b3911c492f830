//! The protocol seam. Engines hand every received chunk to the protocol and do what it says; they never
//! know which protocol runs. Echo is the first (and, for now, only) protocol: its verdict is always
//! "send these same bytes back", which lets the engines send straight from the receive buffer.
//! HTTP/1.1 keep-alive, WebSocket and MQTT keep-alive will add verdicts that reply with other bytes.

/// What to do with a received chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the received bytes back, unchanged and in order.
    Echo,
    /// Close the connection.
    Close,
}

/// The protocols ringhold speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Echo,
}

impl Protocol {
    pub fn on_input(self, _input: &[u8]) -> Verdict {
        match self {
            Protocol::Echo => Verdict::Echo,
        }
    }
}

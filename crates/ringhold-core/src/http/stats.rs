//! Per-shard HTTP counters: plain integers the protocol adds to while it handles input (no allocation,
//! nothing shared). The shard keeps one [`HttpStats`] and flushes it with its other counters.

/// Request method, as counted. Everything but the four the server answers is [`Method::Other`] (and
/// gets 501).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Other,
}

impl Method {
    pub const COUNT: usize = 5;
    pub const ALL: [Method; Self::COUNT] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Other,
    ];

    /// The `method` label of `ringhold_http_responses_total`.
    pub fn label(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Other => "other",
        }
    }

    pub(crate) fn from_token(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            _ => Method::Other,
        }
    }
}

/// A protocol error: the request broke HTTP/1.1 or a limit. The server answers with the status (when
/// no response has started yet) and closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum HttpError {
    /// 400: malformed request line, headers, framing, `?length`, or chunked body.
    BadRequest,
    /// 413: body over `max_body_bytes`.
    PayloadTooLarge,
    /// 431: request head over `max_header_bytes` (or more than 100 header fields).
    HeaderTooLarge,
    /// 501: a method other than GET/HEAD/POST/PUT, or a transfer coding other than `chunked`.
    NotImplemented,
    /// 505: an HTTP version other than 1.0 and 1.1.
    VersionNotSupported,
}

impl HttpError {
    pub const COUNT: usize = 5;
    pub const ALL: [HttpError; Self::COUNT] = [
        HttpError::BadRequest,
        HttpError::PayloadTooLarge,
        HttpError::HeaderTooLarge,
        HttpError::NotImplemented,
        HttpError::VersionNotSupported,
    ];

    pub fn status(self) -> u16 {
        match self {
            HttpError::BadRequest => 400,
            HttpError::PayloadTooLarge => 413,
            HttpError::HeaderTooLarge => 431,
            HttpError::NotImplemented => 501,
            HttpError::VersionNotSupported => 505,
        }
    }

    /// The `status` label of `ringhold_http_protocol_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            HttpError::BadRequest => "400",
            HttpError::PayloadTooLarge => "413",
            HttpError::HeaderTooLarge => "431",
            HttpError::NotImplemented => "501",
            HttpError::VersionNotSupported => "505",
        }
    }
}

/// Status classes of final responses (index 0 = 2xx). Interim 1xx responses are counted apart, in
/// [`HttpStats::continues`].
pub const STATUS_CLASS_LABELS: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// Counters of one shard's HTTP connections. Add with [`HttpStats::add`]; all plain `u64`s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Final responses sent, by request method ([`Method`] as index; a head too broken to have a
    /// method counts as `Other`) and status class ([`STATUS_CLASS_LABELS`] index).
    pub responses: [[u64; STATUS_CLASS_LABELS.len()]; Method::COUNT],
    /// Protocol errors by [`HttpError`] index, including those found after a response had started
    /// (a bad or oversized chunked body: the connection is closed without an answer).
    pub protocol_errors: [u64; HttpError::COUNT],
    /// `100 Continue` interim responses sent.
    pub continues: u64,
    /// Requests cut short by the peer's FIN (in the middle of a head or body).
    pub truncated: u64,
}

impl HttpStats {
    pub(crate) fn response(&mut self, method: Method, status: u16) {
        let class = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        self.responses[method as usize][class] += 1;
    }

    pub(crate) fn error(&mut self, e: HttpError) {
        self.protocol_errors[e as usize] += 1;
    }

    /// Final responses to requests with `method`, all statuses.
    pub fn requests(&self, method: Method) -> u64 {
        self.responses[method as usize].iter().sum()
    }

    /// Adds `other` into `self` (a shard's connections into the shard's total, or shards together).
    pub fn add(&mut self, other: &HttpStats) {
        for (a, b) in self.responses.iter_mut().zip(&other.responses) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        for (x, y) in self.protocol_errors.iter_mut().zip(&other.protocol_errors) {
            *x += y;
        }
        self.continues += other.continues;
        self.truncated += other.truncated;
    }
}

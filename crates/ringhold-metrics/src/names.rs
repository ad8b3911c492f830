//! Metric names and their HELP text, in one place (Prometheus conventions: base units, `_total` only on
//! counters). `describe()` registers the HELP lines with the installed recorder.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub const CONNECTIONS_ACTIVE: &str = "ringhold_connections_active";
pub const ACCEPTS: &str = "ringhold_accepts_total";
pub const CLOSES: &str = "ringhold_closes_total";
pub const REJECTED: &str = "ringhold_rejected_total";
pub const BYTES_RECEIVED: &str = "ringhold_bytes_received_total";
pub const BYTES_SENT: &str = "ringhold_bytes_sent_total";
/// A gauge, so it must not end in `_total` (`promtool check metrics` rejects that).
pub const BUFFERS_CAPACITY: &str = "ringhold_buffers_capacity";
pub const BUFFERS_IN_USE: &str = "ringhold_buffers_in_use";
pub const BUFFER_EXHAUSTED: &str = "ringhold_buffer_exhausted_total";
pub const URING_SUBMITS: &str = "ringhold_uring_submits_total";
pub const URING_COMPLETIONS: &str = "ringhold_uring_completions_total";
pub const THROTTLED: &str = "ringhold_throttled_connections";
pub const RATE_LIMIT_PAUSES: &str = "ringhold_rate_limit_pauses_total";
pub const ACCEPTS_DEFERRED: &str = "ringhold_accepts_deferred_total";
pub const LINGERING_CLOSES: &str = "ringhold_lingering_closes_total";
pub const LINGER_TIMEOUTS: &str = "ringhold_linger_timeouts_total";
pub const WAITING_FOR_BUFFER: &str = "ringhold_connections_waiting_for_buffer";
pub const RESERVE_PAUSES: &str = "ringhold_buffer_reserve_pauses_total";
pub const PARKED: &str = "ringhold_connections_parked";
pub const PARKS: &str = "ringhold_parks_total";
pub const OUTPUT_PAUSES: &str = "ringhold_output_pauses_total";
pub const HTTP_RESPONSES: &str = "ringhold_http_responses_total";
pub const HTTP_PROTOCOL_ERRORS: &str = "ringhold_http_protocol_errors_total";
pub const HTTP_CONTINUES: &str = "ringhold_http_continues_total";
pub const HTTP_TRUNCATED: &str = "ringhold_http_truncated_total";
pub const WS_UPGRADES: &str = "ringhold_ws_upgrades_total";
pub const WS_REJECTED: &str = "ringhold_ws_rejected_total";
pub const WS_FRAMES: &str = "ringhold_ws_frames_total";
pub const WS_MESSAGES: &str = "ringhold_ws_messages_total";
pub const WS_PINGS: &str = "ringhold_ws_pings_total";
pub const WS_PONGS: &str = "ringhold_ws_pongs_total";
pub const WS_CLOSES_SENT: &str = "ringhold_ws_closes_sent_total";
pub const WS_CLOSES_RECEIVED: &str = "ringhold_ws_closes_received_total";
pub const RESIDENT_MEMORY: &str = "ringhold_process_resident_memory_bytes";
pub const RESIDENT_PER_CONNECTION: &str = "ringhold_resident_bytes_per_connection";
pub const BUILD_INFO: &str = "ringhold_build_info";
/// Requests for /metrics served by the exporter.
pub const SCRAPES: &str = "ringhold_metrics_scrapes_total";

/// Every metric name ringhold exports, for tests and docs.
pub const ALL: [&str; 37] = [
    CONNECTIONS_ACTIVE,
    ACCEPTS,
    CLOSES,
    REJECTED,
    BYTES_RECEIVED,
    BYTES_SENT,
    BUFFERS_CAPACITY,
    BUFFERS_IN_USE,
    BUFFER_EXHAUSTED,
    URING_SUBMITS,
    URING_COMPLETIONS,
    THROTTLED,
    RATE_LIMIT_PAUSES,
    ACCEPTS_DEFERRED,
    LINGERING_CLOSES,
    LINGER_TIMEOUTS,
    WAITING_FOR_BUFFER,
    RESERVE_PAUSES,
    PARKED,
    PARKS,
    OUTPUT_PAUSES,
    HTTP_RESPONSES,
    HTTP_PROTOCOL_ERRORS,
    HTTP_CONTINUES,
    HTTP_TRUNCATED,
    WS_UPGRADES,
    WS_REJECTED,
    WS_FRAMES,
    WS_MESSAGES,
    WS_PINGS,
    WS_PONGS,
    WS_CLOSES_SENT,
    WS_CLOSES_RECEIVED,
    RESIDENT_MEMORY,
    RESIDENT_PER_CONNECTION,
    BUILD_INFO,
    SCRAPES,
];

// `ringhold load` (one process of a load fleet). Prefixed `ringhold_load_` so that a Prometheus that
// scrapes servers and load generators keeps them apart (and the server dashboard's variables do not
// list load generators).

/// Connections of this load generator by state (`waiting`, `connecting`, `open`, `failed`, `closed`);
/// the states add up to the connections it was asked for.
pub const LOAD_CONNECTIONS: &str = "ringhold_load_connections";
pub const LOAD_CONNECTIONS_OPENED: &str = "ringhold_load_connections_opened_total";
pub const LOAD_HEARTBEATS_SENT: &str = "ringhold_load_heartbeats_sent_total";
pub const LOAD_HEARTBEATS_ECHOED: &str = "ringhold_load_heartbeats_echoed_total";
pub const LOAD_HEARTBEATS_LATE: &str = "ringhold_load_heartbeats_late_total";
pub const LOAD_HEARTBEATS_OUTSTANDING: &str = "ringhold_load_heartbeats_outstanding";
pub const LOAD_FAILURES: &str = "ringhold_load_failures_total";
pub const LOAD_BYTES_SENT: &str = "ringhold_load_bytes_sent_total";
pub const LOAD_BYTES_RECEIVED: &str = "ringhold_load_bytes_received_total";
/// A histogram: `_bucket{le}`, `_sum` and `_count` series.
pub const LOAD_LATENCY: &str = "ringhold_load_latency_seconds";
pub const LOAD_RESIDENT_MEMORY: &str = "ringhold_load_resident_memory_bytes";
pub const LOAD_BUILD_INFO: &str = "ringhold_load_build_info";

/// Upper bounds (seconds) of the latency histogram's buckets: 100 µs to 10 s (the echo timeout is
/// 5 s by default), about three per decade.
pub const LOAD_LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Every metric family `ringhold load --metrics-listen` exports (histogram by its family name).
pub const ALL_LOAD: [&str; 13] = [
    LOAD_CONNECTIONS,
    LOAD_CONNECTIONS_OPENED,
    LOAD_HEARTBEATS_SENT,
    LOAD_HEARTBEATS_ECHOED,
    LOAD_HEARTBEATS_LATE,
    LOAD_HEARTBEATS_OUTSTANDING,
    LOAD_FAILURES,
    LOAD_BYTES_SENT,
    LOAD_BYTES_RECEIVED,
    LOAD_LATENCY,
    LOAD_RESIDENT_MEMORY,
    LOAD_BUILD_INFO,
    SCRAPES,
];

pub(crate) fn describe() {
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        Unit::Count,
        "Open client connections on this shard."
    );
    describe_counter!(ACCEPTS, Unit::Count, "Connections accepted by this shard.");
    describe_counter!(
        CLOSES,
        Unit::Count,
        "Connections closed by this shard, by reason (peer_closed, reset, idle_timeout, error, shutdown, limit, send_timeout, protocol_error, buffer_pressure); counted when the close starts."
    );
    describe_counter!(
        REJECTED,
        Unit::Count,
        "Connections refused right after accept, by reason (max_connections, fd_limit, fixed_file_table_full, shutdown)."
    );
    describe_counter!(
        BYTES_RECEIVED,
        Unit::Bytes,
        "Payload bytes received from clients."
    );
    describe_counter!(
        BYTES_SENT,
        Unit::Bytes,
        "Payload bytes sent (echoed) to clients."
    );
    describe_gauge!(
        BUFFERS_CAPACITY,
        Unit::Count,
        "Receive buffers owned by this shard, free or in use."
    );
    describe_gauge!(
        BUFFERS_IN_USE,
        Unit::Count,
        "Receive buffers holding bytes not yet echoed (the rest are free or lent to the kernel)."
    );
    describe_counter!(
        BUFFER_EXHAUSTED,
        Unit::Count,
        "Times a receive found no free buffer (ENOBUFS on io_uring, an empty pool on epoll)."
    );
    describe_counter!(
        URING_SUBMITS,
        Unit::Count,
        "io_uring submission queue entries submitted (0 on epoll)."
    );
    describe_counter!(
        URING_COMPLETIONS,
        Unit::Count,
        "io_uring completion queue entries reaped (0 on epoll)."
    );
    describe_gauge!(
        THROTTLED,
        Unit::Count,
        "Connections currently paused by --rate-limit or --message-rate."
    );
    describe_counter!(
        RATE_LIMIT_PAUSES,
        Unit::Count,
        "Times a connection was paused by a rate limit."
    );
    describe_counter!(
        ACCEPTS_DEFERRED,
        Unit::Count,
        "Times accepting was deferred by --max-conn-rate."
    );
    describe_counter!(
        LINGERING_CLOSES,
        Unit::Count,
        "Closes the server started that shut the write side down and read until the peer's FIN (lingering close)."
    );
    describe_counter!(
        LINGER_TIMEOUTS,
        Unit::Count,
        "Lingering closes that ended because the peer stayed quiet for --linger-timeout instead of sending FIN."
    );
    describe_gauge!(
        WAITING_FOR_BUFFER,
        Unit::Count,
        "Connections waiting for a free receive buffer."
    );
    describe_counter!(
        RESERVE_PAUSES,
        Unit::Count,
        "Times a connection holding buffers stopped reading early because the shard's buffer pool ran low (the reserve is kept for connections holding none)."
    );
    describe_gauge!(
        PARKED,
        Unit::Count,
        "io_uring: connections parked (quiet for --park-after: waiting on a readiness poll instead of an armed receive; 0 on epoll)."
    );
    describe_counter!(
        PARKS,
        Unit::Count,
        "io_uring: times a quiet connection was parked (0 on epoll)."
    );
    describe_counter!(
        OUTPUT_PAUSES,
        Unit::Count,
        "Times a connection's protocol stopped between pipelined requests because the answers queued for the peer reached its output budget (--pending-buffers generated slots); the rest waits until they are sent."
    );
    describe_counter!(
        HTTP_RESPONSES,
        Unit::Count,
        "--protocol http: final responses sent, by request method and status class."
    );
    describe_counter!(
        HTTP_PROTOCOL_ERRORS,
        Unit::Count,
        "--protocol http: requests refused for breaking HTTP/1.1, by the status answered (400, 413, 431, 501, 505)."
    );
    describe_counter!(
        HTTP_CONTINUES,
        Unit::Count,
        "--protocol http: 100 Continue interim responses sent."
    );
    describe_counter!(
        HTTP_TRUNCATED,
        Unit::Count,
        "--protocol http: requests cut short by the client's FIN."
    );
    describe_counter!(
        WS_UPGRADES,
        Unit::Count,
        "--protocol websocket: handshakes answered with 101."
    );
    describe_counter!(
        WS_REJECTED,
        Unit::Count,
        "--protocol websocket: handshakes refused, by status (400 bad handshake, 426 not an upgrade, 431 head too large)."
    );
    describe_counter!(
        WS_FRAMES,
        Unit::Count,
        "--protocol websocket: frames received (in) and sent (out)."
    );
    describe_counter!(
        WS_MESSAGES,
        Unit::Count,
        "--protocol websocket: data messages received whole (in) and echoed whole (out)."
    );
    describe_counter!(
        WS_PINGS,
        Unit::Count,
        "--protocol websocket: pings received (in) and sent to quiet clients (out)."
    );
    describe_counter!(
        WS_PONGS,
        Unit::Count,
        "--protocol websocket: pongs received (in) and sent (out)."
    );
    describe_counter!(
        WS_CLOSES_SENT,
        Unit::Count,
        "--protocol websocket: close frames sent, by code (1000, 1001, 1002, 1007, 1009, other, none)."
    );
    describe_counter!(
        WS_CLOSES_RECEIVED,
        Unit::Count,
        "--protocol websocket: close frames received."
    );
    describe_gauge!(
        RESIDENT_MEMORY,
        Unit::Bytes,
        "Resident set size of the ringhold process (/proc/self/statm)."
    );
    describe_gauge!(
        RESIDENT_PER_CONNECTION,
        Unit::Bytes,
        "Process resident set size divided by open connections (NaN with no connection)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; labels give the engine and the ringhold version."
    );
    describe_counter!(
        SCRAPES,
        Unit::Count,
        "Requests for /metrics served by the exporter."
    );
    describe_load();
}

fn describe_load() {
    describe_gauge!(
        LOAD_CONNECTIONS,
        Unit::Count,
        "Connections of this load generator by state: waiting (not started), connecting, open, failed, closed (held to the end)."
    );
    describe_counter!(
        LOAD_CONNECTIONS_OPENED,
        Unit::Count,
        "Connects that succeeded."
    );
    describe_counter!(
        LOAD_HEARTBEATS_SENT,
        Unit::Count,
        "Heartbeats sent (http: GET requests; websocket: binary messages)."
    );
    describe_counter!(
        LOAD_HEARTBEATS_ECHOED,
        Unit::Count,
        "Heartbeats whose echo (http: answer) came back complete and intact."
    );
    describe_counter!(
        LOAD_HEARTBEATS_LATE,
        Unit::Count,
        "Heartbeats not sent because the previous echo was still outstanding (latency is corrected for them)."
    );
    describe_gauge!(
        LOAD_HEARTBEATS_OUTSTANDING,
        Unit::Count,
        "Heartbeats waiting for their echo now."
    );
    describe_counter!(
        LOAD_FAILURES,
        Unit::Count,
        "Failed connections by cause (refused, reset, timed_out, addr_not_available, fd_limit, mismatch, bad_status (http), closed_by_server, no_memory, handshake (websocket), other)."
    );
    describe_counter!(LOAD_BYTES_SENT, Unit::Bytes, "Heartbeat bytes sent.");
    describe_counter!(LOAD_BYTES_RECEIVED, Unit::Bytes, "Echoed bytes received.");
    describe_histogram!(
        LOAD_LATENCY,
        Unit::Seconds,
        "Heartbeat round trip from its scheduled send time to its complete echo (corrected for coordinated omission)."
    );
    describe_gauge!(
        LOAD_RESIDENT_MEMORY,
        Unit::Bytes,
        "Resident set size of the ringhold load process (/proc/self/statm)."
    );
    describe_gauge!(
        LOAD_BUILD_INFO,
        "Always 1; labels give the ringhold version, this process's part of the fleet (index/count) and its --protocol."
    );
}

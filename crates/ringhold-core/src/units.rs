//! Human units for the command line: sizes (`2KiB`, `4k`, `1MiB`), durations (`60s`, `250ms`, `1m`,
//! `0`), `<rate>,<burst>` pairs and `<count>,<period>` pairs. Errors are short sentences that say what
//! was expected, so that clap can print them after the flag's name.

use std::time::Duration;

/// Parses a byte size: a whole number with an optional unit (`B`, `k`/`KiB`/`KB`, `m`/`MiB`/`MB`,
/// `g`/`GiB`/`GB`; all binary, case-insensitive).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "'{s}' is not a size (expected e.g. 2048, 2KiB, 4MiB)"
        ));
    }
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is too large"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "'{s}': unknown size unit '{other}' (use B, KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Parses a duration: a whole number with a unit (`ms`, `s`, `m`, `h`); a bare `0` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "'{s}' is not a duration (expected e.g. 250ms, 60s, 5m, 1h)"
        ));
    }
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is too large"))?;
    let d = match unit.trim() {
        "us" | "µs" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "" => return Err(format!("'{s}' needs a unit (ms, s, m, h)")),
        other => {
            return Err(format!(
                "'{s}': unknown duration unit '{other}' (use us, ms, s, m, h)"
            ))
        }
    };
    Ok(d)
}

/// Parses `<a>,<b>` and applies one parser to each side.
pub fn parse_pair<'a>(s: &'a str, what: &str) -> Result<(&'a str, &'a str), String> {
    match s.split_once(',') {
        Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() && !b.contains(',') => {
            Ok((a.trim(), b.trim()))
        }
        _ => Err(format!("'{s}' is not {what}")),
    }
}

/// Formats a byte count the way the startup line and doctor print it (`2.0 KiB`, `8.0 MiB`).
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2048").unwrap(), 2048);
        assert_eq!(parse_size("2KiB").unwrap(), 2048);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("1 MiB").unwrap(), 1 << 20);
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert!(parse_size("99999999999999999999").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("60").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn pairs_and_format() {
        assert_eq!(parse_pair("1MiB,256KiB", "x").unwrap(), ("1MiB", "256KiB"));
        assert!(parse_pair("1MiB", "x").is_err());
        assert!(parse_pair("1MiB,2KiB,3", "x").is_err());
        assert!(parse_pair(",3", "x").is_err());
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(2048), "2.0 KiB");
    }
}

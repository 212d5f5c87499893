//! Parsers of option values that refuse what has no meaning (zero limits, negative or
//! non-finite times) with a message naming the value, so no nonsense reaches the daemon.
//! clap adds the option's name to the message.

use std::time::Duration;

/// The longest metadata TTL; `inf` (and anything longer) means this: names and
/// attributes are trusted until the mount ends or the kernel forgets them.
pub const INDEFINITE_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The smallest `--memory-limit` the budgets work with: a quarter of it must hold a
/// GET's blocks in flight.
pub const MIN_MEMORY_LIMIT: u64 = 16 << 20;

const KB: u64 = 1000;
const MB: u64 = 1000 * KB;
const GB: u64 = 1000 * MB;

/// Parses `500MB`, `5MiB`, `64k`, `1G`, `123` (bytes). Decimal suffixes are powers of 1000,
/// binary ones (`KiB`, `MiB`, `GiB`, `TiB`) and bare letters (`k`, `M`, `G`, `T`) of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size '{text}'"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => KB,
        "MB" => MB,
        "GB" => GB,
        "TB" => 1000 * GB,
        "k" | "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        other => return Err(format!("invalid size unit '{other}' in '{text}'")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size '{text}' is too large"))
}

/// Seconds (fractions allowed), or `inf` for an indefinite TTL.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if ["inf", "infinity", "forever"].contains(&t.to_ascii_lowercase().as_str()) {
        return Ok(INDEFINITE_TTL);
    }
    let secs: f64 = t
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds (or 'inf')"))?;
    if secs.is_nan() || secs < 0.0 {
        return Err(format!("'{text}' is not a number of seconds >= 0 (or 'inf')"));
    }
    Ok(Duration::try_from_secs_f64(secs).map_or(INDEFINITE_TTL, |d| d.min(INDEFINITE_TTL)))
}

/// A size (as `parse_size`) of at least one byte.
pub fn parse_nonzero_size(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        0 => Err(format!("'{text}' is zero; it must be at least 1 byte")),
        n => Ok(n),
    }
}

pub fn parse_memory_limit(text: &str) -> Result<u64, String> {
    match parse_size(text)? {
        n if n < MIN_MEMORY_LIMIT => Err(format!(
            "'{text}' is too small; it must be at least {}MiB",
            MIN_MEMORY_LIMIT >> 20
        )),
        n => Ok(n),
    }
}

/// A count or number of seconds of at least 1.
pub fn parse_positive<T: std::str::FromStr + PartialOrd + From<u8>>(text: &str) -> Result<T, String> {
    match text.trim().parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        Ok(_) => Err(format!("'{text}' must be at least 1")),
        Err(_) => Err(format!("'{text}' is not a whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("5MiB").unwrap(), 5 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("17").unwrap(), 17);
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_ttl("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_ttl("0"), Ok(Duration::ZERO));
        assert_eq!(parse_ttl("inf"), Ok(INDEFINITE_TTL));
        assert_eq!(parse_ttl("1e300"), Ok(INDEFINITE_TTL));
        for bad in ["-1", "NaN", "-inf", "soon", ""] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
        // An indefinite TTL can be added to now without overflow.
        let _ = std::time::Instant::now() + INDEFINITE_TTL;
    }

    #[test]
    fn counts_and_sizes() {
        assert_eq!(parse_positive::<usize>("4"), Ok(4));
        assert!(parse_positive::<usize>("0").is_err());
        assert!(parse_positive::<u32>("-3").is_err());
        assert_eq!(parse_nonzero_size("5MiB"), Ok(5 << 20));
        assert!(parse_nonzero_size("0").is_err());
        assert!(parse_memory_limit("1MiB").is_err());
        assert_eq!(parse_memory_limit("16MiB"), Ok(16 << 20));
    }
}

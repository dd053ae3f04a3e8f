//! Parsing of the Kubernetes quantities and durations the spec uses, for the
//! semantic checks in [`crate::validate`] (the apiserver checks the same with
//! CEL's `quantity()` and `duration()`).

/// Why a quantity or duration does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error(
        "{0:?} is not a quantity (expected digits with an optional Ki/Mi/Gi/Ti/Pi/Ei/k/M/G/T/P/E suffix, e.g. 256Mi)"
    )]
    Quantity(String),
    #[error("{0:?} is not a CPU quantity (expected e.g. \"1\", \"0.5\" or 500m)")]
    Cpu(String),
    #[error("{0:?} is not a duration (expected e.g. 1s, 1500ms, 1m30s)")]
    Duration(String),
    #[error("{0:?} is too large")]
    Overflow(String),
}

/// Splits "12.5Mi" into ("12.5", "Mi").
fn split_number(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    s.split_at(end)
}

/// A decimal number "123" or "1.25" as (mantissa, decimal places).
fn parse_decimal(num: &str) -> Option<(u128, u32)> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() || (num.contains('.') && frac.is_empty()) || frac.len() > 18 {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mantissa: u128 = digits.parse().ok()?;
    Some((mantissa, frac.len() as u32))
}

/// Parses a memory or storage quantity into bytes (rounded up), accepting what
/// [`crate::crd::MEMORY_QUANTITY_PATTERN`] accepts.
pub fn parse_bytes(s: &str) -> Result<u128, ParseError> {
    let (num, suffix) = split_number(s);
    let multiplier: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return Err(ParseError::Quantity(s.to_string())),
    };
    let (mantissa, places) = parse_decimal(num).ok_or_else(|| ParseError::Quantity(s.to_string()))?;
    let scaled = mantissa.checked_mul(multiplier).ok_or_else(|| ParseError::Overflow(s.to_string()))?;
    let div = 10u128.pow(places);
    let bytes = scaled.div_ceil(div);
    if bytes > i64::MAX as u128 {
        return Err(ParseError::Overflow(s.to_string()));
    }
    Ok(bytes)
}

/// Parses a CPU quantity ("1", "0.5", "500m") into millicores (rounded up).
pub fn parse_millicores(s: &str) -> Result<u128, ParseError> {
    let (num, milli) = match s.strip_suffix('m') {
        Some(n) => (n, true),
        None => (s, false),
    };
    let (mantissa, places) = parse_decimal(num).ok_or_else(|| ParseError::Cpu(s.to_string()))?;
    let scale: u128 = if milli { 1 } else { 1000 };
    let scaled = mantissa.checked_mul(scale).ok_or_else(|| ParseError::Overflow(s.to_string()))?;
    Ok(scaled.div_ceil(10u128.pow(places)))
}

/// Parses a Go-style duration ("1s", "1500ms", "1m30s", "0.5s") into nanoseconds.
pub fn parse_duration_nanos(s: &str) -> Result<u128, ParseError> {
    let err = || ParseError::Duration(s.to_string());
    if s.is_empty() {
        return Err(err());
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (num, tail) = split_number(rest);
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err()),
        };
        let (mantissa, places) = parse_decimal(num).ok_or_else(err)?;
        let part =
            mantissa.checked_mul(unit_nanos).ok_or_else(|| ParseError::Overflow(s.to_string()))? / 10u128.pow(places);
        total = total.checked_add(part).ok_or_else(|| ParseError::Overflow(s.to_string()))?;
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("0.5Gi"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5k"), Ok(1500));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert_eq!(parse_bytes("67108864"), Ok(64 << 20));
        assert_eq!(parse_bytes("64M"), Ok(64_000_000));
        for bad in ["", "Mi", "64mi", "64 Mi", "-1Mi", "1e9", "1.Mi", ".5Mi", "64MiB", "9999999999Ei"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn cpu() {
        assert_eq!(parse_millicores("1"), Ok(1000));
        assert_eq!(parse_millicores("500m"), Ok(500));
        assert_eq!(parse_millicores("0.25"), Ok(250));
        for bad in ["", "m", "1k", "-1", "1.5.2"] {
            assert!(parse_millicores(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_nanos("1s"), Ok(1_000_000_000));
        assert_eq!(parse_duration_nanos("1500ms"), Ok(1_500_000_000));
        assert_eq!(parse_duration_nanos("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_duration_nanos("0.5s"), Ok(500_000_000));
        for bad in ["", "1", "s", "1x", "1 s", "-1s"] {
            assert!(parse_duration_nanos(bad).is_err(), "{bad:?} should not parse");
        }
    }
}

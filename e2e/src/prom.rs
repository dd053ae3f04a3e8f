//! Scraping a Prometheus text endpoint (the replicas' and the operator's
//! `/metrics`) over plain HTTP/1.1, and reading samples out of it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report::{Error, Result};

/// GET `path` from `addr` (host:port); the body.
pub async fn http_get(addr: &str, path: &str) -> Result<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: text/plain\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = vec![];
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| Error::Other(format!("GET {addr}{path}: no answer in 5 s")))?
        .map_err(|e| Error::Other(format!("GET {addr}{path}: {e}")))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| Error::Other(format!("GET {addr}{path}: no HTTP body")))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(Error::Other(format!("GET {addr}{path}: {}", head.lines().next().unwrap_or_default())));
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// One sample: name, labels as written (`{a="b"}` without braces), value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: String,
    pub value: f64,
}

/// The samples of a text exposition.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = match l.rfind('}') {
                Some(i) => (&l[..=i], l[i + 1..].trim()),
                None => l.split_once(' ')?,
            };
            let value: f64 = value.split_whitespace().next()?.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series.trim(), ""),
            };
            Some(Sample { name: name.to_string(), labels: labels.to_string(), value })
        })
        .collect()
}

/// Sum of the samples named `name` whose labels contain every `label_parts` (e.g. `result="ok"`).
pub fn sum(samples: &[Sample], name: &str, label_parts: &[&str]) -> f64 {
    samples.iter().filter(|s| s.name == name && label_parts.iter().all(|p| s.labels.contains(p))).map(|s| s.value).sum()
}

/// A quantile estimated from a histogram's cumulative buckets (`<name>_bucket`), by linear interpolation.
pub fn histogram_quantile(samples: &[Sample], name: &str, q: f64) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == bucket)
        .filter_map(|s| {
            let le = s.labels.split(',').find_map(|p| p.trim().strip_prefix("le="))?.trim_matches('"');
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, s.value))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lo);
            }
            let within = count - below;
            return Some(if within > 0.0 { lo + (le - lo) * (rank - below) / within } else { le });
        }
        lo = le;
        below = count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP pbft_operator_reconciliations Reconciles\n\
        # TYPE pbft_operator_reconciliations counter\n\
        pbft_operator_reconciliations_total{result=\"ok\"} 40\n\
        pbft_operator_reconciliations_total{result=\"ApiError\"} 2\n\
        pbft_operator_reconcile_duration_seconds_sum 4.0\n\
        pbft_operator_reconcile_duration_seconds_count 42\n\
        pbft_operator_reconcile_duration_seconds_bucket{le=\"0.01\"} 0\n\
        pbft_operator_reconcile_duration_seconds_bucket{le=\"0.1\"} 21\n\
        pbft_operator_reconcile_duration_seconds_bucket{le=\"1.0\"} 42\n\
        pbft_operator_reconcile_duration_seconds_bucket{le=\"+Inf\"} 42\n\
        pbft_view 3\n\
        # EOF\n";

    #[test]
    fn samples_sums_and_quantiles() {
        let s = parse(TEXT);
        assert_eq!(sum(&s, "pbft_operator_reconciliations_total", &[]), 42.0);
        assert_eq!(sum(&s, "pbft_operator_reconciliations_total", &["result=\"ok\""]), 40.0);
        assert_eq!(sum(&s, "pbft_view", &[]), 3.0);
        let p50 = histogram_quantile(&s, "pbft_operator_reconcile_duration_seconds", 0.5).expect("p50");
        assert!((p50 - 0.1).abs() < 1e-9, "{p50}");
        let p99 = histogram_quantile(&s, "pbft_operator_reconcile_duration_seconds", 0.99).expect("p99");
        assert!(p99 > 0.9 && p99 <= 1.0, "{p99}");
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }
}

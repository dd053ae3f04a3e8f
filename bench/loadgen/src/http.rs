//! A minimal HTTP/1.1 client with one keep-alive connection, enough for
//! CometBFT's JSON-RPC over HTTP (GET with a query, `Content-Length` or
//! chunked bodies). One connection carries one request at a time, as a
//! CometBFT client's connection does.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest response body accepted.
const MAX_BODY: usize = 16 << 20;
/// Largest header section accepted.
const MAX_HEADER_LINES: usize = 100;

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr}: malformed response: {msg}")]
    Malformed { addr: SocketAddr, msg: String },
}

/// One keep-alive connection to `addr`, reopened after any error.
pub struct HttpConn {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl HttpConn {
    pub fn new(addr: SocketAddr) -> HttpConn {
        HttpConn { addr, stream: None }
    }

    /// Opens the connection now (so that connecting is not part of the first request's latency).
    pub async fn connect(&mut self) -> Result<(), HttpError> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await.map_err(|source| HttpError::Io { addr: self.addr, source })?;
            s.set_nodelay(true).map_err(|source| HttpError::Io { addr: self.addr, source })?;
            self.stream = Some(BufReader::new(s));
        }
        Ok(())
    }

    /// `GET path` (with its query); returns the status code and the body.
    pub async fn get(&mut self, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>), HttpError> {
        let addr = self.addr;
        match tokio::time::timeout(timeout, self.exchange(path)).await {
            Ok(Ok((status, body, keep))) => {
                if !keep {
                    self.stream = None;
                }
                Ok((status, body))
            }
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(HttpError::Timeout { addr, timeout })
            }
        }
    }

    async fn exchange(&mut self, path: &str) -> Result<(u16, Vec<u8>, bool), HttpError> {
        self.connect().await?;
        let addr = self.addr;
        let io = |source| HttpError::Io { addr, source };
        let bad = |msg: String| HttpError::Malformed { addr, msg };
        let Some(stream) = self.stream.as_mut() else {
            return Err(bad("no connection".into()));
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n");
        stream.get_mut().write_all(req.as_bytes()).await.map_err(io)?;
        let mut line = String::new();
        if stream.read_line(&mut line).await.map_err(io)? == 0 {
            return Err(bad("connection closed before the status line".into()));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("status line {:?}", line.trim_end())))?;
        let mut length = None;
        let mut chunked = false;
        let mut keep = true;
        for _ in 0..MAX_HEADER_LINES {
            line.clear();
            if stream.read_line(&mut line).await.map_err(io)? == 0 {
                return Err(bad("connection closed in the headers".into()));
            }
            let h = line.trim_end();
            if h.is_empty() {
                let body = if chunked {
                    read_chunked(stream, addr).await?
                } else {
                    let n = length.ok_or_else(|| bad("neither Content-Length nor chunked".into()))?;
                    if n > MAX_BODY {
                        return Err(bad(format!("body of {n} bytes")));
                    }
                    let mut body = vec![0u8; n];
                    stream.read_exact(&mut body).await.map_err(io)?;
                    body
                };
                return Ok((status, body, keep));
            }
            let Some((name, value)) = h.split_once(':') else { return Err(bad(format!("header {h:?}"))) };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = Some(value.parse().map_err(|_| bad(format!("Content-Length {value:?}")))?),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => keep = !value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        Err(bad(format!("more than {MAX_HEADER_LINES} header lines")))
    }
}

async fn read_chunked(stream: &mut BufReader<TcpStream>, addr: SocketAddr) -> Result<Vec<u8>, HttpError> {
    let io = |source| HttpError::Io { addr, source };
    let bad = |msg: String| HttpError::Malformed { addr, msg };
    let mut body = vec![];
    let mut line = String::new();
    loop {
        line.clear();
        stream.read_line(&mut line).await.map_err(io)?;
        let size_hex = line.trim_end().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad(format!("chunk size {size_hex:?}")))?;
        if body.len() + size > MAX_BODY {
            return Err(bad("chunked body too large".into()));
        }
        if size == 0 {
            // Trailers (normally none) up to the empty line.
            loop {
                line.clear();
                if stream.read_line(&mut line).await.map_err(io)? == 0 || line.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        stream.read_exact(&mut body[start..]).await.map_err(io)?;
        let mut crlf = [0u8; 2];
        stream.read_exact(&mut crlf).await.map_err(io)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each request with the next canned response.
    async fn serve(responses: Vec<&'static str>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            let mut s = BufReader::new(s);
            for r in responses {
                let mut line = String::new();
                loop {
                    line.clear();
                    if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let _ = s.get_mut().write_all(r.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn content_length_then_chunked_on_one_connection() {
        let addr = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            "HTTP/1.1 500 Internal\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        ])
        .await;
        let mut c = HttpConn::new(addr);
        let t = Duration::from_secs(5);
        assert_eq!(c.get("/a", t).await.expect("first"), (200, b"hello".to_vec()));
        assert_eq!(c.get("/b", t).await.expect("second"), (500, b"abcde".to_vec()));
    }

    #[tokio::test]
    async fn malformed_responses_are_errors() {
        for r in ["garbage\r\n\r\n", "HTTP/1.1 200 OK\r\nX\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: z\r\n\r\n"] {
            let addr = serve(vec![r]).await;
            let e = HttpConn::new(addr).get("/", Duration::from_secs(5)).await.expect_err(r);
            assert!(matches!(e, HttpError::Malformed { .. }), "{r:?}: {e}");
        }
        let addr = serve(vec!["HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab"]).await;
        assert!(HttpConn::new(addr).get("/", Duration::from_secs(5)).await.is_err(), "short body");
    }
}

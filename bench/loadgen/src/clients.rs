//! One client per system, each speaking that system's own protocol: ours
//! through `pbft::kvclient::KvClient` (signed requests, f+1 matching
//! signed replies), etcd through gRPC `KV.Put`, CometBFT through HTTP
//! JSON-RPC `broadcast_tx_commit` with the kvstore app's `key=value` txs.

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::Channel;

use crate::error::BenchError;
use crate::etcdpb;
use crate::http::HttpConn;

/// How to reach a running system; makes clients.
#[derive(Clone)]
pub enum Target {
    /// Every client signs and sends to all replicas (HTTP/2 channels shared by all clients).
    Ours { endpoints: pbft::kvclient::Endpoints },
    /// Client i talks to member i mod 3 over a channel shared by the clients of that member.
    Etcd { channels: Vec<Channel> },
    /// Client i has its own HTTP/1.1 connection to validator i mod 4's RPC.
    Comet { rpc: Vec<SocketAddr> },
}

/// One client with at most one outstanding request.
pub enum Client {
    Ours(Box<pbft::kvclient::KvClient>),
    Etcd(etcdpb::kv_client::KvClient<Channel>),
    Comet(HttpConn),
}

/// Give up on one request after this long (counted as an error).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

impl Target {
    /// Client number `i`, connected (so that connecting is not measured).
    pub async fn client(&self, i: usize) -> Result<Client, BenchError> {
        match self {
            Target::Ours { endpoints } => {
                let mut c = pbft::kvclient::KvClient::new(endpoints.clone());
                c.timeout = REQUEST_TIMEOUT;
                Ok(Client::Ours(Box::new(c)))
            }
            Target::Etcd { channels } => {
                let ch = channels
                    .get(i % channels.len().max(1))
                    .ok_or_else(|| BenchError::Setup("etcd target without endpoints".into()))?;
                Ok(Client::Etcd(etcdpb::kv_client::KvClient::new(ch.clone())))
            }
            Target::Comet { rpc } => {
                let addr = *rpc
                    .get(i % rpc.len().max(1))
                    .ok_or_else(|| BenchError::Setup("CometBFT target without RPC addresses".into()))?;
                let mut c = HttpConn::new(addr);
                c.connect().await.map_err(|e| BenchError::Request(e.to_string()))?;
                Ok(Client::Comet(c))
            }
        }
    }
}

impl Client {
    /// Writes `key` = `value` and returns once the system says it is committed.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), BenchError> {
        match self {
            Client::Ours(c) => {
                let r = c.put(key, value).await?;
                if r.status == pbft::proto::op_result::Status::Ok as i32 {
                    Ok(())
                } else {
                    Err(BenchError::Request(format!("put refused: status {} {}", r.status, r.error)))
                }
            }
            Client::Etcd(c) => {
                let mut req = tonic::Request::new(etcdpb::PutRequest {
                    key: bytes::Bytes::copy_from_slice(key),
                    value: bytes::Bytes::copy_from_slice(value),
                    ..Default::default()
                });
                req.set_timeout(REQUEST_TIMEOUT);
                c.put(req).await.map(|_| ()).map_err(|s| BenchError::Request(format!("etcd put: {s}")))
            }
            Client::Comet(c) => {
                let mut tx = Vec::with_capacity(key.len() + 1 + value.len());
                tx.extend_from_slice(key);
                tx.push(b'=');
                tx.extend_from_slice(value);
                let path = format!("/broadcast_tx_commit?tx=0x{}", hex::encode(&tx));
                let (status, body) =
                    c.get(&path, REQUEST_TIMEOUT).await.map_err(|e| BenchError::Request(e.to_string()))?;
                comet_commit_outcome(status, &body)
            }
        }
    }

    /// Reads `key` back (a linearizable read where the system has one).
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, BenchError> {
        match self {
            Client::Ours(c) => {
                let r = c.get(key).await?;
                Ok(r.value.map(|v| v.to_vec()))
            }
            Client::Etcd(c) => {
                let mut req = tonic::Request::new(etcdpb::RangeRequest {
                    key: bytes::Bytes::copy_from_slice(key),
                    ..Default::default()
                });
                req.set_timeout(REQUEST_TIMEOUT);
                let r = c.range(req).await.map_err(|s| BenchError::Request(format!("etcd range: {s}")))?;
                Ok(r.into_inner().kvs.into_iter().next().map(|kv| kv.value.to_vec()))
            }
            Client::Comet(c) => {
                let path = format!("/abci_query?data=0x{}", hex::encode(key));
                let (status, body) =
                    c.get(&path, REQUEST_TIMEOUT).await.map_err(|e| BenchError::Request(e.to_string()))?;
                comet_query_value(status, &body)
            }
        }
    }
}

fn json(status: u16, body: &[u8]) -> Result<serde_json::Value, BenchError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        BenchError::Request(format!(
            "HTTP {status}: not JSON ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    })?;
    if let Some(err) = v.get("error") {
        return Err(BenchError::Request(format!("HTTP {status}: RPC error {err}")));
    }
    Ok(v)
}

/// Whether a `broadcast_tx_commit` answer says the tx passed CheckTx and was executed (code 0 both).
pub fn comet_commit_outcome(status: u16, body: &[u8]) -> Result<(), BenchError> {
    let v = json(status, body)?;
    let result = v.get("result").ok_or_else(|| BenchError::Request(format!("HTTP {status}: no result")))?;
    for phase in ["check_tx", "tx_result"] {
        let code = result.get(phase).and_then(|p| p.get("code")).and_then(|c| c.as_u64()).unwrap_or(0);
        if code != 0 {
            let log = result.get(phase).and_then(|p| p.get("log")).and_then(|l| l.as_str()).unwrap_or("");
            return Err(BenchError::Request(format!("{phase} code {code}: {log}")));
        }
    }
    if result.get("height").and_then(|h| h.as_str()).is_none_or(|h| h == "0") {
        return Err(BenchError::Request("tx not included in a block (height 0)".into()));
    }
    Ok(())
}

/// The value in an `abci_query` answer (base64 in `result.response.value`).
pub fn comet_query_value(status: u16, body: &[u8]) -> Result<Option<Vec<u8>>, BenchError> {
    let v = json(status, body)?;
    let resp = v.pointer("/result/response").ok_or_else(|| BenchError::Request("abci_query: no response".into()))?;
    match resp.get("value").and_then(|x| x.as_str()) {
        None | Some("") => Ok(None),
        Some(b64) => base64_decode(b64).map(Some).ok_or_else(|| BenchError::Request("abci_query: bad base64".into())),
    }
}

/// Standard base64 (with padding), as Go's encoding/json writes []byte.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_outcomes() {
        let ok = br#"{"jsonrpc":"2.0","id":-1,"result":{"check_tx":{"gas_wanted":"1"},"tx_result":{"events":[]},"hash":"AB","height":"17"}}"#;
        assert!(comet_commit_outcome(200, ok).is_ok());
        let bad = br#"{"result":{"check_tx":{"code":1,"log":"bad format"},"tx_result":{},"height":"0"}}"#;
        assert!(comet_commit_outcome(200, bad).unwrap_err().to_string().contains("check_tx code 1: bad format"));
        let full =
            br#"{"jsonrpc":"2.0","id":-1,"error":{"code":-32603,"message":"Internal error","data":"mempool is full"}}"#;
        assert!(comet_commit_outcome(500, full).unwrap_err().to_string().contains("mempool is full"));
        assert!(comet_commit_outcome(200, b"<html>").is_err());
        let no_block = br#"{"result":{"check_tx":{},"tx_result":{},"height":"0"}}"#;
        assert!(comet_commit_outcome(200, no_block).is_err());
    }

    #[test]
    fn query_values() {
        let found = br#"{"result":{"response":{"code":0,"key":"YQ==","value":"aGVsbG8="}}}"#;
        assert_eq!(comet_query_value(200, found).unwrap(), Some(b"hello".to_vec()));
        let missing = br#"{"result":{"response":{"code":0,"log":"does not exist"}}}"#;
        assert_eq!(comet_query_value(200, missing).unwrap(), None);
        assert!(comet_query_value(200, br#"{"result":{"response":{"value":"%%%"}}}"#).is_err());
        assert_eq!(base64_decode("YWJjZA=="), Some(b"abcd".to_vec()));
        assert_eq!(base64_decode("YWJjZGU="), Some(b"abcde".to_vec()));
        assert_eq!(base64_decode("YWJj"), Some(b"abc".to_vec()));
    }
}

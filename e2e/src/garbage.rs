//! Bad input to every port of a replica, the way a broken or hostile client
//! or peer might send it: raw noise, an HTTP/2 preface followed by noise,
//! an endless HTTP request line, gRPC calls whose messages are noise or too
//! large, and a peer stream of undecodable, unsigned and forged frames. What
//! each attempt got back is returned for the report; the scenario checks that
//! the cluster did not notice.

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use rand::{Rng, SeedableRng};
use tokio::io::AsyncWriteExt;
use tonic::transport::Endpoint;

use pbft::crypto::Keypair;
use pbft::proto::{message::Body, Envelope, Message, Prepare};
use pbft::server::rpc::{admin_client::AdminClient, client_client::ClientClient, peer_client::PeerClient};
use pbft::server::rpc::{EvidenceRequest, Frame, SubmitRequest};

/// Sends `bytes` on a fresh TCP connection to `addr`, then reads until close (bounded).
async fn raw(addr: &str, bytes: &[u8]) -> String {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        // The peer may close early; a reset here is one of the fine outcomes.
        let _ = s.write_all(bytes).await;
        let _ = s.shutdown().await;
        let mut buf = [0u8; 512];
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await.unwrap_or(0);
        Ok::<_, std::io::Error>(format!("{n} bytes back"))
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => format!("connection error: {e}"),
        Err(_) => "no close within 5 s".into(),
    }
}

fn noise(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.gen()).collect()
}

/// Every raw attack on one `addr` (any port).
pub async fn raw_attacks(addr: &str, seed: u64) -> Vec<(String, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = vec![];
    out.push(("64 KiB of noise".into(), raw(addr, &noise(&mut rng, 64 << 10)).await));
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2.extend(noise(&mut rng, 16 << 10));
    out.push(("HTTP/2 preface + noise".into(), raw(addr, &h2).await));
    // A frame header announcing a 16 MiB frame, then nothing.
    let mut big = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    big.extend([0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01]);
    out.push(("HTTP/2 oversized frame header".into(), raw(addr, &big).await));
    let mut line = b"GET /".to_vec();
    line.extend(std::iter::repeat_n(b'a', 1 << 20));
    out.push(("1 MiB HTTP request line".into(), raw(addr, &line).await));
    out.push(("empty connection".into(), raw(addr, b"").await));
    out
}

fn channel(addr: &str) -> Option<tonic::transport::Channel> {
    Some(Endpoint::from_shared(format!("http://{addr}")).ok()?.connect_timeout(Duration::from_secs(2)).connect_lazy())
}

fn show<T>(r: Result<tonic::Response<T>, tonic::Status>) -> String {
    match r {
        Ok(_) => "accepted (OK)".into(),
        Err(s) => format!("{:?}: {}", s.code(), s.message().chars().take(100).collect::<String>()),
    }
}

/// gRPC calls with bad messages to the client port.
pub async fn client_attacks(addr: &str, seed: u64) -> Vec<(String, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let Some(ch) = channel(addr) else { return vec![("channel".into(), "bad address".into())] };
    let mut c = ClientClient::new(ch).max_encoding_message_size(64 << 20);
    let mut out = vec![];
    let call = |what: &str, request: Vec<u8>| {
        let mut req = tonic::Request::new(SubmitRequest { request: request.into() });
        req.set_timeout(Duration::from_secs(5));
        (what.to_string(), req)
    };
    for (what, req) in [
        call("Submit: noise", noise(&mut rng, 512)),
        call("Submit: empty", vec![]),
        call("Submit: 8 MiB", noise(&mut rng, 8 << 20)),
        call("Submit: an Envelope instead of a request", Envelope::default().encode_to_vec()),
    ] {
        out.push((what, show(c.submit(req).await)));
    }
    out
}

/// gRPC calls with bad messages to the admin port (it takes no input: an
/// unknown method and a noise body).
pub async fn admin_attacks(addr: &str) -> Vec<(String, String)> {
    let Some(ch) = channel(addr) else { return vec![("channel".into(), "bad address".into())] };
    let mut a = AdminClient::new(ch);
    vec![("Evidence (read-only)".into(), show(a.evidence(EvidenceRequest {}).await))]
}

/// A peer stream of bad frames to the peer port, claiming to come from member
/// `claimed` of `epoch`: noise, an envelope whose payload is noise, a prepare
/// signed by a key that is nobody's, and an oversized frame.
pub async fn peer_attacks(addr: &str, claimed: u32, epoch: u64, seed: u64) -> Vec<(String, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let Some(ch) = channel(addr) else { return vec![("channel".into(), "bad address".into())] };
    let stranger = Keypair::from_secret(rng.gen());
    let forged = stranger.seal(&Message {
        epoch,
        sender: claimed,
        body: Some(Body::Prepare(Prepare { view: 0, seq: 1, digest: Bytes::from(vec![7u8; 32]) })),
    });
    let mut frames: Vec<Frame> = (0..200).map(|_| Frame { envelope: noise(&mut rng, 300).into() }).collect();
    frames.push(Frame {
        envelope: Envelope { payload: noise(&mut rng, 200).into(), signature: noise(&mut rng, 64).into() }
            .encode_to_vec()
            .into(),
    });
    frames.extend((0..50).map(|_| Frame { envelope: forged.encode_to_vec().into() }));
    frames.push(Frame { envelope: noise(&mut rng, 6 << 20).into() });
    let n = frames.len();
    let mut p = PeerClient::new(ch).max_encoding_message_size(64 << 20);
    let mut req = tonic::Request::new(tokio_stream_iter(frames));
    if let Ok(v) = claimed.to_string().parse() {
        req.metadata_mut().insert("pbft-from", v);
    }
    req.set_timeout(Duration::from_secs(10));
    vec![(format!("Peer.Stream: {n} bad frames as member {claimed}"), show(p.stream(req).await))]
}

fn tokio_stream_iter(frames: Vec<Frame>) -> impl futures::Stream<Item = Frame> + Send + 'static {
    futures::stream::iter(frames)
}

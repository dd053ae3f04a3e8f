//! Signing, verification and digests.
//!
//! Every protocol message is an [`Envelope`]: the encoded [`Message`] plus an
//! ed25519 signature over a domain tag and those exact bytes. Client requests
//! are signed the same way with the client's key. Signatures (not MACs) make
//! misbehaviour provable to third parties such as the operator.

use std::collections::HashMap;

use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use crate::proto::{Envelope, Message, SignedRequest};

/// Domain tag for replica messages.
pub const MESSAGE_DOMAIN: &[u8] = b"pbft/message/v1";
/// Domain tag for client requests.
pub const REQUEST_DOMAIN: &[u8] = b"pbft/request/v1";

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// SHA-256 of `parts`, concatenated.
pub fn sha256(parts: &[&[u8]]) -> Digest {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Why a key or signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("public key must be 32 bytes, got {0}")]
    KeyLength(usize),
    #[error("public key is not a valid curve point")]
    InvalidKey,
    #[error("public key is weak (small order) and is refused")]
    WeakKey,
    #[error("signature must be 64 bytes, got {0}")]
    SignatureLength(usize),
    #[error("signature does not verify")]
    BadSignature,
}

/// Keys parsed recently, per thread (decompressing a curve point costs about
/// a quarter of a signature check, and the same client keys come again and again).
const KEY_CACHE: usize = 4096;

thread_local! {
    static PARSED_KEYS: std::cell::RefCell<HashMap<[u8; 32], VerifyingKey>> = std::cell::RefCell::new(HashMap::new());
}

/// Parses a public key, refusing weak (small-order) keys.
pub fn parse_public_key(bytes: &[u8]) -> Result<VerifyingKey, CryptoError> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::KeyLength(bytes.len()))?;
    if let Some(k) = PARSED_KEYS.with(|c| c.borrow().get(&arr).copied()) {
        return Ok(k);
    }
    let key = VerifyingKey::from_bytes(&arr).map_err(|_| CryptoError::InvalidKey)?;
    if key.is_weak() {
        return Err(CryptoError::WeakKey);
    }
    PARSED_KEYS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= KEY_CACHE {
            c.clear();
        }
        c.insert(arr, key);
    });
    Ok(key)
}

fn parse_signature(bytes: &[u8]) -> Result<Signature, CryptoError> {
    let arr: [u8; 64] = bytes.try_into().map_err(|_| CryptoError::SignatureLength(bytes.len()))?;
    Ok(Signature::from_bytes(&arr))
}

fn tagged(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(domain.len() + body.len());
    v.extend_from_slice(domain);
    v.extend_from_slice(body);
    v
}

/// A replica's or client's signing identity.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keypair({})", hex::encode(self.public_bytes()))
    }
}

impl Keypair {
    /// A key from 32 secret bytes (deterministic: the simulator derives keys from its seed).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Keypair { signing: SigningKey::from_bytes(&secret) }
    }

    /// The secret bytes, for storing the key on the replica's own volume.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public key.
    pub fn public(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The public key's bytes.
    pub fn public_bytes(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Signs a replica message and wraps it in an envelope.
    pub fn seal(&self, msg: &Message) -> Envelope {
        let payload = msg.encode_to_vec();
        let signature = self.signing.sign(&tagged(MESSAGE_DOMAIN, &payload));
        Envelope { payload: payload.into(), signature: Bytes::copy_from_slice(&signature.to_bytes()) }
    }

    /// Signs a client request body.
    pub fn sign_request(&self, body: Vec<u8>) -> SignedRequest {
        let signature = self.signing.sign(&tagged(REQUEST_DOMAIN, &body));
        SignedRequest { body: body.into(), signature: Bytes::copy_from_slice(&signature.to_bytes()) }
    }
}

/// A short, stable, printable fingerprint of a public key (first 8 bytes of its SHA-256).
pub fn fingerprint(public_key: &[u8]) -> String {
    hex::encode(&sha256(&[public_key])[..8])
}

/// Verifies `signature` on `domain || body` (strict: rejects malleable signatures and weak keys).
pub fn verify_strict(key: &VerifyingKey, domain: &[u8], body: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    let sig = parse_signature(signature)?;
    key.verify_strict(&tagged(domain, body), &sig).map_err(|_| CryptoError::BadSignature)
}

/// Verifies `signature` on `domain || body`.
pub fn verify(key: &VerifyingKey, domain: &[u8], body: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    let sig = parse_signature(signature)?;
    key.verify(&tagged(domain, body), &sig).map_err(|_| CryptoError::BadSignature)
}

/// One signature check: key, domain, signed body, signature.
pub struct SignatureCheck<'a> {
    pub key: &'a VerifyingKey,
    pub domain: &'static [u8],
    pub body: &'a [u8],
    pub signature: &'a [u8],
}

/// Verifies signatures, alone or in batches.
///
/// The core calls it through this trait so that the simulator can memoise
/// results of byte-identical checks (a broadcast is verified by every
/// receiver), which keeps thousands of seeds affordable while every check
/// still runs the real ed25519 code once.
pub trait SignatureVerifier: Send {
    /// Verifies each check; the result has one entry per check.
    fn verify_all(&mut self, checks: &[SignatureCheck<'_>]) -> Vec<bool>;
    /// How many signature verifications this verifier performed.
    fn verifications(&self) -> u64;
}

/// Checks at least this many are split over threads (smaller ones are not worth a thread).
const PARALLEL_MIN: usize = 48;
/// Request signatures remembered as verified.
const REQUEST_CACHE: usize = 16_384;

/// The production verifier.
///
/// - Several checks go through ed25519 batch verification (about half the
///   cost per signature of single checks); a batch that fails is split in
///   halves until the bad signatures are found, so one forged message does
///   not make the whole drain pay single checks.
/// - Large batches are split over up to `threads` threads (the driver's
///   thread takes one share), so one replica's drain is not bound to one core.
/// - Client request signatures that verified are remembered (by a digest of
///   key, signature and body) for a while: a backup checks a request when the
///   client sends it and again inside the primary's batch; the second check
///   is then a lookup.
pub struct Ed25519Verifier {
    count: u64,
    threads: usize,
    verified_requests: std::sync::Arc<std::sync::Mutex<RequestCache>>,
    cache_hits: u64,
}

/// Digests of request signatures that verified, the oldest forgotten first.
#[derive(Default)]
struct RequestCache {
    set: std::collections::HashSet<Digest>,
    order: std::collections::VecDeque<Digest>,
}

impl RequestCache {
    fn insert(&mut self, d: Digest) {
        if self.set.insert(d) {
            self.order.push_back(d);
            while self.order.len() > REQUEST_CACHE {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

impl Default for Ed25519Verifier {
    fn default() -> Self {
        Ed25519Verifier::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4))
    }
}

/// A parsed check: the signed bytes (domain tag included), signature and key.
struct Prepared {
    msg: Vec<u8>,
    sig: Signature,
    key: VerifyingKey,
}

fn batch_ok(items: &[&Prepared]) -> bool {
    let msgs: Vec<&[u8]> = items.iter().map(|p| p.msg.as_slice()).collect();
    let sigs: Vec<Signature> = items.iter().map(|p| p.sig).collect();
    let keys: Vec<VerifyingKey> = items.iter().map(|p| p.key).collect();
    ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok()
}

/// Verifies `items`, writing each result into `out`: one batch (single
/// checks below four); when it fails, a batch per signer (the honest ones
/// pass), and single checks within a signer's batch that failed. A forger
/// thus costs at most one extra batch plus single checks of its own messages.
fn verify_into(items: &[Prepared], out: &mut [bool]) {
    let singles = |items: &[&Prepared], at: &[usize], out: &mut [bool]| {
        for (p, i) in items.iter().zip(at) {
            out[*i] = p.key.verify(&p.msg, &p.sig).is_ok();
        }
    };
    let all: Vec<&Prepared> = items.iter().collect();
    let idx: Vec<usize> = (0..items.len()).collect();
    if items.len() < 4 {
        return singles(&all, &idx, out);
    }
    if batch_ok(&all) {
        out.iter_mut().for_each(|o| *o = true);
        return;
    }
    let mut by_key: HashMap<[u8; 32], (Vec<&Prepared>, Vec<usize>)> = HashMap::new();
    for (i, p) in items.iter().enumerate() {
        let g = by_key.entry(p.key.to_bytes()).or_default();
        g.0.push(p);
        g.1.push(i);
    }
    if by_key.len() == 1 {
        return singles(&all, &idx, out);
    }
    for (group, at) in by_key.into_values() {
        if group.len() >= 4 && batch_ok(&group) {
            at.iter().for_each(|i| out[*i] = true);
        } else {
            singles(&group, &at, out);
        }
    }
}

impl Ed25519Verifier {
    /// A verifier that splits large batches over at most `threads` threads.
    pub fn new(threads: usize) -> Ed25519Verifier {
        Ed25519Verifier { count: 0, threads: threads.max(1), verified_requests: Default::default(), cache_hits: 0 }
    }

    /// A verifier sharing this one's cache of verified request signatures
    /// (the driver checks a drain's requests as one batch ahead of the core).
    pub fn sharing_cache(&self) -> Ed25519Verifier {
        Ed25519Verifier {
            count: 0,
            threads: self.threads,
            verified_requests: self.verified_requests.clone(),
            cache_hits: 0,
        }
    }

    /// Request checks answered from the cache of verified request signatures.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits
    }

    fn request_digest(c: &SignatureCheck<'_>) -> Digest {
        sha256(&[c.key.as_bytes(), c.signature, c.body])
    }

    fn verify_prepared(&self, items: &[Prepared], out: &mut [bool]) {
        let parts = if items.len() >= PARALLEL_MIN { self.threads.min(items.len() / (PARALLEL_MIN / 2)) } else { 1 };
        if parts <= 1 {
            verify_into(items, out);
            return;
        }
        let chunk = items.len().div_ceil(parts);
        std::thread::scope(|scope| {
            let mut pieces = items.chunks(chunk).zip(out.chunks_mut(chunk));
            let first = pieces.next();
            for (i, o) in pieces {
                scope.spawn(move || verify_into(i, o));
            }
            if let Some((i, o)) = first {
                verify_into(i, o);
            }
        });
    }
}

impl SignatureVerifier for Ed25519Verifier {
    fn verify_all(&mut self, checks: &[SignatureCheck<'_>]) -> Vec<bool> {
        let mut out = vec![false; checks.len()];
        let mut todo = Vec::with_capacity(checks.len());
        let mut at = Vec::with_capacity(checks.len());
        let mut digests = vec![None; checks.len()];
        {
            // A poisoned lock still holds a usable set (the worst case is a missed shortcut).
            let cache = self.verified_requests.lock().unwrap_or_else(|e| e.into_inner());
            for (i, c) in checks.iter().enumerate() {
                if c.domain == REQUEST_DOMAIN {
                    let d = Self::request_digest(c);
                    if cache.set.contains(&d) {
                        self.cache_hits += 1;
                        out[i] = true;
                        continue;
                    }
                    digests[i] = Some(d);
                }
                // A malformed signature fails here, without spending a verification.
                let Ok(sig) = parse_signature(c.signature) else { continue };
                todo.push(Prepared { msg: tagged(c.domain, c.body), sig, key: *c.key });
                at.push(i);
            }
        }
        self.count += todo.len() as u64;
        let mut results = vec![false; todo.len()];
        self.verify_prepared(&todo, &mut results);
        let mut cache = self.verified_requests.lock().unwrap_or_else(|e| e.into_inner());
        for (i, ok) in at.into_iter().zip(results) {
            out[i] = ok;
            if let (true, Some(d)) = (ok, digests[i]) {
                cache.insert(d);
            }
        }
        out
    }

    fn verifications(&self) -> u64 {
        self.count
    }
}

/// A memoising verifier for the simulator: byte-identical checks are verified
/// once with real ed25519 and then answered from a bounded cache, which the
/// replicas of one simulated run share (a broadcast is verified once, not
/// once per receiver).
#[derive(Clone, Default)]
pub struct MemoVerifier {
    cache: std::sync::Arc<std::sync::Mutex<HashMap<Digest, bool>>>,
    count: u64,
}

impl MemoVerifier {
    const MAX_ENTRIES: usize = 200_000;

    /// A verifier sharing this one's cache (its own count starts at zero).
    pub fn sharing(&self) -> MemoVerifier {
        MemoVerifier { cache: self.cache.clone(), count: 0 }
    }
}

impl SignatureVerifier for MemoVerifier {
    fn verify_all(&mut self, checks: &[SignatureCheck<'_>]) -> Vec<bool> {
        checks
            .iter()
            .map(|c| {
                let key = sha256(&[c.key.as_bytes(), c.domain, c.signature, c.body]);
                if let Some(ok) = self.cache.lock().map(|m| m.get(&key).copied()).unwrap_or(None) {
                    return ok;
                }
                self.count += 1;
                let ok = verify(c.key, c.domain, c.body, c.signature).is_ok();
                if let Ok(mut m) = self.cache.lock() {
                    if m.len() >= Self::MAX_ENTRIES {
                        m.clear();
                    }
                    m.insert(key, ok);
                }
                ok
            })
            .collect()
    }

    fn verifications(&self) -> u64 {
        self.count
    }
}

/// Decodes an envelope's payload without checking its signature.
pub fn open_unverified(env: &Envelope) -> Result<Message, prost::DecodeError> {
    Message::decode(env.payload.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{message::Body, Prepare};

    fn key(n: u8) -> Keypair {
        Keypair::from_secret([n; 32])
    }

    #[test]
    fn envelope_round_trip_and_tamper() {
        let k = key(1);
        let msg = Message {
            epoch: 1,
            sender: 0,
            body: Some(Body::Prepare(Prepare { view: 1, seq: 2, digest: Bytes::from_static(&[7; 32]) })),
        };
        let env = k.seal(&msg);
        assert!(verify_strict(&k.public(), MESSAGE_DOMAIN, &env.payload, &env.signature).is_ok());
        assert_eq!(open_unverified(&env).unwrap(), msg);
        let mut bad = env.payload.to_vec();
        bad[3] ^= 1;
        assert_eq!(verify(&k.public(), MESSAGE_DOMAIN, &bad, &env.signature), Err(CryptoError::BadSignature));
        // The same bytes under the request domain do not verify: domains separate.
        assert!(verify(&k.public(), REQUEST_DOMAIN, &env.payload, &env.signature).is_err());
    }

    #[test]
    fn weak_and_malformed_keys_are_refused() {
        // The identity point (small order) encodes as 1 followed by zeros.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        assert_eq!(parse_public_key(&weak), Err(CryptoError::WeakKey));
        assert_eq!(parse_public_key(&[1, 2, 3]), Err(CryptoError::KeyLength(3)));
        assert!(parse_public_key(&key(9).public_bytes()).is_ok());
    }

    #[test]
    fn batch_verifier_finds_the_bad_signature() {
        let keys: Vec<Keypair> = (1..=6).map(key).collect();
        let bodies: Vec<Vec<u8>> = (0..6).map(|i| vec![i as u8; 40]).collect();
        let mut envs: Vec<SignedRequest> = keys.iter().zip(&bodies).map(|(k, b)| k.sign_request(b.clone())).collect();
        let mut sig = envs[3].signature.to_vec();
        sig[0] ^= 0xff;
        envs[3].signature = sig.into();
        let pubs: Vec<VerifyingKey> = keys.iter().map(|k| k.public()).collect();
        let checks: Vec<SignatureCheck> = envs
            .iter()
            .zip(&pubs)
            .map(|(e, k)| SignatureCheck { key: k, domain: REQUEST_DOMAIN, body: &e.body, signature: &e.signature })
            .collect();
        let mut v = Ed25519Verifier::default();
        assert_eq!(v.verify_all(&checks), vec![true, true, true, false, true, true]);
        assert_eq!(v.verifications(), 6);
        // Verified request signatures are remembered: the same checks again cost only the bad one.
        assert_eq!(v.verify_all(&checks), vec![true, true, true, false, true, true]);
        assert_eq!((v.verifications(), v.cache_hits()), (7, 5));
        // The cache is keyed by the body too: the same signature on other bytes is checked (and fails).
        let other = b"another body".to_vec();
        let forged =
            [SignatureCheck { key: &pubs[0], domain: REQUEST_DOMAIN, body: &other, signature: &envs[0].signature }];
        assert_eq!(v.verify_all(&forged), vec![false]);
        let mut m = MemoVerifier::default();
        assert_eq!(m.verify_all(&checks), vec![true, true, true, false, true, true]);
        assert_eq!(m.verify_all(&checks), vec![true, true, true, false, true, true]);
        assert_eq!(m.verifications(), 6, "second pass answered from the cache");
    }

    #[test]
    fn large_batches_split_over_threads_find_every_bad_signature() {
        let keys: Vec<Keypair> = (1..=8).map(key).collect();
        let pubs: Vec<VerifyingKey> = keys.iter().map(|k| k.public()).collect();
        let msgs: Vec<(usize, Envelope)> = (0..150)
            .map(|i| {
                let m = Message {
                    epoch: 0,
                    sender: (i % 8) as u32,
                    body: Some(Body::Prepare(Prepare { view: 0, seq: i as u64, digest: Bytes::from_static(&[1; 32]) })),
                };
                let mut env = keys[i % 8].seal(&m);
                if i % 37 == 5 {
                    let mut sig = env.signature.to_vec();
                    sig[10] ^= 1;
                    env.signature = sig.into();
                }
                (i % 8, env)
            })
            .collect();
        let checks: Vec<SignatureCheck> = msgs
            .iter()
            .map(|(k, e)| SignatureCheck {
                key: &pubs[*k],
                domain: MESSAGE_DOMAIN,
                body: &e.payload,
                signature: &e.signature,
            })
            .collect();
        let want: Vec<bool> = (0..150).map(|i| i % 37 != 5).collect();
        for threads in [1, 2, 4] {
            assert_eq!(Ed25519Verifier::new(threads).verify_all(&checks), want, "{threads} threads");
        }
    }
}

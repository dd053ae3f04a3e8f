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

/// Parses a public key, refusing weak (small-order) keys.
pub fn parse_public_key(bytes: &[u8]) -> Result<VerifyingKey, CryptoError> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::KeyLength(bytes.len()))?;
    let key = VerifyingKey::from_bytes(&arr).map_err(|_| CryptoError::InvalidKey)?;
    if key.is_weak() {
        return Err(CryptoError::WeakKey);
    }
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

/// The production verifier: batch verification when more than one check is
/// pending, falling back to single checks to find the bad ones.
#[derive(Default)]
pub struct Ed25519Verifier {
    count: u64,
}

impl SignatureVerifier for Ed25519Verifier {
    fn verify_all(&mut self, checks: &[SignatureCheck<'_>]) -> Vec<bool> {
        self.count += checks.len() as u64;
        if checks.len() >= 4 {
            let msgs: Vec<Vec<u8>> = checks.iter().map(|c| tagged(c.domain, c.body)).collect();
            let sigs: Option<Vec<Signature>> = checks.iter().map(|c| parse_signature(c.signature).ok()).collect();
            if let Some(sigs) = sigs {
                let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
                let keys: Vec<VerifyingKey> = checks.iter().map(|c| *c.key).collect();
                if ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok() {
                    return vec![true; checks.len()];
                }
            }
        }
        checks.iter().map(|c| verify(c.key, c.domain, c.body, c.signature).is_ok()).collect()
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
        let mut m = MemoVerifier::default();
        assert_eq!(m.verify_all(&checks), vec![true, true, true, false, true, true]);
        assert_eq!(m.verify_all(&checks), vec![true, true, true, false, true, true]);
        assert_eq!(m.verifications(), 6, "second pass answered from the cache");
    }
}

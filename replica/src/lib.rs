//! pbft-operator's replica: the PBFT protocol as a deterministic state
//! machine ([`core`]), the replicated key-value state ([`state`]), and a
//! seeded simulator that attacks it ([`sim`]), the gRPC server ([`server`])
//! and its client library ([`kvclient`]).

pub mod bench;
pub mod core;
pub mod crypto;
pub mod kvclient;
pub mod membership;
pub mod merkle;
pub mod proto;
pub mod server;
pub mod sim;
pub mod state;

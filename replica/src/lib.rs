//! pbft-operator's replica: the PBFT protocol as a deterministic state
//! machine ([`core`]), the replicated key-value state ([`state`]), and a
//! seeded simulator that attacks it ([`sim`]).

pub mod core;
pub mod crypto;
pub mod membership;
pub mod proto;
pub mod sim;
pub mod state;

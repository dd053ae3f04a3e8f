//! Generated protobuf types (see `proto/pbft.proto`).
#![allow(missing_docs, clippy::all)]
include!(concat!(env!("OUT_DIR"), "/pbft.v1.rs"));

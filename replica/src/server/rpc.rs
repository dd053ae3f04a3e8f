//! Generated gRPC services (see `proto/pbft_service.proto`).
#![allow(missing_docs, clippy::all)]
include!(concat!(env!("OUT_DIR"), "/pbft.service.v1.rs"));

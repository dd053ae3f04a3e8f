//! Compiles `proto/pbft.proto` and the gRPC services of
//! `proto/pbft_service.proto` with a vendored `protoc`, so that a fresh
//! machine needs nothing beyond cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    println!("cargo:rerun-if-changed=proto/pbft.proto");
    println!("cargo:rerun-if-changed=proto/pbft_service.proto");
    let mut cfg = prost_build::Config::new();
    cfg.protoc_executable(&protoc).bytes(["."]);
    cfg.compile_protos(&["proto/pbft.proto"], &["proto"])?;
    let mut svc = prost_build::Config::new();
    svc.protoc_executable(&protoc).bytes(["."]);
    tonic_prost_build::configure().extern_path(".pbft.v1", "crate::proto").compile_with_config(
        svc,
        &["proto/pbft_service.proto"],
        &["proto"],
    )?;
    Ok(())
}

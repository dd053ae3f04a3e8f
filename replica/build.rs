//! Compiles `proto/pbft.proto` with a vendored `protoc`, so that a fresh
//! machine needs nothing beyond cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    println!("cargo:rerun-if-changed=proto/pbft.proto");
    prost_build::Config::new()
        .protoc_executable(protoc)
        .bytes(["."])
        .compile_protos(&["proto/pbft.proto"], &["proto"])?;
    Ok(())
}

//! Compiles the client side of `proto/etcd_kv.proto` (etcd's KV.Put and
//! KV.Range, written from etcd's public API) with a vendored `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    println!("cargo:rerun-if-changed=proto/etcd_kv.proto");
    let mut cfg = prost_build::Config::new();
    cfg.protoc_executable(&protoc).bytes(["."]);
    tonic_prost_build::configure().build_server(false).compile_with_config(
        cfg,
        &["proto/etcd_kv.proto"],
        &["proto"],
    )?;
    Ok(())
}

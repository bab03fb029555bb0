//! Generates the gRPC code from `proto/kollector/v1`. protoc comes from the
//! protoc-bin-vendored crate, so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of set_var: build scripts are single-threaded at this point.
    std::env::set_var("PROTOC", protoc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["kollector/v1/monitor.proto", "kollector/v1/manager.proto", "kollector/v1/collector.proto"]
        .map(|f| root.join(f));
    // The messages that carry passwords get a hand-written Debug (lib.rs)
    // that never prints them.
    tonic_prost_build::configure()
        .skip_debug(["kollector.v1.SaslInput", "kollector.v1.TlsInput"])
        .compile_protos(&files, std::slice::from_ref(&root))?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}

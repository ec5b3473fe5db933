//! Compiles `proto/` without protoc (protox), emits the descriptor set served by reflection,
//! and generates the tonic/prost code.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // protox includes every imported file (google/protobuf/*.proto) in the set, so reflection
    // can describe every type a client meets.
    let fds = protox::compile(["adgate/v1/gateway.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("adgate_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::GrpcCodec")
        .compile_fds(fds)?;
    Ok(())
}

//! Compiles the wire contract with `protox`, a pure-Rust protobuf compiler, so
//! that building needs no `protoc` on the machine.

use std::error::Error;

const PROTOS: [&str; 3] = [
    "proto/workload.proto",
    "proto/node.proto",
    "proto/admin.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    // The service stubs need tonic; the messages alone need only prost.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .compile_fds(descriptors)?;
    Ok(())
}

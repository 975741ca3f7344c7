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
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

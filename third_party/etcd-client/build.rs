#[cfg(feature = "build-server")]
fn should_build_server() -> bool {
    true
}

#[cfg(not(feature = "build-server"))]
fn should_build_server() -> bool {
    false
}

fn main() {
    let proto_root = "proto";
    println!("cargo:rerun-if-changed={proto_root}");

    // Parsed by protox (pure Rust) instead of a protoc found at build time; the descriptor set
    // is what `protoc --include_imports --include_source_info` writes, so the code generated
    // from it is the same.
    let file_descriptor_set = protox::compile(
        [
            "proto/etcd/api/authpb/auth.proto",
            "proto/etcd/api/etcdserverpb/rpc.proto",
            "proto/etcd/api/mvccpb/kv.proto",
            "proto/etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
            "proto/etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
        ],
        [proto_root],
    )
    .unwrap_or_else(|e| panic!("Failed to parse proto files: {e}"));

    tonic_prost_build::configure()
        // `compile_protos` adds this attribute itself; `compile_fds` does not.
        .type_attribute(".", "#[allow(clippy::all)]")
        .build_server(should_build_server())
        .compile_fds(file_descriptor_set)
        .expect("Failed to compile proto files");
}

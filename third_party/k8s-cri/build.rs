// The .proto files are parsed by protox (pure Rust) instead of a protoc found at build time; the
// descriptor set is what `protoc --include_imports --include_source_info` writes, so the code
// generated from it is the same.
fn compile(proto: &str) {
    let file_descriptor_set = protox::compile([proto], ["proto/"])
        .unwrap_or_else(|e| panic!("Failed to parse {proto}: {e}"));
    tonic_prost_build::configure()
        // `compile_protos` adds this attribute itself; `compile_fds` does not.
        .type_attribute(".", "#[allow(clippy::all)]")
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_fds(file_descriptor_set)
        .unwrap();
}

fn main() {
    compile("proto/v1.proto");
    compile("proto/v1alpha2.proto");
}

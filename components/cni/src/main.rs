//! Standalone `kinit-cni` executable (the same plugin the `kinit` binary runs as `kinit cni`);
//! the integration tests execute it exactly as a runtime would.

fn main() -> std::process::ExitCode {
    kinit_cni::main_with_env()
}

//! The installer's library: how an inventory becomes files on hosts, and the helpers the `kinit`
//! subcommands share. The binary (`main.rs`, `cmd/`) is the CLI around it.

pub mod addons;
pub mod bootstrap;
pub mod client;
pub mod cluster;
pub mod converge;
pub mod desired;
pub mod join;
pub mod output;
pub mod phases;
pub mod reset;
pub mod sync;

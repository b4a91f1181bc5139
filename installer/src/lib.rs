//! The installer's library: how an inventory becomes files on hosts, the phases that install
//! hosts and bootstrap the cluster ([`phases`]), the `apply` and `join` workflows ([`apply`],
//! [`join`]), and the helpers the `kinit` subcommands share. The binary (`main.rs`, `cmd/`) is
//! the CLI around it: it parses flags and prints.

pub mod addons;
pub mod apply;
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

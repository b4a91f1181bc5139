//! One module per top-level subcommand: its clap arguments and its `run`.

pub mod apply;
pub mod certs;
pub mod completion;
pub mod component;
pub mod config;
pub mod controller_manager;
pub mod hosts;
pub mod init;
pub mod join;
pub mod kubeconfig;
pub mod lab;
pub mod preflight;
pub mod reset;
pub mod token;

//! Helpers shared by the integration tests (and the bench binary).

pub mod lab;

//! The shared harness lives in the crate (`kinit_apiserver::testing`) so other components' tests
//! use the same one.

pub use kinit_apiserver::testing::TestServer;

//! The generic REST handlers over the registry and the store, one module per verb group:
//! [`read`] (get, list, watch), [`create`], [`update`] (PUT, PATCH, server-side apply) and
//! [`delete`] (one object, collections), with the pipeline they share in [`write`].
//! Per-kind behaviour comes from the resource table ([`crate::kinds`]); admission plugins
//! from [`crate::admission`].

pub mod create;
pub mod delete;
pub mod read;
pub mod update;
pub mod write;

pub use create::create;
pub use delete::{delete, delete_collection, delete_object, DeleteOptions, Deleted};
pub use read::{get, list, watch};
pub use update::{apply, apply_patch_body, patch, update};
pub use write::Part;

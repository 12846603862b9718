//! topiq's queue module.
//!
//! This crate grows into the runtime of `config.yaml` (config loading, triggers, retries, the
//! `queue.*` calls); today it holds the registry that turns an adapter class name from the
//! config into a running adapter, and the `topiq` binary.

pub mod registry;

pub use registry::{AdapterClass, RegistryError};

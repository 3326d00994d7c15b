//! Containers on the node (`driver = "oci"`): the OCI runtime that runs them
//! ([`runtime`]) and the layer cache their root filesystems are assembled from
//! ([`layers`]). The decisions (the runtime's `config.json`, which runtime is preferred,
//! what the image's user resolves to) are `node_core::oci`'s; this module finds, reads and
//! runs things.
pub mod bundle;
pub mod layers;
pub mod root;
pub mod runtime;

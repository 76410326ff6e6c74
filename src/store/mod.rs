//! The store seam is the domain's (`contactd_core::store`, re-exported here);
//! this module holds its backends, one file each, the read views the CLI and
//! API share, the invariant check, and what the backends share.

pub mod check;
pub mod encoder;
pub mod memory;
pub mod scylla;
pub mod sqlite;
pub mod view;

pub use contactd_core::store::*;

/// A backend as the services hold it behind a trait object: the directory,
/// the sink of its changes and the outbox that keeps them.
pub trait Backend: Store + ChangeSink + crate::publish::Outbox + Send {}

impl<T: Store + ChangeSink + crate::publish::Outbox + Send> Backend for T {}

use crate::model::Identifier;

/// Both backends keep records as JSON text: what one writes the other reads.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialize to JSON")
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Claims are keyed by a hash of the identifier, so an erased customer's e-mail or
/// phone does not stay readable in the tombstone that outlives them.
pub(crate) fn identifier_hash(identifier: &Identifier) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(identifier.kind.as_str().as_bytes());
    hasher.update(b":");
    hasher.update(identifier.value.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    key
}

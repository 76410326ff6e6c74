//! contactd's domain, pure: events as the contract defines them, identity
//! normalization, the directory's records and the resolution rules that turn
//! an event into mutations and changes. It reads the directory through the
//! `store::DirectoryView` seam and knows nothing of Kafka, CQL, SQL or HTTP;
//! the `contactd` crate brings those. See docs/architecture.md.

pub mod event;
pub mod identity;
pub mod ids;
pub mod memory;
pub mod model;
pub mod resolve;
pub mod store;

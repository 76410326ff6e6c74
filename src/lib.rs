//! contactd turns customer-service conversation events into a living contact
//! directory: one contact per real customer, a timeline of every interaction and
//! a full-text index over it. See docs/architecture.md.

#![forbid(unsafe_code)]

pub use contactd_core::{event, identity, ids, model, resolve};

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod corpus;
pub mod health;
pub mod index;
pub mod indexer;
pub mod metrics;
pub mod pipeline;
pub mod priority;
pub mod publish;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod usage;
pub mod worker;

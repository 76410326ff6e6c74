//! The one integration-test binary: contract rules end to end, the store
//! conformance suite, property tests, the command line, the JSON Schemas and
//! the Kafka worker against a real broker, and the operators' files.

mod api;
mod cli;
mod conformance;
mod harness;
mod index;
mod kafka;
mod model;
mod ops;
mod properties;
mod rules;
mod scale;
mod schemas;
mod scylla;
mod servers;
mod vectors;

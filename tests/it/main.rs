//! The one integration-test binary: contract rules end to end, the store
//! conformance suite, property tests, the command line and the JSON Schemas.

mod cli;
mod conformance;
mod harness;
mod index;
mod properties;
mod rules;
mod schemas;

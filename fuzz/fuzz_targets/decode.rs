//! Any bytes as an event: decoding either yields an event or a reason, and a
//! decoded identity normalizes under a tenant's settings, without a panic.

#![no_main]

use std::sync::LazyLock;

use contactd::event::{self, EventBody};
use contactd::identity;
use contactd::model::TenantConfig;
use libfuzzer_sys::fuzz_target;

static SETTINGS: LazyLock<TenantConfig> = LazyLock::new(|| TenantConfig {
    identifying_params: vec!["crm_id".into()],
    default_phone_region: Some("CZ".into()),
    version: None,
});

fuzz_target!(|bytes: &[u8]| {
    let Ok(event) = event::decode(bytes) else { return };
    if let Some(raw) = &event.identity {
        identity::normalize(raw, &SETTINGS);
    }
    if let EventBody::ContactUpdated { add, remove, .. } = &event.body {
        for raw in add.iter().chain(remove) {
            identity::normalize(raw, &SETTINGS);
        }
    }
    if let EventBody::Email { participants, .. } = &event.body {
        for address in participants {
            identity::normalize_email(address);
        }
    }
});

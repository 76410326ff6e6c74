//! The ids the directory is keyed by, one type each, so that a session id
//! cannot be passed where a contact id is meant. An id from the outside is
//! checked once, by `parse` at decode (docs/contract.md 1); the store's rows
//! and the ids resolution derives are trusted and converted with `From`.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_owned())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id_type!(
    /// A tenant: `[A-Za-z0-9._-]{1,64}`.
    TenantId
);
id_type!(
    /// A contact: given by an operator's console (1 to 128 characters) or
    /// derived from the event that founded it.
    ContactId
);
id_type!(
    /// A conversation of one channel: 1 to 128 characters.
    SessionId
);

/// Why an id from the outside was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(pub String);

/// The longest contact or session id, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// `[A-Za-z0-9._-]{1,64}`: a tenant id as events and the configuration give it.
pub fn valid_tenant_id(tenant: &str) -> bool {
    (1..=64).contains(&tenant.len()) && tenant.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl TenantId {
    pub fn parse(id: String) -> Result<Self, InvalidId> {
        if valid_tenant_id(&id) { Ok(Self(id)) } else { Err(InvalidId("tenant_id must be 1..64 of [A-Za-z0-9._-]".into())) }
    }
}

fn check_chars(field: &str, id: &str) -> Result<(), InvalidId> {
    let chars = id.chars().count();
    if chars == 0 || chars > MAX_ID_CHARS {
        return Err(InvalidId(format!("{field} must be 1..{MAX_ID_CHARS} characters")));
    }
    Ok(())
}

impl ContactId {
    pub fn parse(id: String) -> Result<Self, InvalidId> {
        check_chars("contact_id", &id).map(|()| Self(id))
    }
}

impl SessionId {
    pub fn parse(id: String) -> Result<Self, InvalidId> {
        check_chars("session_id", &id).map(|()| Self(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_the_outside_are_checked_once_at_parse() {
        assert!(TenantId::parse("acme-2.eu_1".into()).is_ok());
        assert!(TenantId::parse(String::new()).is_err());
        assert!(TenantId::parse("acme corp".into()).is_err());
        assert!(TenantId::parse("a".repeat(65)).is_err());
        assert!(SessionId::parse("č".repeat(128)).is_ok(), "characters, not bytes");
        assert!(SessionId::parse("s".repeat(129)).is_err());
        assert!(ContactId::parse(String::new()).is_err());
    }

    #[test]
    fn an_id_is_its_string_on_the_wire() {
        let id = ContactId::from("c-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""c-1""#);
        assert_eq!(serde_json::from_str::<ContactId>(r#""c-1""#).unwrap(), id);
        assert_eq!(id, "c-1");
        assert_eq!(id.to_string(), "c-1");
    }
}

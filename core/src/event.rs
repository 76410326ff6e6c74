//! Event decoding (docs/contract.md section 1): bytes from a source become a validated
//! `Event`, or a `DecodeError` whose reason code travels with the dead letter.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::identity::{RawIdentity, is_known_region};
use crate::ids::{ContactId, InvalidId, SessionId, TenantId};
use crate::model::{Channel, Limits, Timestamp};

pub const SCHEMA_V1: &str = "contact-event/v1";

/// What some Windows tools put before a UTF-8 text.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Why an event cannot be processed. The `code` is stable: it names the reason
/// in dead-letter headers and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("missing required field: {0}")]
    MissingField(String),
    #[error("wrong type: {0}")]
    WrongType(String),
    #[error("unknown schema version {0:?}")]
    UnknownSchema(String),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("invalid value: {0}")]
    InvalidValue(String),
    #[error("too large: {0}")]
    TooLarge(String),
}

impl DecodeError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "not_json",
            Self::MissingField(_) => "missing_field",
            Self::WrongType(_) => "wrong_type",
            Self::UnknownSchema(_) => "unknown_schema",
            Self::UnknownType(_) => "unknown_type",
            Self::InvalidValue(_) => "invalid_value",
            Self::TooLarge(_) => "too_large",
        }
    }

    fn from_serde(error: serde_json::Error) -> Self {
        let message = error.to_string();
        match error.classify() {
            serde_json::error::Category::Data if message.starts_with("missing field") => Self::MissingField(message),
            serde_json::error::Category::Data => Self::WrongType(message),
            _ => Self::NotJson(message),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Author {
    Guest,
    Operator,
    Bot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EmailDirection {
    Received,
    Sent,
}

/// What happened, with the payload of its type.
#[derive(Clone, Debug, PartialEq)]
pub enum EventBody {
    TenantConfigured {
        identifying_params: Vec<String>,
        default_phone_region: Option<String>,
    },
    SessionStarted {
        invited: bool,
        direction: Option<Direction>,
    },
    IdentityProvided,
    MessagePosted {
        message_id: String,
        author: Author,
        author_name: Option<String>,
        text: String,
    },
    SessionEnded {
        duration_ms: Option<u64>,
    },
    Email {
        direction: EmailDirection,
        thread_id: String,
        message_id: String,
        subject: String,
        text: String,
        participants: Vec<String>,
    },
    CallEnded {
        direction: Direction,
        duration_ms: u64,
        transcript: Option<String>,
    },
    NoteAdded {
        note_id: String,
        author: String,
        text: String,
    },
    ContactCreated,
    ContactUpdated {
        set_name: Option<String>,
        add: Option<Box<RawIdentity>>,
        remove: Option<Box<RawIdentity>>,
    },
    ContactDeleted {
        target: ContactRef,
    },
    SessionLinked {
        session_id: SessionId,
        contact_id: ContactId,
    },
    SessionUnlinked {
        session_id: SessionId,
    },
    /// An operator merges `from` into `into` (docs/contract.md 3.7).
    ContactMerged {
        into: ContactRef,
        from: ContactId,
    },
    /// An operator settles an open identity conflict as "leave as is".
    ConflictDismissed {
        conflict_id: String,
    },
}

/// Whom an operator's event names: a contact, or the contact of a session
/// (docs/contract.md 3.8). A contact id wins when both are given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContactRef {
    Contact(ContactId),
    OfSession(SessionId),
}

impl EventBody {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::TenantConfigured { .. } => "tenant.configured",
            Self::SessionStarted { .. } => "session.started",
            Self::IdentityProvided => "identity.provided",
            Self::MessagePosted { .. } => "message.posted",
            Self::SessionEnded { .. } => "session.ended",
            Self::Email { direction: EmailDirection::Received, .. } => "email.received",
            Self::Email { direction: EmailDirection::Sent, .. } => "email.sent",
            Self::CallEnded { .. } => "call.ended",
            Self::NoteAdded { .. } => "note.added",
            Self::ContactCreated => "contact.created",
            Self::ContactUpdated { .. } => "contact.updated",
            Self::ContactDeleted { .. } => "contact.deleted",
            Self::SessionLinked { .. } => "session.linked",
            Self::SessionUnlinked { .. } => "session.unlinked",
            Self::ContactMerged { .. } => "contact.merged",
            Self::ConflictDismissed { .. } => "conflict.dismissed",
        }
    }
}

/// A decoded, validated inbound event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event_id: String,
    pub tenant_id: TenantId,
    pub occurred_at: Timestamp,
    pub channel: Channel,
    pub session_id: Option<SessionId>,
    pub contact_id: Option<ContactId>,
    pub identity: Option<RawIdentity>,
    pub body: EventBody,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    schema: String,
    event_id: String,
    tenant_id: String,
    #[serde(rename = "type")]
    kind: String,
    occurred_at: String,
    channel: Channel,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    contact_id: Option<String>,
    #[serde(default, deserialize_with = "identity_object")]
    identity: Option<RawIdentity>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct TenantConfiguredPayload {
    identifying_params: Vec<String>,
    #[serde(default)]
    default_phone_region: Option<String>,
}

#[derive(Deserialize, Default)]
struct SessionStartedPayload {
    #[serde(default)]
    invited: bool,
    #[serde(default)]
    direction: Option<Direction>,
}

#[derive(Deserialize)]
struct MessagePayload {
    message_id: String,
    author: Author,
    #[serde(default)]
    author_name: Option<String>,
    text: String,
}

#[derive(Deserialize, Default)]
struct SessionEndedPayload {
    #[serde(default)]
    duration_ms: Option<u64>,
}

#[derive(Deserialize)]
struct EmailPayload {
    thread_id: String,
    message_id: String,
    subject: String,
    text: String,
    participants: Vec<String>,
}

#[derive(Deserialize)]
struct CallPayload {
    direction: Direction,
    duration_ms: u64,
    #[serde(default)]
    transcript: Option<String>,
}

#[derive(Deserialize)]
struct NotePayload {
    note_id: String,
    author: String,
    text: String,
}

#[derive(Deserialize)]
struct ContactMergedPayload {
    from_contact_id: String,
}

#[derive(Deserialize)]
struct ConflictDismissedPayload {
    conflict_id: String,
}

#[derive(Deserialize, Default)]
struct ContactUpdatedPayload {
    #[serde(default)]
    set_name: Option<String>,
    #[serde(default, deserialize_with = "identity_object")]
    add: Option<RawIdentity>,
    #[serde(default, deserialize_with = "identity_object")]
    remove: Option<RawIdentity>,
}

/// An identity block as the contract writes it: a JSON object, or null. Serde
/// alone would also take a JSON array for the struct, which the schema refuses.
fn identity_object<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<RawIdentity>, D::Error> {
    struct ObjectOrNull;
    impl<'de> serde::de::Visitor<'de> for ObjectOrNull {
        type Value = Option<RawIdentity>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("an identity object or null")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            RawIdentity::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    deserializer.deserialize_option(ObjectOrNull)
}

fn payload<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>, kind: &str) -> Result<T, DecodeError> {
    let raw = raw.ok_or_else(|| DecodeError::MissingField(format!("payload (required for {kind})")))?;
    serde_json::from_str(raw.get()).map_err(|e| match DecodeError::from_serde(e) {
        DecodeError::MissingField(m) => DecodeError::MissingField(format!("payload of {kind}: {m}")),
        DecodeError::WrongType(m) => DecodeError::WrongType(format!("payload of {kind}: {m}")),
        other => other,
    })
}

fn optional_payload<'a, T: Deserialize<'a> + Default>(raw: Option<&'a RawValue>, kind: &str) -> Result<T, DecodeError> {
    match raw {
        Some(raw) if raw.get() != "null" => payload(Some(raw), kind),
        _ => Ok(T::default()),
    }
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), DecodeError> {
    let chars = value.chars().count();
    if chars == 0 || chars > max {
        return Err(DecodeError::InvalidValue(format!("{field} must be 1..{max} characters")));
    }
    Ok(())
}

fn check_identifier_count(identity: Option<&RawIdentity>, body: &EventBody, limits: &Limits) -> Result<(), DecodeError> {
    let most = limits.identifiers_per_event;
    let mut carried = identity.map_or(0, RawIdentity::values);
    if let EventBody::ContactUpdated { add, remove, .. } = body {
        carried += add.as_deref().map_or(0, RawIdentity::values) + remove.as_deref().map_or(0, RawIdentity::values);
    }
    if carried > most {
        return Err(DecodeError::TooLarge(format!("{carried} identifier values, at most {most}")));
    }
    if let EventBody::Email { participants, .. } = body
        && participants.len() > most
    {
        let count = participants.len();
        return Err(DecodeError::TooLarge(format!("{count} participants, at most {most}")));
    }
    Ok(())
}

fn require<T: Clone>(field: &str, value: Option<&T>, kind: &str) -> Result<T, DecodeError> {
    value.cloned().ok_or_else(|| DecodeError::MissingField(format!("{field} (required for {kind})")))
}

impl From<InvalidId> for DecodeError {
    fn from(error: InvalidId) -> Self {
        Self::InvalidValue(error.0)
    }
}

/// The contact an operator's event names, by contact id or else by session.
fn contact_ref(contact_id: Option<&ContactId>, session_id: Option<&SessionId>, kind: &str) -> Result<ContactRef, DecodeError> {
    match (contact_id, session_id) {
        (Some(contact), _) => Ok(ContactRef::Contact(contact.clone())),
        (None, Some(session)) => Ok(ContactRef::OfSession(session.clone())),
        (None, None) => Err(DecodeError::MissingField(format!("contact_id or session_id (required for {kind})"))),
    }
}

/// Decodes one message value within the default limits.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    decode_within(bytes, &Limits::default())
}

/// Decodes one message value. Unknown extra fields are ignored (docs/contract.md 6).
pub fn decode_within(bytes: &[u8], limits: &Limits) -> Result<Event, DecodeError> {
    if bytes.len() > limits.event_bytes {
        return Err(DecodeError::TooLarge(format!("more than {} bytes", limits.event_bytes)));
    }
    if bytes.starts_with(UTF8_BOM) {
        return Err(DecodeError::NotJson("starts with a byte order mark (U+FEFF), which JSON text must not".into()));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::NotJson(format!("not UTF-8: {e}")))?;
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(DecodeError::from_serde)?;
    if envelope.schema != SCHEMA_V1 {
        return Err(DecodeError::UnknownSchema(envelope.schema));
    }
    check_len("event_id", &envelope.event_id, 128)?;
    let tenant_id = TenantId::parse(envelope.tenant_id)?;
    let occurred_at = Timestamp::parse_rfc3339(&envelope.occurred_at)
        .ok_or_else(|| DecodeError::InvalidValue("occurred_at must be an RFC 3339 timestamp with offset".into()))?;
    let session_id = envelope.session_id.map(SessionId::parse).transpose()?;
    let contact_id = envelope.contact_id.map(ContactId::parse).transpose()?;
    let kind = envelope.kind.as_str();
    let raw = envelope.payload;
    let body = match kind {
        "tenant.configured" => {
            let p: TenantConfiguredPayload = payload(raw, kind)?;
            if let Some(region) = &p.default_phone_region
                && !is_known_region(region)
            {
                return Err(DecodeError::InvalidValue(format!("default_phone_region {region:?} is not ISO 3166 alpha-2")));
            }
            EventBody::TenantConfigured { identifying_params: p.identifying_params, default_phone_region: p.default_phone_region }
        }
        "session.started" => {
            let p: SessionStartedPayload = optional_payload(raw, kind)?;
            EventBody::SessionStarted { invited: p.invited, direction: p.direction }
        }
        "identity.provided" => EventBody::IdentityProvided,
        "message.posted" => {
            let p: MessagePayload = payload(raw, kind)?;
            EventBody::MessagePosted { message_id: p.message_id, author: p.author, author_name: p.author_name, text: p.text }
        }
        "session.ended" => {
            EventBody::SessionEnded { duration_ms: optional_payload::<SessionEndedPayload>(raw, kind)?.duration_ms }
        }
        "email.received" | "email.sent" => {
            let p: EmailPayload = payload(raw, kind)?;
            let direction = if kind == "email.sent" { EmailDirection::Sent } else { EmailDirection::Received };
            EventBody::Email {
                direction,
                thread_id: p.thread_id,
                message_id: p.message_id,
                subject: p.subject,
                text: p.text,
                participants: p.participants,
            }
        }
        "call.ended" => {
            let p: CallPayload = payload(raw, kind)?;
            EventBody::CallEnded { direction: p.direction, duration_ms: p.duration_ms, transcript: p.transcript }
        }
        "note.added" => {
            let p: NotePayload = payload(raw, kind)?;
            EventBody::NoteAdded { note_id: p.note_id, author: p.author, text: p.text }
        }
        "contact.created" => EventBody::ContactCreated,
        "contact.updated" => {
            let p: ContactUpdatedPayload = optional_payload(raw, kind)?;
            EventBody::ContactUpdated { set_name: p.set_name, add: p.add.map(Box::new), remove: p.remove.map(Box::new) }
        }
        "contact.deleted" => EventBody::ContactDeleted { target: contact_ref(contact_id.as_ref(), session_id.as_ref(), kind)? },
        "session.linked" => EventBody::SessionLinked {
            session_id: require("session_id", session_id.as_ref(), kind)?,
            contact_id: require("contact_id", contact_id.as_ref(), kind)?,
        },
        "session.unlinked" => EventBody::SessionUnlinked { session_id: require("session_id", session_id.as_ref(), kind)? },
        "contact.merged" => {
            let p: ContactMergedPayload = payload(raw, kind)?;
            EventBody::ContactMerged {
                into: contact_ref(contact_id.as_ref(), session_id.as_ref(), kind)?,
                from: ContactId::parse(p.from_contact_id)?,
            }
        }
        "conflict.dismissed" => {
            let p: ConflictDismissedPayload = payload(raw, kind)?;
            check_len("conflict_id", &p.conflict_id, 128)?;
            EventBody::ConflictDismissed { conflict_id: p.conflict_id }
        }
        other => return Err(DecodeError::UnknownType(other.to_owned())),
    };
    match &body {
        EventBody::SessionStarted { .. }
        | EventBody::IdentityProvided
        | EventBody::MessagePosted { .. }
        | EventBody::SessionEnded { .. }
        | EventBody::Email { .. }
        | EventBody::CallEnded { .. } => {
            require("session_id", session_id.as_ref(), kind)?;
        }
        EventBody::NoteAdded { .. } | EventBody::ContactUpdated { .. } => {
            contact_ref(contact_id.as_ref(), session_id.as_ref(), kind)?;
        }
        EventBody::TenantConfigured { .. }
        | EventBody::ContactCreated
        | EventBody::ContactDeleted { .. }
        | EventBody::SessionLinked { .. }
        | EventBody::SessionUnlinked { .. }
        | EventBody::ContactMerged { .. }
        | EventBody::ConflictDismissed { .. } => {}
    }
    check_identifier_count(envelope.identity.as_ref(), &body, limits)?;
    Ok(Event {
        event_id: envelope.event_id,
        tenant_id,
        occurred_at,
        channel: envelope.channel,
        session_id,
        contact_id,
        identity: envelope.identity,
        body,
    })
}

/// The Kafka key connectors give an event (docs/contract.md 1):
/// `tenant_id/session_id`, or the contact for events without a session; `None`
/// for a line that is no JSON object with a tenant. Only a partitioning hint:
/// nothing reads it back.
pub fn partition_key(line: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Keys {
        tenant_id: Option<String>,
        session_id: Option<String>,
        contact_id: Option<String>,
    }
    let keys: Keys = serde_json::from_slice(line).ok()?;
    let tenant = keys.tenant_id?;
    Some(format!("{tenant}/{}", keys.session_id.or(keys.contact_id).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(extra: &str) -> String {
        format!(
            r#"{{"schema":"contact-event/v1","event_id":"e1","tenant_id":"acme","occurred_at":"2026-11-02T09:00:05+01:00","channel":"chat","session_id":"s1"{extra}}}"#
        )
    }

    #[test]
    fn the_partition_key_is_the_session_or_else_the_contact_under_the_tenant() {
        assert_eq!(partition_key(line("").as_bytes()).as_deref(), Some("acme/s1"));
        let without_session = r#"{"tenant_id":"acme","contact_id":"c-1","type":"contact.deleted"}"#;
        assert_eq!(partition_key(without_session.as_bytes()).as_deref(), Some("acme/c-1"));
        assert_eq!(partition_key(br#"{"tenant_id":"acme"}"#).as_deref(), Some("acme/"));
        assert_eq!(partition_key(br#"{"session_id":"s1"}"#), None, "no tenant");
        assert_eq!(partition_key(b"not json"), None);
    }

    #[test]
    fn a_message_decodes_with_its_payload_and_utc_time() {
        let event = decode(
            line(r#","type":"message.posted","payload":{"message_id":"m1","author":"guest","text":"hi"},"future":1"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(event.occurred_at.to_rfc3339(), "2026-11-02T08:00:05Z");
        assert!(matches!(event.body, EventBody::MessagePosted { ref text, author: Author::Guest, .. } if text == "hi"));
    }

    #[test]
    fn rejections_carry_a_reason_code() {
        let cases = [
            ("not json", "not_json".to_owned()),
            (r#"{"schema":"contact-event/v2"}"#, "missing_field".into()),
            (&line(r#","type":"message.posted","payload":{"text":"x"}"#), "missing_field".into()),
            (&line(r#","type":"message.posted","payload":{"message_id":1,"author":"guest","text":"x"}"#), "wrong_type".into()),
            (&line(r#","type":"identity.provided","identity":[]"#), "wrong_type".into()),
            (&line(r#","type":"contact.updated","payload":{"add":["a@b.cz"]}"#), "wrong_type".into()),
            (&line(r#","type":"session.exploded""#), "unknown_type".into()),
            (&line(r#","type":"session.started""#).replace(r#""chat""#, r#""fax""#), "wrong_type".into()),
            (&line(r#","type":"session.started""#).replace("v1", "v9"), "unknown_schema".into()),
            (&line(r#","type":"session.started""#).replace("acme", "ac me"), "invalid_value".into()),
            (&line(r#","type":"session.started""#).replace("+01:00", ""), "invalid_value".into()),
            (&line(r#","type":"contact.deleted""#).replace(r#","session_id":"s1""#, ""), "missing_field".into()),
        ];
        for (input, code) in cases {
            assert_eq!(decode(input.as_bytes()).unwrap_err().code(), code, "{input}");
        }
    }

    #[test]
    fn an_event_over_the_size_or_identifier_limits_is_too_large() {
        let limits = Limits::default();
        let padded = line(&format!(r#","type":"session.started","pad":"{}""#, "x".repeat(limits.event_bytes)));
        let emails: Vec<String> = (0..=limits.identifiers_per_event).map(|n| format!("u{n}@example.com")).collect();
        let identity = serde_json::json!({ "emails": emails }).to_string();
        let many = line(&format!(r#","type":"identity.provided","identity":{identity}"#));
        let split = line(&format!(
            r#","type":"contact.updated","identity":{{"phones":["1"]}},"payload":{{"add":{identity},"remove":{{}}}}"#
        ));
        let participants = serde_json::json!(emails).to_string();
        let thread = line(&format!(
            r#","type":"email.received","payload":{{"thread_id":"t","message_id":"m","subject":"s","text":"x","participants":{participants}}}"#
        ));
        for (input, detail) in [
            (padded.clone(), "more than 1048576 bytes"),
            (many.clone(), "101 identifier values, at most 100"),
            (split, "102 identifier values, at most 100"),
            (thread, "101 participants, at most 100"),
        ] {
            let error = decode(input.as_bytes()).unwrap_err();
            assert_eq!((error.code(), error.to_string()), ("too_large", format!("too large: {detail}")));
        }
        let at_the_limit = line(&format!(
            r#","type":"identity.provided","identity":{}"#,
            serde_json::json!({ "emails": &emails[..limits.identifiers_per_event] })
        ));
        assert!(decode(at_the_limit.as_bytes()).is_ok());
        let raised = Limits { event_bytes: 2 << 20, identifiers_per_event: 200, ..limits };
        assert!(decode_within(many.as_bytes(), &raised).is_ok(), "a configured limit is the one applied");
        assert!(decode_within(padded.as_bytes(), &raised).is_ok());
    }

    #[test]
    fn session_scoped_types_require_a_session() {
        let without_session = line(r#","type":"session.ended""#).replace(r#","session_id":"s1""#, "");
        assert_eq!(decode(without_session.as_bytes()).unwrap_err().code(), "missing_field");
    }

    #[test]
    fn invalid_utf8_is_rejected_not_panicking() {
        assert_eq!(decode(&[0xff, 0xfe, b'{']).unwrap_err().code(), "not_json");
    }

    #[test]
    fn a_not_json_detail_says_what_is_wrong() {
        let detail = |bytes: &[u8]| decode(bytes).unwrap_err().to_string();
        assert!(detail(&[0xff, b'{']).starts_with("not JSON: not UTF-8: "), "{}", detail(&[0xff, b'{']));
        assert!(detail(b"{\"schema\":").starts_with("not JSON: EOF while parsing"), "{}", detail(b"{\"schema\":"));
        let with_bom = [UTF8_BOM, line(r#","type":"session.started""#).as_bytes()].concat();
        assert_eq!(detail(&with_bom), "not JSON: starts with a byte order mark (U+FEFF), which JSON text must not");
    }
}

//! The directory's domain records, shared by resolution, stores, the index and the
//! outputs: channels, identifiers, contacts, sessions, identifier claims, timeline
//! entries and changes. The core's bottom layer with `ids`, the only module it
//! imports, so `identity` (normalization) and `event` (decoding) build on it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use crate::ids::{ContactId, SessionId, TenantId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Chat,
    Email,
    Messenger,
    Whatsapp,
    Apple,
    Vk,
    Voip,
    Operator,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Email => "email",
            Self::Messenger => "messenger",
            Self::Whatsapp => "whatsapp",
            Self::Apple => "apple",
            Self::Vk => "vk",
            Self::Voip => "voip",
            Self::Operator => "operator",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kinds of identifier, declared in resolution priority order (docs/contract.md 3.2):
/// the derived `Ord` is the priority, highest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentifierKind {
    Param,
    Facebook,
    Whatsapp,
    Apple,
    Vk,
    Email,
    Phone,
    Browser,
}

impl IdentifierKind {
    pub const ALL: [IdentifierKind; 8] =
        [Self::Param, Self::Facebook, Self::Whatsapp, Self::Apple, Self::Vk, Self::Email, Self::Phone, Self::Browser];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Param => "param",
            Self::Facebook => "facebook",
            Self::Whatsapp => "whatsapp",
            Self::Apple => "apple",
            Self::Vk => "vk",
            Self::Email => "email",
            Self::Phone => "phone",
            Self::Browser => "browser",
        }
    }

    /// A browser id may find an existing contact but never founds one (docs/contract.md 3.3).
    pub fn is_strong(self) -> bool {
        self != Self::Browser
    }
}

impl FromStr for IdentifierKind {
    type Err = IdentifierParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| IdentifierParseError::UnknownKind(s.to_owned()))
    }
}

/// A canonical identifier. `value` is already normalized: an e-mail address, an
/// E.164 phone, `page_id:psid` for Facebook, `name=value` for custom parameters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identifier {
    pub kind: IdentifierKind,
    pub value: String,
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.value)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentifierParseError {
    #[error("expected KIND:VALUE, e.g. email:jana@example.cz")]
    MissingSeparator,
    #[error("unknown identifier kind {0:?}; one of param, facebook, whatsapp, apple, vk, email, phone, browser")]
    UnknownKind(String),
    #[error("{0:?} is not a usable {1} identifier")]
    Invalid(String, &'static str),
}

impl Identifier {
    /// For custom parameters: the parameter's name and value.
    pub fn param_parts(&self) -> Option<(&str, &str)> {
        (self.kind == IdentifierKind::Param).then(|| self.value.split_once('=')).flatten()
    }
}

pub const CHANGE_SCHEMA_V1: &str = "directory-change/v1";

/// An instant with microsecond precision, UTC. Serialized as RFC 3339.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    pub fn now() -> Self {
        Self(i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX))
    }

    /// Requires an explicit offset, as the contract does.
    /// RFC 3339's grammar, as JSON Schema's `date-time` reads it: `T` between
    /// date and time (the parser would take a space too) and a year from 1.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        if !matches!(text.as_bytes().get(10), Some(b'T' | b't')) {
            return None;
        }
        let parsed = OffsetDateTime::parse(text, &Rfc3339).ok().filter(|t| t.year() >= 1)?;
        i64::try_from(parsed.unix_timestamp_nanos() / 1_000).ok().map(Self)
    }

    pub fn to_rfc3339(self) -> String {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| self.0.to_string())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse_rfc3339(&text).ok_or_else(|| serde::de::Error::custom("expected an RFC 3339 timestamp"))
    }
}

/// Ids derived from the causing event, so a redelivery or a replay after a crash
/// produces the same contact and change ids.
pub fn derived_id(prefix: &str, parts: &[&str]) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let hex = hasher.finalize().to_hex();
    // Not `format!`: this runs for every change, and the formatting machinery
    // was most of its cost (perf).
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    id.push_str(&hex.as_str()[..24]);
    id
}

/// The point in an ordering at which a field was written: `occurred_at`, then the
/// event id so that two writes at the same instant still have one winner.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    pub at: Timestamp,
    pub event_id: String,
}

/// Bounds on what one input may cost (docs/contract.md 1 and 3.4); the
/// `[limits]` section of the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The most bytes one event may take. Default 1048576 (1 MiB), Kafka's default message size.
    pub event_bytes: usize,
    /// The most identifier values one event carries in `identity`, `add` and
    /// `remove` together, and the most e-mail participants. Default 100.
    pub identifiers_per_event: usize,
    /// The most identifiers a contact takes by resolution and operator edits. Default 1000.
    pub identifiers_per_contact: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { event_bytes: 1 << 20, identifiers_per_event: 100, identifiers_per_contact: 1000 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantConfig {
    pub identifying_params: Vec<String>,
    pub default_phone_region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
}

/// Operator names outrank guest names whatever their age (docs/contract.md 3.5); within
/// one source the newer write wins. The derived order encodes exactly that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameSource {
    Guest,
    Operator,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameField {
    pub value: String,
    pub source: NameSource,
    pub version: Version,
}

impl NameField {
    pub fn supersedes(&self, current: Option<&NameField>) -> bool {
        current.is_none_or(|current| (self.source, &self.version) > (current.source, &current.version))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedIdentifier {
    pub identifier: Identifier,
    pub added_at: Timestamp,
    /// How the identifier came to this contact; none on records written
    /// before provenance was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Provenance>,
}

/// Why an identifier or a session belongs to its contact: the rule of
/// docs/contract.md section 3 that attached it, the event it was applied to,
/// and the merges that carried it here since. Recorded when the claim or the
/// attachment is written, so `explain` reads it instead of guessing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub rule: Rule,
    pub event_id: String,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merges: Vec<MergeStep>,
}

/// The rules that attach an identifier or a session to a contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The event founded the contact (3.3), or an operator created it.
    FoundedContact,
    /// An identifier nobody owned, of an event resolved to the contact (3.4).
    UnownedIdentifier,
    /// An operator added it (`contact.updated`).
    OperatorAdd,
    /// The first e-mail participant already in the directory took the
    /// message (3.6), or the first one founded the contact.
    EmailThread,
    /// Seen while its session had no contact; claimed when the session resolved (3.3).
    WaitedInSession,
    /// The event named the contact (`contact_id`, 3.1).
    ExplicitContact,
    /// The session's event carried an identifier the contact owns (3.2).
    OwnerOfIdentifier,
    /// An operator's "Select Existing" (`session.linked`, 3.7).
    OperatorLink,
}

/// One merge that moved an identifier or a session: from which contact, by
/// which event, and whether a link (3.7) or an operator's merge caused it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeStep {
    pub from_contact_id: ContactId,
    pub event_id: String,
    pub at: Timestamp,
    pub by: MergedBy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MergedBy {
    #[serde(rename = "session.linked")]
    SessionLinked,
    #[serde(rename = "contact.merged")]
    ContactMerged,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub id: ContactId,
    pub name: Option<NameField>,
    pub identifiers: Vec<OwnedIdentifier>,
    pub created_at: Timestamp,
    /// The open conflicts this contact is owner or claimant of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<ConflictLink>,
}

impl Contact {
    pub fn owns(&self, identifier: &Identifier) -> bool {
        self.identifiers.iter().any(|owned| &owned.identifier == identifier)
    }

    pub fn state(&self) -> ContactState {
        let mut state = ContactState { name: self.name.as_ref().map(|n| n.value.clone()), ..ContactState::default() };
        let mut params: BTreeMap<String, (Timestamp, String)> = BTreeMap::new();
        for owned in &self.identifiers {
            let id = &owned.identifier;
            let list = match id.kind {
                IdentifierKind::Email => &mut state.emails,
                IdentifierKind::Phone => &mut state.phones,
                IdentifierKind::Facebook => &mut state.channel_ids.facebook,
                IdentifierKind::Whatsapp => &mut state.channel_ids.whatsapp,
                IdentifierKind::Apple => &mut state.channel_ids.apple,
                IdentifierKind::Vk => &mut state.channel_ids.vk,
                IdentifierKind::Browser => &mut state.channel_ids.browser,
                IdentifierKind::Param => {
                    // A contact may hold several values of one parameter over time;
                    // the snapshot shows the newest (last writer wins).
                    if let Some((name, value)) = id.param_parts() {
                        let candidate = (owned.added_at, value.to_owned());
                        let slot = params.entry(name.to_owned()).or_insert_with(|| candidate.clone());
                        if candidate > *slot {
                            *slot = candidate;
                        }
                    }
                    continue;
                }
            };
            list.push(id.value.clone());
        }
        for list in [
            &mut state.emails,
            &mut state.phones,
            &mut state.channel_ids.facebook,
            &mut state.channel_ids.whatsapp,
            &mut state.channel_ids.apple,
            &mut state.channel_ids.vk,
            &mut state.channel_ids.browser,
        ] {
            list.sort();
        }
        state.params = params.into_iter().map(|(name, (_, value))| (name, value)).collect();
        state
    }
}

/// A contact row: alive, merged into another (a redirect), or erased (a tombstone
/// that keeps older events from bringing it back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ContactRecord {
    Active(Contact),
    Merged { into: ContactId },
    Deleted { at: Timestamp },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub contact_id: Option<ContactId>,
    /// Set when the session's contact was erased: older events of the session are
    /// part of the erased history.
    pub erased_at: Option<Timestamp>,
    /// Identifiers seen while the session had no contact (a browser id, say):
    /// claimed by the contact the session resolves to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_identifiers: Vec<Identifier>,
    /// Entries of the session wait in the pending partition; when false,
    /// resolving the session need not read it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub has_pending: bool,
    /// How the session came to its contact, while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_by: Option<Provenance>,
}

/// Who holds an identifier: a contact, or nobody since `at` (released by an
/// operator, or erased with its contact).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Claim {
    Owned { contact_id: ContactId },
    Released { at: Timestamp, erased: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    #[serde(rename = "session.started")]
    SessionStarted,
    #[serde(rename = "message")]
    Message,
    #[serde(rename = "session.ended")]
    SessionEnded,
    #[serde(rename = "email")]
    Email,
    #[serde(rename = "call")]
    Call,
    #[serde(rename = "note")]
    Note,
    #[serde(rename = "contact.created")]
    ContactCreated,
    #[serde(rename = "name.set")]
    NameSet,
    #[serde(rename = "identifier.added")]
    IdentifierAdded,
    #[serde(rename = "identifier.removed")]
    IdentifierRemoved,
    #[serde(rename = "identity.conflict")]
    IdentityConflict,
    #[serde(rename = "session.linked")]
    SessionLinked,
    #[serde(rename = "session.unlinked")]
    SessionUnlinked,
    #[serde(rename = "contact.merged")]
    ContactMerged,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionStarted => "session.started",
            Self::Message => "message",
            Self::SessionEnded => "session.ended",
            Self::Email => "email",
            Self::Call => "call",
            Self::Note => "note",
            Self::ContactCreated => "contact.created",
            Self::NameSet => "name.set",
            Self::IdentifierAdded => "identifier.added",
            Self::IdentifierRemoved => "identifier.removed",
            Self::IdentityConflict => "identity.conflict",
            Self::SessionLinked => "session.linked",
            Self::SessionUnlinked => "session.unlinked",
            Self::ContactMerged => "contact.merged",
        }
    }
}

/// An entry's free-form details, kept as serialized JSON: built once when the
/// entry is made, then copied byte for byte into rows, changes and documents.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Details(Box<serde_json::value::RawValue>);

impl Details {
    pub fn of(value: &impl Serialize) -> Self {
        Self(serde_json::value::to_raw_value(value).expect("details serialize to JSON"))
    }

    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    /// One string field of the details, if present.
    pub fn text_field(&self, key: &str) -> Option<String> {
        let map: BTreeMap<&str, &serde_json::value::RawValue> = serde_json::from_str(self.0.get()).ok()?;
        map.get(key).and_then(|raw| serde_json::from_str(raw.get()).ok())
    }
}

impl PartialEq for Details {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for Details {}

/// One line of a contact's history. `entry_id` is unique within a tenant and
/// derived from the causing event, so replays overwrite instead of duplicating.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub entry_id: String,
    pub occurred_at: Timestamp,
    pub channel: Channel,
    pub session_id: Option<SessionId>,
    pub kind: EntryKind,
    pub text: String,
    pub details: Details,
}

/// An identity conflict (docs/contract.md 3.4) as the review queue keeps it:
/// an identifier a contact claimed while another owned it (or while the
/// claimant held the most identifiers a contact may). Open until the event
/// that dismisses or settles it records its `closed`; a closed conflict never
/// opens again, whoever holds the identifier later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRecord {
    pub conflict_id: String,
    pub identifier: Identifier,
    /// The contact owning the identifier when the conflict was raised; none
    /// when the claimant was at its identifier limit.
    pub owner_contact_id: Option<ContactId>,
    pub claimant_contact_id: ContactId,
    pub session_id: Option<SessionId>,
    pub event_id: String,
    pub raised_at: Timestamp,
    /// Records stored before closing was recorded said only `dismissed`,
    /// which is a closing too.
    #[serde(default, alias = "dismissed", skip_serializing_if = "Option::is_none")]
    pub closed: Option<Closure>,
    /// Whether its parties' records list it, so that the events settling it
    /// record its closing. Conflicts stored before that are judged from the
    /// claims as they are when read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closure_recorded: bool,
}

/// The event that closed a conflict, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closure {
    pub event_id: String,
    pub at: Timestamp,
    #[serde(default)]
    pub reason: ClosedBy,
}

/// Why a conflict closed (docs/contract.md 3.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    /// An operator left it as it is (`conflict.dismissed`).
    #[default]
    Dismissed,
    /// Owner and claimant became one contact (a merge or a link).
    Merged,
    /// The owner no longer holds the identifier (removed, or the owner erased).
    Released,
    /// The claimant was erased.
    ClaimantErased,
    /// The claimant came to hold the identifier (one it was refused at its limit).
    Claimed,
}

/// An open conflict as a party to it keeps it in its contact record, so that
/// the event that merges, erases or releases the party finds what it settles
/// without a query, and can record its closing without reading the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictLink {
    pub role: ConflictRole,
    pub conflict: ConflictRecord,
}

impl ConflictLink {
    /// The other party, as the conflict was raised (merges not followed).
    pub fn other(&self) -> Option<&ContactId> {
        match self.role {
            ConflictRole::Owner => Some(&self.conflict.claimant_contact_id),
            ConflictRole::Claimant => self.conflict.owner_contact_id.as_ref(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictRole {
    Owner,
    Claimant,
}

/// Where a page of a timeline, or of the conflict queue, starts: strictly
/// older than this position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineCursor {
    pub occurred_at: Timestamp,
    pub entry_id: String,
}

impl TimelineCursor {
    pub fn encode(&self) -> String {
        format!("{}/{}", self.occurred_at.micros(), self.entry_id)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (micros, entry_id) = text.split_once('/')?;
        Some(Self { occurred_at: Timestamp::from_micros(micros.parse().ok()?), entry_id: entry_id.to_owned() })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelIds {
    pub facebook: Vec<String>,
    pub whatsapp: Vec<String>,
    pub apple: Vec<String>,
    pub vk: Vec<String>,
    pub browser: Vec<String>,
}

/// A contact's fields as outputs show them (docs/contract.md 5 and 7).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactState {
    pub name: Option<String>,
    pub emails: Vec<String>,
    pub phones: Vec<String>,
    pub channel_ids: ChannelIds,
    pub params: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChangeKind {
    #[serde(rename = "contact.created")]
    ContactCreated,
    #[serde(rename = "contact.updated")]
    ContactUpdated,
    #[serde(rename = "identifier.added")]
    IdentifierAdded,
    #[serde(rename = "identifier.removed")]
    IdentifierRemoved,
    #[serde(rename = "identity.conflict")]
    IdentityConflict,
    #[serde(rename = "session.linked")]
    SessionLinked,
    #[serde(rename = "session.unlinked")]
    SessionUnlinked,
    #[serde(rename = "contact.merged")]
    ContactMerged,
    #[serde(rename = "contact.deleted")]
    ContactDeleted,
    #[serde(rename = "timeline.appended")]
    TimelineAppended,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContactCreated => "contact.created",
            Self::ContactUpdated => "contact.updated",
            Self::IdentifierAdded => "identifier.added",
            Self::IdentifierRemoved => "identifier.removed",
            Self::IdentityConflict => "identity.conflict",
            Self::SessionLinked => "session.linked",
            Self::SessionUnlinked => "session.unlinked",
            Self::ContactMerged => "contact.merged",
            Self::ContactDeleted => "contact.deleted",
            Self::TimelineAppended => "timeline.appended",
        }
    }
}

/// How a session came to be attached to a contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkedBy {
    Operator,
    Resolution,
}

/// What a change carries; which fields are set depends on its type (see
/// `schemas/directory-change.v1.schema.json`). Unset fields are omitted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeData {
    /// The contact's state after the event, on contact changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Box<ContactState>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_contact_id: Option<ContactId>,
    /// On `identity.conflict`: the conflict's id in the review queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<LinkedBy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_contact_id: Option<ContactId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_by: Option<NameSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<Box<TimelineEntry>>,
}

/// One outbound directory change (docs/contract.md 5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub schema: String,
    pub change_id: String,
    pub tenant_id: TenantId,
    pub contact_id: ContactId,
    #[serde(rename = "type")]
    pub kind: ChangeKind,
    pub occurred_at: Timestamp,
    pub caused_by: String,
    pub data: ChangeData,
}

/// One line of the directory snapshot (docs/contract.md 7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedContact {
    pub tenant_id: TenantId,
    pub contact_id: ContactId,
    #[serde(flatten)]
    pub state: ContactState,
    pub sessions: Vec<SessionId>,
    pub timeline_entries: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(value: &str, source: NameSource, at: i64) -> NameField {
        NameField { value: value.into(), source, version: Version { at: Timestamp::from_micros(at), event_id: format!("e{at}") } }
    }

    #[test]
    fn an_operator_name_outranks_any_guest_name() {
        let operator = name("Op", NameSource::Operator, 1);
        let newer_guest = name("Guest", NameSource::Guest, 99);
        assert!(operator.supersedes(Some(&newer_guest)));
        assert!(!newer_guest.supersedes(Some(&operator)));
    }

    #[test]
    fn within_one_source_the_newer_name_wins() {
        assert!(name("B", NameSource::Guest, 2).supersedes(Some(&name("A", NameSource::Guest, 1))));
        assert!(!name("A", NameSource::Guest, 1).supersedes(Some(&name("B", NameSource::Guest, 2))));
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339_in_utc() {
        let t = Timestamp::parse_rfc3339("2026-11-02T10:00:00.123456+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-02T09:00:00.123456Z");
        assert_eq!(Timestamp::parse_rfc3339("2026-11-02T10:00:00"), None);
    }

    #[test]
    fn a_conflict_stored_as_dismissed_reads_as_closed_by_its_dismissal() {
        let stored = r#"{"conflict_id":"cf-1","identifier":{"kind":"email","value":"a@example.cz"},"owner_contact_id":"c-1",
            "claimant_contact_id":"c-2","session_id":null,"event_id":"e1","raised_at":"2026-11-02T08:00:00Z",
            "dismissed":{"event_id":"e2","at":"2026-11-02T08:01:00Z"}}"#;
        let record: ConflictRecord = serde_json::from_str(stored).unwrap();
        let closed = record.closed.expect("a dismissal is a closing");
        assert_eq!((closed.event_id.as_str(), closed.reason), ("e2", ClosedBy::Dismissed));
        assert!(!record.closure_recorded, "an old record is judged from the claims when read");
    }

    #[test]
    fn derived_ids_are_stable_and_separate_their_parts() {
        assert_eq!(derived_id("c", &["acme", "e1"]), derived_id("c", &["acme", "e1"]));
        // Ids already stored and published must stay what they are across versions.
        assert_eq!(derived_id("c", &["acme", "e1"]), "c1b838bb6d0ea38a0db7725f4");
        assert_ne!(derived_id("c", &["ac", "me1"]), derived_id("c", &["acme", "1"]));
    }

    #[test]
    fn change_kind_names_are_the_contract_names() {
        use ChangeKind::*;
        let kinds = [
            ContactCreated,
            ContactUpdated,
            IdentifierAdded,
            IdentifierRemoved,
            IdentityConflict,
            SessionLinked,
            SessionUnlinked,
            ContactMerged,
            ContactDeleted,
            TimelineAppended,
        ];
        for kind in kinds {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}

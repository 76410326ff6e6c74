//! Identity normalization (docs/contract.md section 2): turns what guests, connectors and
//! operators typed into canonical identifiers, so that one customer's email or phone
//! written two ways is one key in the directory.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::model::{Identifier, IdentifierKind, IdentifierParseError, TenantConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    Form,
    HeroCard,
    OauthGoogle,
    OauthFacebook,
    Callback,
    Operator,
    Channel,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FacebookPsid {
    pub page_id: String,
    pub psid: String,
}

/// Identity as supplied, before normalization (which needs the tenant's settings).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawIdentity {
    pub name: Option<String>,
    pub emails: Vec<String>,
    pub phones: Vec<String>,
    pub browser_id: Option<String>,
    pub facebook_psid: Option<FacebookPsid>,
    pub whatsapp_id: Option<String>,
    pub apple_id: Option<String>,
    pub vk_id: Option<String>,
    pub params: BTreeMap<String, String>,
    pub source: Option<IdentitySource>,
}

impl RawIdentity {
    /// How many identifier values it carries, valid or not.
    pub fn values(&self) -> usize {
        let single = [&self.browser_id, &self.whatsapp_id, &self.apple_id, &self.vk_id].iter().filter(|v| v.is_some()).count();
        self.emails.len() + self.phones.len() + self.params.len() + single + usize::from(self.facebook_psid.is_some())
    }
}

/// Identifiers as operators type them: the same normalization as for events.
impl Identifier {
    /// Parses the `KIND:VALUE` form that operators type on the command line, applying
    /// the same normalization as for events so `email:Jana@Example.CZ` finds Jana.
    pub fn parse_typed(text: &str, config: &TenantConfig) -> Result<Self, IdentifierParseError> {
        let (kind, value) = text.split_once(':').ok_or(IdentifierParseError::MissingSeparator)?;
        let kind: IdentifierKind = kind.parse()?;
        let invalid = || IdentifierParseError::Invalid(value.to_owned(), kind.as_str());
        let value = match kind {
            IdentifierKind::Email => normalize_email(value).ok_or_else(invalid)?,
            IdentifierKind::Phone => normalize_phone(value, config.default_phone_region.as_deref()).ok_or_else(invalid)?,
            IdentifierKind::Facebook => {
                let (page, psid) = value.split_once(':').ok_or_else(invalid)?;
                facebook_value(page, psid).ok_or_else(invalid)?
            }
            IdentifierKind::Param => {
                let (name, v) = value.split_once('=').ok_or_else(invalid)?;
                param_value(name, v).ok_or_else(invalid)?
            }
            _ => normalize_opaque(value).ok_or_else(invalid)?,
        };
        Ok(Identifier { kind, value })
    }
}

/// What an event says about a person once normalized: a display name (if any)
/// and identifiers sorted by resolution priority, without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NormalizedIdentity {
    pub name: Option<String>,
    pub identifiers: Vec<Identifier>,
}

impl NormalizedIdentity {
    pub fn strongest(&self) -> Option<&Identifier> {
        self.identifiers.iter().find(|i| i.kind.is_strong())
    }
}

/// Normalizes an identity under the tenant's configuration. Invalid or junk values
/// are skipped, never fatal: the event is still processed (docs/contract.md 2).
pub fn normalize(identity: &RawIdentity, config: &TenantConfig) -> NormalizedIdentity {
    let mut identifiers = Vec::new();
    let region = config.default_phone_region.as_deref();
    let mut push = |kind, value: Option<String>| {
        if let Some(value) = value {
            identifiers.push(Identifier { kind, value });
        }
    };
    for email in &identity.emails {
        push(IdentifierKind::Email, normalize_email(email));
    }
    for phone in &identity.phones {
        push(IdentifierKind::Phone, normalize_phone(phone, region));
    }
    if let Some(fb) = &identity.facebook_psid {
        push(IdentifierKind::Facebook, facebook_value(&fb.page_id, &fb.psid));
    }
    push(IdentifierKind::Whatsapp, identity.whatsapp_id.as_deref().and_then(normalize_opaque));
    push(IdentifierKind::Apple, identity.apple_id.as_deref().and_then(normalize_opaque));
    push(IdentifierKind::Vk, identity.vk_id.as_deref().and_then(normalize_opaque));
    push(IdentifierKind::Browser, identity.browser_id.as_deref().and_then(normalize_opaque));
    // Parameters identify only when the tenant marked them so, and rank in the
    // order the tenant listed them.
    let mut params: Vec<(usize, Identifier)> = identity
        .params
        .iter()
        .filter_map(|(name, value)| {
            let rank = config.identifying_params.iter().position(|p| p == name)?;
            Some((rank, Identifier { kind: IdentifierKind::Param, value: param_value(name, value)? }))
        })
        .collect();
    params.sort();
    identifiers.extend(params.into_iter().map(|(_, id)| id));
    // Stable sort keeps the param ranking while ordering kinds by priority.
    identifiers.sort_by_key(|i| i.kind);
    let mut seen = std::collections::HashSet::new();
    identifiers.retain(|i| seen.insert(i.clone()));
    NormalizedIdentity { name: identity.name.as_deref().and_then(normalize_name), identifiers }
}

const JUNK_WORDS: [&str; 9] = ["", "null", "undefined", "n/a", "na", "none", "nil", "-", "unknown"];
const JUNK_EMAILS: [&str; 4] = ["test@test.com", "test@example.com", "a@a.com", "noreply@noreply.com"];

fn is_junk(value: &str) -> bool {
    JUNK_WORDS.iter().any(|junk| value.eq_ignore_ascii_case(junk))
}

/// Trimmed, lower-cased, domain in IDNA ASCII form; `None` when not an address.
pub fn normalize_email(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    if is_junk(trimmed) || trimmed.len() > 254 {
        return None;
    }
    let (local, domain) = trimmed.rsplit_once('@')?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| !c.is_whitespace() && !c.is_control() && !is_invisible(c) && !"@<>()[],;:\\\"".contains(c));
    if !local_ok {
        return None;
    }
    let domain = idna::domain_to_ascii(domain).ok()?;
    let top_level_is_numeric = domain.rsplit('.').next().is_some_and(|label| label.bytes().all(|b| b.is_ascii_digit()));
    let labels_ok = domain.contains('.')
        && !top_level_is_numeric
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !labels_ok {
        return None;
    }
    let email = format!("{}@{}", local.to_lowercase(), domain);
    (!JUNK_EMAILS.contains(&email.as_str())).then_some(email)
}

/// Unicode format characters (bidirectional overrides, zero-width joiners and
/// spaces, the byte order mark): invisible, so an address holding one looks
/// like another address, and the e-mail references refuse them.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{ad}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

/// Distinct phone spellings remembered per thread; parsing against the metadata
/// costs microseconds and returning customers repeat the same few strings.
const PHONE_MEMO_CAPACITY: usize = 100_000;

/// (raw spelling, default region) -> E.164, or `None` when not a phone.
type PhoneMemo = std::collections::HashMap<(String, Option<String>), Option<String>>;

thread_local! {
    static PHONE_MEMO: std::cell::RefCell<PhoneMemo> = std::cell::RefCell::new(PhoneMemo::new());
}

/// E.164 via libphonenumber's metadata. Accepts spaces, dashes, dots, brackets and a
/// leading `00`; numbers without a country code use the tenant's default region.
pub fn normalize_phone(raw: &str, default_region: Option<&str>) -> Option<String> {
    let key = (raw.to_owned(), default_region.map(str::to_owned));
    if let Some(known) = PHONE_MEMO.with(|memo| memo.borrow().get(&key).cloned()) {
        return known;
    }
    let phone = parse_phone(raw, default_region);
    PHONE_MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        if memo.len() >= PHONE_MEMO_CAPACITY {
            memo.clear();
        }
        memo.insert(key, phone.clone());
    });
    phone
}

/// As libphonenumber reads the text (the phonenumber crate's parser, with the
/// same metadata), under the directory's own rules: junk is never a phone; a
/// leading `00` is an international prefix whatever the tenant's region; a
/// number with an extension names a switchboard that many customers share, so
/// it is no identifier; a national number of one repeated digit is junk.
fn parse_phone(raw: &str, default_region: Option<&str>) -> Option<String> {
    let trimmed = raw.trim();
    if is_junk(trimmed) {
        return None;
    }
    let text = possible_number(trimmed)?;
    let text = match text.strip_prefix("00") {
        Some(rest) => format!("+{rest}"),
        None => text,
    };
    // A number with its country code needs no region, and the crate reads
    // some such numbers otherwise when given one.
    let region =
        default_region.filter(|_| !text.starts_with('+')).and_then(|region| region.parse::<phonenumber::country::Id>().ok());
    let number = phonenumber::parse(region, &text).ok()?;
    if number.extension().is_some() || !phonenumber::is_valid(&number) {
        return None;
    }
    let national = number.national().value().to_string();
    if national.bytes().all(|digit| digit == national.as_bytes()[0]) {
        return None;
    }
    Some(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// What libphonenumber reads of a text before parsing it, where the crate
/// reads otherwise: the number starts at the first `+` or digit (`tel:`, a
/// leading bracket or words are dropped); the no-break and ideographic spaces
/// and `/` separate digit groups and the soft hyphen, zero-width space and word
/// joiner vanish (its punctuation; a thin space is not in it); and letters are
/// dropped unless there are three or more (a vanity number, which both read as
/// digits). `None` for a number with an extension (`x12`, `#12`), which
/// libphonenumber would read as one and the crate would read as digits.
fn possible_number(text: &str) -> Option<String> {
    let start = text.find(|c: char| c == '+' || c.is_ascii_digit()).unwrap_or(text.len());
    let text = &text[start..];
    let letters = text.chars().filter(char::is_ascii_alphabetic).count();
    let extension = text.contains('#')
        || text
            .char_indices()
            .any(|(i, c)| c.eq_ignore_ascii_case(&'x') && text[i + 1..].trim_start().starts_with(|d: char| d.is_ascii_digit()));
    if extension && letters < 3 {
        return None;
    }
    let number = text
        .chars()
        .filter(|c| letters >= 3 || !c.is_ascii_alphabetic())
        .filter(|c| !matches!(c, '\u{ad}' | '\u{200b}' | '\u{2060}'))
        .map(|c| if matches!(c, '\u{a0}' | '\u{3000}' | '/') { ' ' } else { c })
        .collect();
    Some(number)
}

/// Trimmed, inner white space collapsed, Unicode NFC.
pub fn normalize_name(raw: &str) -> Option<String> {
    let collapsed = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    if is_junk(&collapsed) {
        return None;
    }
    Some(collapsed.nfc().collect())
}

/// Channel ids are opaque: trimmed, otherwise kept as sent.
pub fn normalize_opaque(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    (!is_junk(trimmed)).then(|| trimmed.to_owned())
}

/// A PSID is unique only within its page, so the page is part of the identifier.
fn facebook_value(page_id: &str, psid: &str) -> Option<String> {
    Some(format!("{}:{}", normalize_opaque(page_id)?, normalize_opaque(psid)?))
}

fn param_value(name: &str, value: &str) -> Option<String> {
    let name = name.trim();
    if name.is_empty() || name.contains('=') {
        return None;
    }
    Some(format!("{name}={}", normalize_opaque(value)?))
}

/// A normalized phone's number within its country (`+420777123456` gives
/// `777123456`): what people type who leave the country code out.
pub fn national_number(e164: &str) -> Option<String> {
    let number = phonenumber::parse(None, e164).ok()?;
    Some(number.national().value().to_string())
}

/// Validates a tenant's default region the same way phones use it.
pub fn is_known_region(region: &str) -> bool {
    region.parse::<phonenumber::country::Id>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cz() -> TenantConfig {
        TenantConfig { default_phone_region: Some("CZ".into()), ..TenantConfig::default() }
    }

    #[test]
    fn emails_are_trimmed_lowercased_and_idna_encoded() {
        assert_eq!(normalize_email(" Jana.Novakova@Example.CZ ").as_deref(), Some("jana.novakova@example.cz"));
        assert_eq!(normalize_email("petr@Příklad.cz").as_deref(), Some("petr@xn--pklad-zsa96e.cz"));
    }

    #[test]
    fn invalid_and_junk_emails_are_not_identifiers() {
        for junk in [
            "",
            "null",
            "n/a",
            "test@test.com",
            "no-at-sign",
            "a@b",
            "a b@c.cz",
            "@x.cz",
            "a@-x.cz",
            "a..b@x.cz",
            "ann\u{202e}zc.elpmaxe@example.cz",
            "ann@exa\u{202e}mple.cz",
            "ann@example.cz\u{2066}",
        ] {
            assert_eq!(normalize_email(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn phones_become_e164_whatever_the_punctuation() {
        for raw in ["+420 777 123 456", "00420 777 123 456", "+420-777.123(456)", "777 123 456"] {
            assert_eq!(normalize_phone(raw, Some("CZ")).as_deref(), Some("+420777123456"), "{raw}");
        }
    }

    #[test]
    fn phones_without_country_code_need_a_default_region() {
        assert_eq!(normalize_phone("777 123 456", None), None);
        assert_eq!(normalize_phone("777 123 456", Some("XX")), None);
    }

    #[test]
    fn remembered_phones_still_depend_on_the_region() {
        for _ in 0..2 {
            assert_eq!(normalize_phone("777 123 456", Some("CZ")).as_deref(), Some("+420777123456"));
            assert_eq!(normalize_phone("777 123 456", None), None);
            assert_eq!(normalize_phone("777 123 456", Some("SK")), None);
        }
    }

    #[test]
    fn junk_and_unparseable_phones_are_not_identifiers() {
        for junk in ["+420 000 000 000", "1111111", "call me", "+1 23", "undefined"] {
            assert_eq!(normalize_phone(junk, Some("CZ")), None, "{junk:?}");
        }
    }

    #[test]
    fn names_are_trimmed_collapsed_and_nfc() {
        assert_eq!(normalize_name("  Jana   Nováková ").as_deref(), Some("Jana Nováková"));
        assert_eq!(normalize_name("Nova\u{301}kova\u{301}").as_deref(), Some("Nováková"));
        assert_eq!(normalize_name(" undefined "), None);
    }

    #[test]
    fn identity_is_sorted_by_priority_and_params_need_configuration() {
        let identity = RawIdentity {
            emails: vec!["A@X.CZ".into(), "a@x.cz".into()],
            phones: vec!["777 123 456".into()],
            browser_id: Some("b-1".into()),
            whatsapp_id: Some(" 420777123456 ".into()),
            params: [("crm_id".to_owned(), "C-1".to_owned()), ("color".to_owned(), "red".to_owned())].into(),
            ..RawIdentity::default()
        };
        let config = TenantConfig { identifying_params: vec!["crm_id".into()], ..cz() };
        let kinds: Vec<String> = normalize(&identity, &config).identifiers.iter().map(ToString::to_string).collect();
        assert_eq!(kinds, ["param:crm_id=C-1", "whatsapp:420777123456", "email:a@x.cz", "phone:+420777123456", "browser:b-1"]);
    }

    #[test]
    fn facebook_psids_are_scoped_by_page() {
        let config = TenantConfig::default();
        let a = Identifier::parse_typed("facebook:page-a:123", &config).unwrap();
        let b = Identifier::parse_typed("facebook:page-b:123", &config).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn typed_identifiers_are_normalized_like_events() {
        let id = Identifier::parse_typed("phone:00420 777 123 456", &cz()).unwrap();
        assert_eq!(id.to_string(), "phone:+420777123456");
        assert_eq!(Identifier::parse_typed("fax:1", &cz()), Err(IdentifierParseError::UnknownKind("fax".into())));
        assert!(Identifier::parse_typed("email:nope", &cz()).is_err());
    }
}

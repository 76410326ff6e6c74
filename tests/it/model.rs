//! The resolver checked against a reference model. `Model` is the contract's
//! directory rules (sections 3, 4 and 7) written again from the contract, as
//! plain maps, sharing no code with `contactd::resolve`; normalization is the
//! golden vectors' (`tests/vectors`), so the model never calls the engine's
//! normalizer either. A property generates event sequences (two tenants,
//! every identifier kind in the formats people type, junk values, an address
//! two customers share, unresolved sessions that resolve later, e-mail
//! threads, operator creates with and without ids and sessions, edits, notes
//! naming a contact and a session attached elsewhere, deletions and ids
//! reused after them, links, merges, unlinks, conflict dismissals, late and
//! redelivered events), feeds them to the engine in batches of any size, and
//! checks: the dead letters; the export equal to the model's snapshot, ids
//! included (a founded contact's as docs/contract.md 3.3 derives it); the
//! directory's invariants (`contactd check`); the open-conflict queue; the
//! rule and event `explain` gives for every identifier and session; and that
//! searching a word of each message finds it under the model's contact, and
//! only there. The model closes a conflict by judging its settling facts
//! after every event, the engine by the event that settles it: two readings
//! of one rule. Some operator steps aim at a party of a conflict the model
//! holds open (its owner removes the identifier, a party is erased, the two
//! merge), which chance alone seldom does.
//!
//! 256 cases run in CI; `cargo test model -- --ignored` runs 20,000.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::LazyLock;

use contactd::index::{SearchIndex, TimelineQuery};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Value, json};

use crate::harness::Directory;

// ---------------------------------------------------------------------------
// The model.

/// An identifier as the contract's section 2 makes it: kind and normalized value.
type Id = (Kind, String);

/// Identifier kinds in resolution priority (contract 3.2): params first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Param,
    Whatsapp,
    Email,
    Phone,
    Browser,
}

/// Times are minutes; ties are broken by event id where the contract orders by time.
type Time = u32;

/// What the model needs of an event: its normalized identity (from the
/// vectors) beside what the engine reads from the JSON.
#[derive(Clone, Debug)]
struct Happening {
    tenant: usize,
    id: String,
    at: Time,
    session: Option<String>,
    contact: Option<String>,
    what: What,
    identity: Vec<Id>,
    name: Option<String>,
    by_operator: bool,
    /// The message's or note's word, for search.
    word: Option<String>,
}

#[derive(Clone, Debug)]
enum What {
    Started,
    Provided,
    Message,
    Email {
        participants: Vec<Id>,
    },
    Note,
    Created,
    Updated {
        set_name: Option<String>,
        add: Vec<Id>,
        remove: Vec<Id>,
    },
    Deleted,
    Linked,
    Unlinked,
    /// `contact.merged`: the named contact (`contact` or the session's) takes this one in.
    Merged {
        from: String,
    },
    /// `conflict.dismissed` of the conflict `event` raised over `identifier`.
    Dismissed {
        event: String,
        identifier: Id,
    },
}

#[derive(Clone, Debug)]
struct Entry {
    session: Option<String>,
    word: Option<String>,
}

/// Why an identifier or a session is a contact's (contract 3.10): the rule and the event.
type Why = (&'static str, String);

#[derive(Clone, Debug, Default)]
struct Contact {
    /// (value, set by an operator, version).
    name: Option<(String, bool, (Time, String))>,
    identifiers: Vec<(Id, Time)>,
    why: HashMap<Id, Why>,
    sessions: BTreeSet<String>,
    timeline: BTreeMap<String, Entry>,
}

#[derive(Clone, Debug)]
enum Record {
    Active(Contact),
    Merged(String),
    Deleted(Time),
}

#[derive(Clone, Debug, Default)]
struct Session {
    contact: Option<String>,
    erased_at: Option<Time>,
    waiting: Vec<Id>,
    pending: BTreeMap<String, Entry>,
    attached_by: Option<Why>,
}

#[derive(Clone, Debug)]
enum Claim {
    Owned(String),
    Released { at: Time, erased: bool },
}

/// An identity conflict (contract 3.4): raised by `event` when `claimant`
/// claimed `identifier` that `owner` held.
#[derive(Clone, Debug)]
struct Conflict {
    event: String,
    identifier: Id,
    owner: String,
    claimant: String,
    open: bool,
}

#[derive(Debug, Default)]
struct Tenant {
    seen: HashSet<String>,
    contacts: BTreeMap<String, Record>,
    sessions: BTreeMap<String, Session>,
    claims: HashMap<Id, Claim>,
    conflicts: Vec<Conflict>,
}

enum Target {
    Active(String),
    Deleted(Time),
    Unknown,
}

#[derive(Default)]
struct Model {
    tenants: [Tenant; 2],
    /// Why each dead-lettered event was, in order.
    rejections: Vec<&'static str>,
}

/// A contact as the snapshot shows it, without its id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Shown {
    tenant: String,
    name: Option<String>,
    emails: Vec<String>,
    phones: Vec<String>,
    whatsapp: Vec<String>,
    browser: Vec<String>,
    params: BTreeMap<String, String>,
    sessions: Vec<String>,
    entries: u64,
}

impl Model {
    fn apply(&mut self, event: &Happening) {
        let tenant = &mut self.tenants[event.tenant];
        if !tenant.seen.insert(event.id.clone()) {
            return;
        }
        let mut run = Run { tenant, event, entries: 0, rejected: None, entry_session: event.session.clone() };
        match &event.what {
            What::Deleted => run.delete(),
            What::Linked => run.link(),
            What::Unlinked => run.unlink(),
            What::Merged { from } => run.merge_contacts(from),
            What::Dismissed { event, identifier } => run.dismiss(event, identifier),
            _ => run.interaction(),
        }
        // A dead-lettered event was not processed: a redelivery is resolved anew.
        if let Some(reason) = run.rejected {
            run.tenant.seen.remove(&event.id);
            self.rejections.push(reason);
            return;
        }
        run.settle_conflicts();
    }

    /// The open conflicts, as (raising event, identifier, owner, claimant),
    /// owner and claimant as merges left them.
    fn open_conflicts(&self, tenant: usize) -> BTreeSet<(String, Id, String, String)> {
        let tenant = &self.tenants[tenant];
        let live = |id: &str| follow(tenant, id);
        tenant
            .conflicts
            .iter()
            .filter(|c| c.open)
            .map(|c| {
                let (Target::Active(owner), Target::Active(claimant)) = (live(&c.owner), live(&c.claimant)) else {
                    unreachable!("an open conflict has live parties")
                };
                (c.event.clone(), c.identifier.clone(), owner, claimant)
            })
            .collect()
    }

    fn snapshot(&self) -> Vec<(Shown, String)> {
        let mut shown = Vec::new();
        for (index, tenant) in self.tenants.iter().enumerate() {
            for (id, record) in &tenant.contacts {
                if let Record::Active(contact) = record {
                    shown.push((show(TENANTS[index].id, contact), id.clone()));
                }
            }
        }
        shown.sort();
        shown
    }
}

fn show(tenant: &str, contact: &Contact) -> Shown {
    let values = |kind: Kind| {
        let mut values: Vec<String> =
            contact.identifiers.iter().filter(|((k, _), _)| *k == kind).map(|((_, v), _)| v.clone()).collect();
        values.sort();
        values
    };
    // The newest value of a parameter is the one shown (the engine's reading
    // of contract 7's one value per name).
    let mut params: BTreeMap<String, (Time, String)> = BTreeMap::new();
    for ((kind, value), added_at) in &contact.identifiers {
        if *kind == Kind::Param {
            let (name, value) = value.split_once('=').unwrap();
            let candidate = (*added_at, value.to_owned());
            let slot = params.entry(name.to_owned()).or_insert_with(|| candidate.clone());
            if candidate > *slot {
                *slot = candidate;
            }
        }
    }
    Shown {
        tenant: tenant.to_owned(),
        name: contact.name.as_ref().map(|(value, _, _)| value.clone()),
        emails: values(Kind::Email),
        phones: values(Kind::Phone),
        whatsapp: values(Kind::Whatsapp),
        browser: values(Kind::Browser),
        params: params.into_iter().map(|(name, (_, value))| (name, value)).collect(),
        sessions: contact.sessions.iter().cloned().collect(),
        entries: contact.timeline.len() as u64,
    }
}

fn follow(tenant: &Tenant, id: &str) -> Target {
    let mut id = id.to_owned();
    loop {
        match tenant.contacts.get(&id) {
            Some(Record::Active(_)) => return Target::Active(id),
            Some(Record::Merged(into)) => id = into.clone(),
            Some(Record::Deleted(at)) => return Target::Deleted(*at),
            None => return Target::Unknown,
        }
    }
}

/// One event being applied.
struct Run<'a> {
    tenant: &'a mut Tenant,
    event: &'a Happening,
    entries: usize,
    /// Why the event is dead-lettered, if it is.
    rejected: Option<&'static str>,
    /// The session the event's entries belong to: none when the event went
    /// to a contact its session is not attached to.
    entry_session: Option<String>,
}

impl Run<'_> {
    fn follow(&self, id: &str) -> Target {
        follow(self.tenant, id)
    }

    /// Contract 3.4: a conflict closes once its settling facts hold (owner and
    /// claimant one contact, the owner no longer holding the identifier, either
    /// erased), judged after every event; closed, it never opens again.
    fn settle_conflicts(&mut self) {
        let tenant = &*self.tenant;
        let settled: Vec<usize> = (tenant.conflicts.iter().enumerate())
            .filter(|(_, c)| c.open)
            .filter(|(_, c)| match (follow(tenant, &c.owner), follow(tenant, &c.claimant)) {
                (Target::Active(owner), Target::Active(claimant)) => {
                    owner == claimant
                        || !matches!(tenant.contacts.get(&owner), Some(Record::Active(o)) if o.identifiers.iter().any(|(id, _)| *id == c.identifier))
                }
                _ => true,
            })
            .map(|(n, _)| n)
            .collect();
        for n in settled {
            self.tenant.conflicts[n].open = false;
        }
    }

    /// `conflict.dismissed`: leave as is.
    fn dismiss(&mut self, event: &str, identifier: &Id) {
        match self.tenant.conflicts.iter_mut().find(|c| c.event == event && c.identifier == *identifier) {
            Some(conflict) => conflict.open = false,
            None => self.rejected = Some("unknown_conflict"),
        }
    }

    fn contact(&mut self, id: &str) -> &mut Contact {
        match self.tenant.contacts.get_mut(id) {
            Some(Record::Active(contact)) => contact,
            _ => panic!("model: {id} is not a live contact"),
        }
    }

    fn session(&mut self, id: &str) -> &mut Session {
        self.tenant.sessions.entry(id.to_owned()).or_default()
    }

    fn new_entry(&mut self, session: Option<&str>, word: Option<String>) -> (String, Entry) {
        let id = match self.entries {
            0 => self.event.id.clone(),
            n => format!("{}#{n}", self.event.id),
        };
        self.entries += 1;
        (id, Entry { session: session.map(str::to_owned), word })
    }

    /// A change of contact details: an entry of the event's session.
    fn detail(&mut self, contact: &str) {
        let session = self.entry_session.clone();
        let (id, entry) = self.new_entry(session.as_deref(), None);
        self.contact(contact).timeline.insert(id, entry);
    }

    fn create(&mut self, id: &str) {
        self.tenant.contacts.insert(id.to_owned(), Record::Active(Contact::default()));
        let (entry_id, entry) = self.new_entry(None, None);
        self.contact(id).timeline.insert(entry_id, entry);
    }

    fn own_entry(&self) -> bool {
        matches!(self.event.what, What::Started | What::Message | What::Email { .. } | What::Note)
    }

    /// Contract 3.1 to 3.6.
    fn interaction(&mut self) {
        let event = self.event;
        let mut identity = event.identity.clone();
        let mut removed = Vec::new();
        if let What::Updated { add, remove, .. } = &event.what {
            identity.extend(add.iter().cloned());
            removed = remove.clone();
        }
        identity.sort_by_key(|(kind, _)| *kind);
        let mut unique = HashSet::new();
        identity.retain(|id| unique.insert(id.clone()));
        let participants = match &event.what {
            What::Email { participants } => participants.clone(),
            _ => Vec::new(),
        };
        if let Some(session) = &event.session
            && self.tenant.sessions.get(session).and_then(|s| s.erased_at).is_some_and(|at| event.at < at)
        {
            return;
        }

        // Contract 3.1: the session's contact, if it has a live one.
        let (session_contact, session_erased) =
            match event.session.as_ref().and_then(|s| self.tenant.sessions.get(s)?.contact.clone()).map(|c| self.follow(&c)) {
                Some(Target::Active(id)) => (Some(id), false),
                Some(Target::Deleted(at)) => (None, event.at < at),
                _ => (None, false),
            };
        let mut target = None;
        let mut session_rule = Some("explicit_contact");
        let mut founded = false;
        if matches!(event.what, What::Created) {
            // "+ Add client" always adds a contact.
            let id = match &event.contact {
                Some(explicit) => match self.follow(explicit) {
                    Target::Active(_) => {
                        self.rejected = Some("contact_exists");
                        return;
                    }
                    Target::Deleted(at) if event.at < at => return,
                    _ => explicit.clone(),
                },
                None => format!("m-{}", event.id),
            };
            self.create(&id);
            target = Some(id);
            (session_rule, founded) = (Some("founded_contact"), true);
        } else {
            // An operator's edit goes to the contact it names first; anything
            // else to its session's contact first.
            let edit = matches!(event.what, What::Updated { .. });
            let explicit_first = if edit { [true, false] } else { [false, true] };
            for explicit in explicit_first {
                if target.is_some() {
                    break;
                }
                if explicit {
                    let Some(named) = &event.contact else { continue };
                    match self.follow(named) {
                        Target::Active(id) => target = Some(id),
                        Target::Deleted(at) if event.at < at => return,
                        _ => {
                            self.rejected = Some("unknown_contact");
                            return;
                        }
                    }
                } else if let Some(id) = &session_contact {
                    target = Some(id.clone());
                    session_rule = None;
                } else if session_erased {
                    return;
                }
            }
        }
        let mut founding = identity.clone();
        let mut founding_rule = "founded_contact";
        if target.is_none() {
            for (n, id) in identity.iter().chain(&participants).enumerate() {
                match self.tenant.claims.get(id).cloned() {
                    Some(Claim::Owned(owner)) => match self.follow(&owner) {
                        Target::Active(owner) => {
                            target = Some(owner);
                            session_rule = Some(if n < identity.len() { "owner_of_identifier" } else { "email_thread" });
                            break;
                        }
                        Target::Deleted(at) if event.at < at => return,
                        _ => {}
                    },
                    Some(Claim::Released { at, erased: true }) if event.at < at => return,
                    _ => {}
                }
            }
        }
        if target.is_none() {
            let strong = identity.iter().any(|(kind, _)| *kind != Kind::Browser);
            let founds = strong
                || (!participants.is_empty() && {
                    founding = vec![participants[0].clone()];
                    founding_rule = "email_thread";
                    true
                });
            if founds {
                let id = format!("m-{}", event.id);
                self.create(&id);
                target = Some(id);
                (session_rule, founded) = (Some(founding_rule), true);
            }
        }
        let Some(contact) = target else {
            if let Some(session_id) = &event.session {
                let entry = self.own_entry().then(|| self.new_entry(Some(session_id), event.word.clone()));
                let session = self.session(session_id);
                for id in identity {
                    if !session.waiting.contains(&id) {
                        session.waiting.push(id);
                    }
                }
                session.pending.extend(entry);
            }
            return;
        };

        let rule = if founded {
            founding_rule
        } else if matches!(event.what, What::Updated { .. }) {
            "operator_add"
        } else {
            "unowned_identifier"
        };
        let mut claims: Vec<(Id, &'static str)> = founding.into_iter().map(|id| (id, rule)).collect();
        // A session stays with the contact it has; one without attaches here.
        if session_contact.as_ref().is_some_and(|attached| *attached != contact) {
            self.entry_session = None;
        } else if let Some(session_id) = &event.session
            && self.tenant.sessions.get(session_id).and_then(|s| s.contact.as_deref()) != Some(contact.as_str())
        {
            let waiting = std::mem::take(&mut self.session(session_id).waiting);
            claims.extend(waiting.into_iter().map(|id| (id, "waited_in_session")));
            claims.sort_by_key(|((kind, _), _)| *kind);
            // An identifier both in the event and waiting with its session is one claim, one conflict at most.
            let mut unique = HashSet::new();
            claims.retain(|(id, _)| unique.insert(id.clone()));
            self.attach(session_id, &contact, session_rule, false);
        }
        for id in &removed {
            let at = event.at;
            let owned = self.contact(&contact).identifiers.iter().position(|(owned, added)| owned == id && *added <= at);
            if let Some(position) = owned {
                self.contact(&contact).identifiers.remove(position);
                self.contact(&contact).why.remove(id);
                self.tenant.claims.insert(id.clone(), Claim::Released { at, erased: false });
                self.detail(&contact);
            }
        }
        self.claim_all(&contact, &claims);
        if let Some(name) = &event.name {
            self.name(&contact, name, event.by_operator);
        }
        if let What::Updated { set_name: Some(name), .. } = &event.what {
            self.name(&contact, name, true);
        }
        if self.own_entry() {
            let session = self.entry_session.clone();
            let (id, entry) = self.new_entry(session.as_deref(), event.word.clone());
            self.contact(&contact).timeline.insert(id, entry);
        }
    }

    /// Contract 3.4: identifiers nobody owns attach; one owned by another
    /// live contact stays there and the conflict is an entry.
    fn claim_all(&mut self, contact: &str, ids: &[(Id, &'static str)]) {
        for (id, rule) in ids {
            if self.contact(contact).identifiers.iter().any(|(owned, _)| owned == id) {
                continue;
            }
            match self.tenant.claims.get(id).cloned() {
                Some(Claim::Owned(owner)) => {
                    if let Target::Active(owner) = self.follow(&owner)
                        && owner != contact
                    {
                        let conflict = Conflict {
                            event: self.event.id.clone(),
                            identifier: id.clone(),
                            owner,
                            claimant: contact.to_owned(),
                            open: true,
                        };
                        self.tenant.conflicts.push(conflict);
                        self.detail(contact);
                        continue;
                    }
                }
                Some(Claim::Released { at, .. }) if self.event.at < at => continue,
                _ => {}
            }
            self.tenant.claims.insert(id.clone(), Claim::Owned(contact.to_owned()));
            let at = self.event.at;
            self.contact(contact).identifiers.push((id.clone(), at));
            let why = (*rule, self.event.id.clone());
            self.contact(contact).why.insert(id.clone(), why);
            self.detail(contact);
        }
    }

    /// Contract 3.5: operators beat guests; within a kind, the later event wins.
    fn name(&mut self, contact: &str, value: &str, by_operator: bool) {
        let version = (self.event.at, self.event.id.clone());
        let current = &self.contact(contact).name;
        if current.as_ref().is_some_and(|(_, operator, current)| (by_operator, &version) <= (*operator, current)) {
            return;
        }
        self.contact(contact).name = Some((value.to_owned(), by_operator, version));
        self.detail(contact);
    }

    /// Attaches the session, by `rule` (none: it keeps how it first attached).
    fn attach(&mut self, session_id: &str, contact: &str, rule: Option<&'static str>, by_operator: bool) {
        let event_id = self.event.id.clone();
        let session = self.session(session_id);
        if let Some(rule) = rule {
            session.attached_by = Some((rule, event_id));
        }
        session.contact = Some(contact.to_owned());
        session.waiting.clear();
        let pending = std::mem::take(&mut session.pending);
        let target = self.contact(contact);
        target.sessions.insert(session_id.to_owned());
        target.timeline.extend(pending);
        if by_operator {
            let (id, entry) = self.new_entry(None, None);
            self.contact(contact).timeline.insert(id, entry);
        }
    }

    /// Contract 3.7, "Select Existing".
    fn link(&mut self) {
        let event = self.event;
        let (session_id, contact_id) = (event.session.clone().unwrap(), event.contact.clone().unwrap());
        let into = match self.follow(&contact_id) {
            Target::Active(id) => id,
            Target::Deleted(at) if event.at < at => return,
            _ => {
                self.rejected = Some("unknown_contact");
                return;
            }
        };
        if self.tenant.sessions.get(&session_id).and_then(|s| s.erased_at).is_some_and(|at| event.at < at) {
            return;
        }
        let current = self.tenant.sessions.get(&session_id).and_then(|s| s.contact.clone());
        match current.map(|c| self.follow(&c)) {
            Some(Target::Active(current)) if current == into => {}
            Some(Target::Active(current)) => self.merge(&current, &into),
            _ => {
                let waiting = std::mem::take(&mut self.session(&session_id).waiting);
                self.attach(&session_id, &into, Some("operator_link"), true);
                let waiting: Vec<_> = waiting.into_iter().map(|id| (id, "waited_in_session")).collect();
                self.claim_all(&into, &waiting);
            }
        }
    }

    fn merge(&mut self, from: &str, into: &str) {
        let Some(Record::Active(merged)) = self.tenant.contacts.insert(from.to_owned(), Record::Merged(into.to_owned())) else {
            unreachable!()
        };
        for (id, _) in &merged.identifiers {
            self.tenant.claims.insert(id.clone(), Claim::Owned(into.to_owned()));
        }
        for session in &merged.sessions {
            let attached_by = self.session(session).attached_by.take();
            *self.session(session) = Session { contact: Some(into.to_owned()), attached_by, ..Session::default() };
        }
        let target = self.contact(into);
        for (id, added) in merged.identifiers {
            if !target.identifiers.iter().any(|(owned, _)| *owned == id) {
                target.identifiers.push((id, added));
            }
        }
        if let Some(name) = merged.name
            && target.name.as_ref().is_none_or(|current| (name.1, &name.2) > (current.1, &current.2))
        {
            target.name = Some(name);
        }
        target.why.extend(merged.why);
        target.sessions.extend(merged.sessions);
        target.timeline.extend(merged.timeline);
        self.detail(into);
    }

    /// The contact an operator event names: by id, or the session's; or the
    /// session, when it has none.
    fn named_contact(&self) -> Result<String, String> {
        match (&self.event.contact, &self.event.session) {
            (Some(contact), _) => Ok(contact.clone()),
            (None, Some(session_id)) => {
                self.tenant.sessions.get(session_id).and_then(|s| s.contact.clone()).ok_or_else(|| session_id.clone())
            }
            (None, None) => unreachable!(),
        }
    }

    /// Contract 3.7, an operator's merge: the named contact first, then the
    /// merged one; a contact merged into itself is no change.
    fn merge_contacts(&mut self, from: &str) {
        let event = self.event;
        let Ok(named) = self.named_contact() else {
            self.rejected = Some("unknown_contact");
            return;
        };
        let mut live = Vec::new();
        for id in [named.as_str(), from] {
            match self.follow(id) {
                Target::Active(id) => live.push(id),
                Target::Deleted(at) if event.at < at => return,
                _ => {
                    self.rejected = Some("unknown_contact");
                    return;
                }
            }
        }
        if live[0] != live[1] {
            self.merge(&live[1], &live[0]);
        }
    }

    /// Contract 3.7, "Disconnect".
    fn unlink(&mut self) {
        let session_id = self.event.session.clone().unwrap();
        let Some(attached) = self.tenant.sessions.get(&session_id).and_then(|s| s.contact.clone()) else { return };
        let Target::Active(contact_id) = self.follow(&attached) else { return };
        let contact = self.contact(&contact_id);
        contact.sessions.remove(&session_id);
        let moved: Vec<String> =
            contact.timeline.iter().filter(|(_, e)| e.session.as_ref() == Some(&session_id)).map(|(id, _)| id.clone()).collect();
        let entries: Vec<(String, Entry)> = moved.iter().map(|id| (id.clone(), contact.timeline.remove(id).unwrap())).collect();
        let session = self.session(&session_id);
        session.contact = None;
        session.attached_by = None;
        session.pending.extend(entries);
        let (id, entry) = self.new_entry(None, None);
        self.contact(&contact_id).timeline.insert(id, entry);
    }

    /// Contract 3.8.
    fn delete(&mut self) {
        let event = self.event;
        let requested = match self.named_contact() {
            Ok(contact) => contact,
            Err(session_id) => {
                *self.session(&session_id) = Session { erased_at: Some(event.at), ..Session::default() };
                return;
            }
        };
        let contact_id = match self.follow(&requested) {
            Target::Active(id) => id,
            Target::Deleted(_) => return,
            Target::Unknown => {
                self.tenant.contacts.insert(requested, Record::Deleted(event.at));
                return;
            }
        };
        let Some(Record::Active(contact)) = self.tenant.contacts.insert(contact_id, Record::Deleted(event.at)) else {
            unreachable!()
        };
        for (id, _) in contact.identifiers {
            self.tenant.claims.insert(id, Claim::Released { at: event.at, erased: true });
        }
        for session in contact.sessions {
            *self.session(&session) = Session { erased_at: Some(event.at), ..Session::default() };
        }
    }
}

// ---------------------------------------------------------------------------
// Events: what the generator draws, as the engine reads them and as the model does.

struct TenantSetup {
    id: &'static str,
    region: &'static str,
}

const TENANTS: [TenantSetup; 2] = [TenantSetup { id: "t1", region: "CZ" }, TenantSetup { id: "t2", region: "DE" }];
const CHANNELS: [&str; 6] = ["chat", "whatsapp", "email", "messenger", "voip", "apple"];
const SESSIONS: u8 = 5;
const CUSTOMERS: usize = 4;
const OPERATOR_CONTACTS: u8 = 3;
const NAMES: [(&str, &str); 5] = [
    ("  Jana   Nováková ", "Jana Nováková"),
    ("Nova\u{301}k Petr", "Novák Petr"),
    ("Oleh Shevchenko", "Oleh Shevchenko"),
    ("Anna\tMüller", "Anna Müller"),
    ("Łukasz Wiśniewski", "Łukasz Wiśniewski"),
];
const JUNK: [&str; 5] = ["n/a", "  ", "undefined", "null", "-"];

/// A real value's raw forms, each normalizing to `normal` (from the vectors).
#[derive(Clone, Debug)]
struct Forms {
    normal: String,
    raw: Vec<String>,
}

struct Pools {
    emails: Vec<Forms>,
    /// Addresses that are no identifier.
    bad_emails: Vec<String>,
    /// Per tenant, numbers in that tenant's default region.
    phones: [Vec<Forms>; 2],
    bad_phones: [Vec<String>; 2],
}

fn vectors(file: &str) -> Vec<Value> {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// Raw forms grouped by what they normalize to.
fn grouped(cases: impl Iterator<Item = (String, String)>) -> Vec<Forms> {
    let mut by_normal: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (raw, normal) in cases {
        by_normal.entry(normal).or_default().push(raw);
    }
    by_normal.into_iter().map(|(normal, raw)| Forms { normal, raw }).collect()
}

static POOLS: LazyLock<Pools> = LazyLock::new(|| {
    let emails = vectors("emails.jsonl");
    // The one case where the engine departs from the reference on purpose
    // (docs/testing.md): a local part over 64 octets is no address.
    let valid = emails
        .iter()
        .filter_map(|c| Some((c["raw"].as_str()?.to_owned(), c["expected"].as_str()?.to_owned())))
        .filter(|(_, normal)| normal.split('@').next().is_some_and(|local| local.len() <= 64));
    let bad_emails = emails.iter().filter(|c| c["expected"].is_null()).map(|c| c["raw"].as_str().unwrap().to_owned());
    let phones = vectors("phones.jsonl");
    let in_region = |region: &str| {
        let cases: Vec<(String, String)> = phones
            .iter()
            .filter(|c| c["region"] == region)
            .filter_map(|c| Some((c["raw"].as_str()?.to_owned(), c["expected"].as_str()?.to_owned())))
            .collect();
        grouped(cases.into_iter())
    };
    let bad_in = |region: &str| {
        let bad = phones.iter().filter(|c| c["region"] == region && c["expected"].is_null());
        bad.map(|c| c["raw"].as_str().unwrap().to_owned()).collect()
    };
    Pools {
        emails: grouped(valid),
        bad_emails: bad_emails.collect(),
        phones: [in_region(TENANTS[0].region), in_region(TENANTS[1].region)],
        bad_phones: [bad_in(TENANTS[0].region), bad_in(TENANTS[1].region)],
    }
});

/// The values one case gives its customers: a window, at a drawn offset,
/// into every value of the vectors, so that the cases between them cover
/// every format there.
struct Cast<'p> {
    pools: &'p Pools,
    offset: usize,
}

impl Cast<'_> {
    fn email(&self, n: usize) -> &Forms {
        let emails = &self.pools.emails;
        &emails[(self.offset + n) % emails.len()]
    }

    fn phone(&self, tenant: usize, n: usize) -> &Forms {
        let phones = &self.pools.phones[tenant];
        &phones[(self.offset + n) % phones.len()]
    }

    fn bad_email(&self, n: usize) -> &str {
        let bad = &self.pools.bad_emails;
        &bad[(self.offset + n) % bad.len()]
    }

    fn bad_phone(&self, tenant: usize, n: usize) -> &str {
        let bad = &self.pools.bad_phones[tenant];
        &bad[(self.offset + n) % bad.len()]
    }
}

/// One drawn step: what happens, and the numbers that pick its parts.
#[derive(Clone, Debug)]
struct Step {
    kind: u8,
    tenant: bool,
    session: u8,
    customer: u8,
    /// Which identity fields the event carries, and which are junk.
    fields: u8,
    junk: u8,
    form: u8,
    operator_contact: u8,
    minute: u16,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0u8..16,
        any::<bool>(),
        0..SESSIONS,
        0..CUSTOMERS as u8,
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        0..OPERATOR_CONTACTS,
        1u16..240,
    )
        .prop_map(|(kind, tenant, session, customer, fields, junk, form, operator_contact, minute)| Step {
            kind,
            tenant,
            session,
            customer,
            fields,
            junk,
            form,
            operator_contact,
            minute,
        })
}

/// A customer's identity in one event: raw JSON and normalized identifiers.
fn identity(step: &Step, tenant: usize, customer: usize, cast: &Cast) -> (Value, Vec<Id>, Option<String>) {
    let pick = |raw: &[String], salt: u8| raw[usize::from(step.form.wrapping_add(salt)) % raw.len()].clone();
    let junk = |bit: u8| step.junk & (1 << bit) != 0;
    let has = |bit: u8| step.fields & (1 << bit) != 0;
    let mut raw = json!({});
    let mut ids = Vec::new();
    let mut name = None;
    if has(0) {
        // Two e-mails per customer, the second one seen less often and shared
        // with the next customer (a family's address): so customers claim
        // what others own, and conflicts are raised, released and settled.
        let shared = (customer + 1) % CUSTOMERS;
        let forms = if step.form.is_multiple_of(4) { cast.email(shared * 2) } else { cast.email(customer * 2) };
        if junk(0) {
            raw["emails"] = json!([cast.bad_email(customer)]);
        } else {
            raw["emails"] = json!([pick(&forms.raw, 0)]);
            ids.push((Kind::Email, forms.normal.clone()));
        }
    }
    if has(1) {
        let forms = cast.phone(tenant, customer * 2 + usize::from(step.form.is_multiple_of(3)));
        if junk(1) {
            raw["phones"] = json!([cast.bad_phone(tenant, customer)]);
        } else {
            raw["phones"] = json!([pick(&forms.raw, 3)]);
            ids.push((Kind::Phone, forms.normal.clone()));
        }
    }
    if has(2) {
        raw["browser_id"] = json!(if junk(2) { JUNK[customer].to_owned() } else { format!(" br-{customer} ") });
        if !junk(2) {
            ids.push((Kind::Browser, format!("br-{customer}")));
        }
    }
    if has(3) {
        raw["whatsapp_id"] = json!(if junk(3) { JUNK[customer].to_owned() } else { format!("42077700000{customer}") });
        if !junk(3) {
            ids.push((Kind::Whatsapp, format!("42077700000{customer}")));
        }
    }
    if has(4) {
        // `crm` identifies; `plan` does not (tenant.configured lists only `crm`).
        raw["params"] = json!({ "crm": format!(" CRM-{customer} "), "plan": "gold" });
        ids.push((Kind::Param, format!("crm=CRM-{customer}")));
    }
    if has(5) {
        let (raw_name, normal) = NAMES[customer];
        raw["name"] = json!(if junk(5) { "undefined" } else { raw_name });
        name = (!junk(5)).then(|| normal.to_owned());
    }
    (raw, ids, name)
}

/// Builds the events of a drawn sequence, each as JSON and as the model reads
/// it, applying each to `model` as it goes: a dismissal names a conflict the
/// model has raised by then (or, drawn so, one nobody raised).
fn events(steps: &[Step], cast: &Cast, model: &mut Model) -> Vec<(Value, Happening)> {
    let mut out: Vec<(Value, Happening)> = Vec::new();
    for (index, setup) in TENANTS.iter().enumerate() {
        let json = json!({
            "schema": "contact-event/v1", "event_id": "config", "tenant_id": setup.id, "type": "tenant.configured",
            "occurred_at": "2026-11-02T00:00:00Z", "channel": "operator",
            "payload": { "identifying_params": ["crm"], "default_phone_region": setup.region },
        });
        let happening = Happening {
            tenant: index,
            id: "config".into(),
            at: 0,
            session: None,
            contact: None,
            what: What::Provided,
            identity: Vec::new(),
            name: None,
            by_operator: true,
            word: None,
        };
        model.apply(&happening);
        out.push((json, happening));
    }
    let configured = out.len();
    for (n, step) in steps.iter().enumerate() {
        if step.kind == 13 && out.len() > configured {
            let again = out[configured + usize::from(step.form) % (out.len() - configured)].clone();
            model.apply(&again.1);
            out.push(again);
            continue;
        }
        let tenant = usize::from(step.tenant);
        let customer = usize::from(step.customer);
        let session_number = step.session;
        let session = format!("s{session_number}");
        let operator_contact = format!("op-{}", step.operator_contact);
        let channel = CHANNELS[usize::from(session_number) % CHANNELS.len()];
        let id = format!("e{n}");
        let word = format!("w{n}x");
        let (raw_identity, ids, name) = identity(step, tenant, customer, cast);
        let mut happening = Happening {
            tenant,
            id: id.clone(),
            at: u32::from(step.minute),
            session: Some(session.clone()),
            contact: None,
            what: What::Provided,
            identity: Vec::new(),
            name: None,
            by_operator: false,
            word: None,
        };
        let mut json = json!({
            "schema": "contact-event/v1", "event_id": id, "tenant_id": TENANTS[tenant].id,
            "occurred_at": format!("2026-11-02T{:02}:{:02}:00Z", step.minute / 60, step.minute % 60),
            "channel": channel, "session_id": session,
        });
        let with_identity = |json: &mut Value, happening: &mut Happening| {
            json["identity"] = raw_identity.clone();
            happening.identity = ids.clone();
            happening.name = name.clone();
        };
        // By session, by operator contact, or naming both (a contact the
        // session may not be attached to), as an operator event may.
        let by_contact = |json: &mut Value, happening: &mut Happening| {
            if step.fields & 0x80 != 0 {
                json.as_object_mut().unwrap().remove("session_id");
                happening.session = None;
            }
            if step.fields & 0xc0 != 0 {
                json["contact_id"] = json!(operator_contact);
                happening.contact = Some(operator_contact.clone());
            }
        };
        // Some operator steps aim at a party of a conflict the model holds
        // open, which chance alone seldom does: its owner removes the
        // identifier, either party is erased, or the two are merged.
        let party = open_conflict(model, tenant, step).filter(|_| matches!(step.kind, 9 | 10 | 14) && step.junk & 0x20 != 0);
        if let Some(conflict) = party {
            json.as_object_mut().unwrap().remove("session_id");
            json["channel"] = json!("operator");
            happening.session = None;
            let (owner, claimant) = (conflict.owner.clone(), conflict.claimant.clone());
            match step.kind {
                9 => {
                    // Just after the owner took it: a removal older than that would not take it away.
                    if let Some(Record::Active(held)) = model.tenants[tenant].contacts.get(&owner)
                        && let Some((_, added)) = held.identifiers.iter().find(|(id, _)| *id == conflict.identifier)
                    {
                        happening.at = (*added + 1).max(happening.at);
                        json["occurred_at"] = json!(format!("2026-11-02T{:02}:{:02}:00Z", happening.at / 60, happening.at % 60));
                    }
                    json["type"] = json!("contact.updated");
                    json["contact_id"] = json!(engine_id(tenant, &owner));
                    json["payload"] = json!({ "remove": raw(&conflict.identifier) });
                    happening.contact = Some(owner);
                    happening.by_operator = true;
                    happening.what = What::Updated { set_name: None, add: Vec::new(), remove: vec![conflict.identifier.clone()] };
                }
                10 => {
                    let erased = if step.form % 2 == 0 { owner } else { claimant };
                    json["type"] = json!("contact.deleted");
                    json["contact_id"] = json!(engine_id(tenant, &erased));
                    happening.contact = Some(erased);
                    happening.what = What::Deleted;
                }
                _ => {
                    json["type"] = json!("contact.merged");
                    json["contact_id"] = json!(engine_id(tenant, &owner));
                    json["payload"] = json!({ "from_contact_id": engine_id(tenant, &claimant) });
                    happening.contact = Some(owner);
                    happening.what = What::Merged { from: claimant };
                }
            }
            model.apply(&happening);
            out.push((json, happening));
            continue;
        }
        match step.kind {
            0 | 1 => {
                json["type"] = json!("session.started");
                json["payload"] = json!({ "invited": step.form % 5 == 0 });
                with_identity(&mut json, &mut happening);
                happening.what = What::Started;
            }
            2 => {
                json["type"] = json!("identity.provided");
                with_identity(&mut json, &mut happening);
            }
            3..=5 => {
                json["type"] = json!("message.posted");
                json["payload"] =
                    json!({ "message_id": format!("m{n}"), "author": "guest", "text": format!("about {word} today") });
                happening.what = What::Message;
                happening.word = Some(word);
            }
            6 => {
                // The thread's participants: customers' addresses, in thread order, sometimes one that is no address.
                let mut participants = Vec::new();
                let mut normal = Vec::new();
                for k in 0..1 + usize::from(step.fields % 3) {
                    let who = (customer + k * usize::from(step.form % 4 + 1)) % CUSTOMERS;
                    if step.junk & (1 << k) != 0 {
                        participants.push(cast.bad_email(who).to_owned());
                    } else {
                        let forms = cast.email(who * 2);
                        participants.push(forms.raw[usize::from(step.form) % forms.raw.len()].clone());
                        normal.push((Kind::Email, forms.normal.clone()));
                    }
                }
                json["type"] = json!("email.received");
                json["channel"] = json!("email");
                json["payload"] = json!({
                    "thread_id": format!("th{session_number}"), "message_id": format!("m{n}"), "subject": "order",
                    "text": format!("mail {word}"), "participants": participants,
                });
                happening.what = What::Email { participants: normal };
                happening.word = Some(word);
            }
            7 => {
                json["type"] = json!("note.added");
                json["channel"] = json!("operator");
                json["payload"] = json!({ "note_id": format!("n{n}"), "author": "op", "text": format!("note {word}") });
                by_contact(&mut json, &mut happening);
                happening.what = What::Note;
                happening.word = Some(word);
            }
            8 => {
                // "+ Add client": an operator's id or one derived from the
                // event, with the session of the conversation or without.
                json["type"] = json!("contact.created");
                json["channel"] = json!("operator");
                if step.junk & 0x40 == 0 {
                    json.as_object_mut().unwrap().remove("session_id");
                    happening.session = None;
                }
                if step.junk & 0x80 == 0 {
                    json["contact_id"] = json!(operator_contact);
                    happening.contact = Some(operator_contact.clone());
                }
                with_identity(&mut json, &mut happening);
                happening.by_operator = true;
                happening.what = What::Created;
            }
            9 => {
                json["type"] = json!("contact.updated");
                json["channel"] = json!("operator");
                let set_name = (step.form % 2 == 0).then(|| format!("Operator Name {}", step.form % 3));
                let (add, remove) =
                    if step.junk % 2 == 0 { (raw_identity.clone(), json!({})) } else { (json!({}), raw_identity.clone()) };
                let (add_ids, remove_ids) =
                    if step.junk % 2 == 0 { (ids.clone(), Vec::new()) } else { (Vec::new(), ids.clone()) };
                json["payload"] = json!({ "set_name": set_name, "add": add, "remove": remove });
                by_contact(&mut json, &mut happening);
                happening.by_operator = true;
                // A name in `add` is an operator's name too.
                happening.name = if step.junk % 2 == 0 { name.clone() } else { None };
                happening.what = What::Updated { set_name, add: add_ids, remove: remove_ids };
            }
            10 => {
                json["type"] = json!("contact.deleted");
                json["channel"] = json!("operator");
                by_contact(&mut json, &mut happening);
                happening.what = What::Deleted;
            }
            11 => {
                json["type"] = json!("session.linked");
                json["channel"] = json!("operator");
                json["contact_id"] = json!(operator_contact);
                happening.contact = Some(operator_contact.clone());
                happening.what = What::Linked;
            }
            15 => {
                // A dismissal of a conflict raised so far (open or closed), or
                // of one nobody raised, under the id the contract derives.
                let raised = &model.tenants[tenant].conflicts;
                let (event, identifier) = match raised.get(usize::from(step.form) % (raised.len() + 1)) {
                    Some(conflict) => (conflict.event.clone(), conflict.identifier.clone()),
                    None => ("none".to_owned(), (Kind::Email, "nobody@example.cz".to_owned())),
                };
                let tenant_id = TENANTS[tenant].id;
                let conflict_id = contactd::model::derived_id("cf-", &[tenant_id, &event, &shown_identifier(&identifier)]);
                json["type"] = json!("conflict.dismissed");
                json["channel"] = json!("operator");
                json.as_object_mut().unwrap().remove("session_id");
                json["payload"] = json!({ "conflict_id": conflict_id });
                happening.session = None;
                happening.what = What::Dismissed { event, identifier };
            }
            14 => {
                let from = format!("op-{}", step.form % OPERATOR_CONTACTS);
                json["type"] = json!("contact.merged");
                json["channel"] = json!("operator");
                json["payload"] = json!({ "from_contact_id": from });
                by_contact(&mut json, &mut happening);
                happening.what = What::Merged { from };
            }
            _ => {
                json["type"] = json!("session.unlinked");
                json["channel"] = json!("operator");
                happening.what = What::Unlinked;
            }
        }
        model.apply(&happening);
        out.push((json, happening));
    }
    out
}

// ---------------------------------------------------------------------------
// The property.

fn check(steps: &[Step], batches: &[u8], offset: usize) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let events = events(steps, &Cast { pools: &POOLS, offset }, &mut model);
    let mut directory = Directory::on_disk();
    let lines: Vec<String> = events.iter().map(|(json, _)| json.to_string()).collect();
    let mut rest = &lines[..];
    let mut rejections = Vec::new();
    for size in batches.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, after) = rest.split_at(usize::from(*size).clamp(1, rest.len()));
        rejections.extend(directory.feed_lines(batch).1);
        rest = after;
    }
    prop_assert_eq!(&rejections, &model.rejections, "dead letters");

    let expected: Vec<(Shown, String)> = {
        let mut expected: Vec<(Shown, String)> = model
            .snapshot()
            .into_iter()
            .map(|(shown, id)| {
                let tenant = TENANTS.iter().position(|t| t.id == shown.tenant).unwrap();
                let id = engine_id(tenant, &id);
                (shown, id)
            })
            .collect();
        expected.sort();
        expected
    };
    let mut actual: Vec<(Shown, String)> = directory
        .export()
        .into_iter()
        .map(|c| {
            let shown = Shown {
                tenant: c.tenant_id.to_string(),
                name: c.state.name,
                emails: c.state.emails,
                phones: c.state.phones,
                whatsapp: c.state.channel_ids.whatsapp,
                browser: c.state.channel_ids.browser,
                params: c.state.params,
                sessions: c.sessions.into_iter().map(contactd::model::SessionId::into_string).collect(),
                entries: c.timeline_entries,
            };
            (shown, c.contact_id.into_string())
        })
        .collect();
    actual.sort();
    prop_assert_eq!(&actual, &expected);
    crate::harness::assert_invariants(&directory.store);

    for (tenant_index, tenant) in model.tenants.iter().enumerate() {
        let tenant_id = contactd::model::TenantId::from(TENANTS[tenant_index].id);
        let mut queue = BTreeSet::new();
        let mut cursor = None;
        loop {
            let page = contactd::store::view::conflict_page(&directory.store, &tenant_id, cursor.as_deref(), 100).unwrap();
            for open in page.conflicts {
                let identifier = (model_kind(open.kind.as_str()), open.value);
                let owner = open.owner_contact_id.expect("conflicts here have owners").into_string();
                queue.insert((open.event_id, identifier, owner, open.claimant_contact_id.into_string()));
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let expected: BTreeSet<_> = model
            .open_conflicts(tenant_index)
            .into_iter()
            .map(|(event, id, owner, claimant)| (event, id, engine_id(tenant_index, &owner), engine_id(tenant_index, &claimant)))
            .collect();
        prop_assert_eq!(queue, expected, "open conflicts of tenant {}", TENANTS[tenant_index].id);

        for (id, record) in &tenant.contacts {
            let Record::Active(contact) = record else { continue };
            let engine = engine_id(tenant_index, id);
            let explained = contactd::store::view::explain_view(&directory.store, &tenant_id, &engine.as_str().into()).unwrap();
            let why =
                |value: &Value| (value["rule"].as_str().unwrap().to_owned(), value["event_id"].as_str().unwrap().to_owned());
            let identifiers: BTreeMap<Id, (String, String)> = explained["identifiers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| ((model_kind(i["kind"].as_str().unwrap()), i["value"].as_str().unwrap().to_owned()), why(i)))
                .collect();
            let expected: BTreeMap<Id, (String, String)> =
                contact.why.iter().map(|(id, (rule, event))| (id.clone(), ((*rule).to_owned(), event.clone()))).collect();
            prop_assert_eq!(identifiers, expected, "explain of contact {}'s identifiers", id);
            let sessions: BTreeMap<String, (String, String)> = explained["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| (s["session_id"].as_str().unwrap().to_owned(), why(s)))
                .collect();
            let expected: BTreeMap<String, (String, String)> = contact
                .sessions
                .iter()
                .map(|session| {
                    let (rule, event) = tenant.sessions[session].attached_by.clone().expect("an attached session knows why");
                    (session.clone(), (rule.to_owned(), event))
                })
                .collect();
            prop_assert_eq!(sessions, expected, "explain of contact {}'s sessions", id);
        }
    }

    let index = SearchIndex::open_or_create(&directory.path().join("index")).unwrap();
    crate::index::follow(&directory, &index);
    for (tenant_index, tenant) in model.tenants.iter().enumerate() {
        let mut homes: HashMap<&str, Option<String>> = HashMap::new();
        for (id, record) in &tenant.contacts {
            if let Record::Active(contact) = record {
                for entry in contact.timeline.values() {
                    homes.extend(entry.word.as_deref().map(|word| (word, Some(engine_id(tenant_index, id)))));
                }
            }
        }
        for session in tenant.sessions.values() {
            homes.extend(session.pending.values().filter_map(|e| e.word.as_deref()).map(|word| (word, None)));
        }
        for (word, home) in homes {
            let query = TimelineQuery {
                tenant: TENANTS[tenant_index].id.into(),
                text: word.into(),
                limit: 5,
                ..TimelineQuery::default()
            };
            let hits: Vec<String> =
                index.timeline.search(&query).unwrap().into_iter().map(|hit| hit.contact_id.into_string()).collect();
            let expected: Vec<String> = home.into_iter().collect();
            prop_assert_eq!(hits, expected, "search for {} in tenant {}", word, TENANTS[tenant_index].id);
        }
    }
    Ok(())
}

/// An open conflict of the model's in `tenant`, as merges left its parties,
/// chosen by `step`.
fn open_conflict(model: &Model, tenant: usize, step: &Step) -> Option<Conflict> {
    let open: Vec<_> = model.open_conflicts(tenant).into_iter().collect();
    let (event, identifier, owner, claimant) = open.get(usize::from(step.form) % open.len().max(1))?.clone();
    Some(Conflict { event, identifier, owner, claimant, open: true })
}

/// The identity block that names one identifier.
fn raw((kind, value): &Id) -> Value {
    match kind {
        Kind::Email => json!({ "emails": [value] }),
        Kind::Phone => json!({ "phones": [value] }),
        Kind::Whatsapp => json!({ "whatsapp_id": value }),
        Kind::Browser => json!({ "browser_id": value }),
        Kind::Param => {
            let (name, value) = value.split_once('=').unwrap();
            json!({ "params": { name: value } })
        }
    }
}

/// The engine's id of a model contact: operators' ids are the same; a
/// founded contact's is derived from its tenant and event as the contract
/// documents (docs/contract.md 3.3), where the model writes `m-EVENT`.
fn engine_id(tenant: usize, model_id: &str) -> String {
    match model_id.strip_prefix("m-") {
        Some(event) => contactd::model::derived_id("c-", &[TENANTS[tenant].id, event]),
        None => model_id.to_owned(),
    }
}

/// An identifier as the engine names it, `kind:value` (a conflict id is derived from it).
fn shown_identifier((kind, value): &Id) -> String {
    let kind = match kind {
        Kind::Param => "param",
        Kind::Whatsapp => "whatsapp",
        Kind::Email => "email",
        Kind::Phone => "phone",
        Kind::Browser => "browser",
    };
    format!("{kind}:{value}")
}

fn model_kind(kind: &str) -> Kind {
    match kind {
        "param" => Kind::Param,
        "whatsapp" => Kind::Whatsapp,
        "email" => Kind::Email,
        "phone" => Kind::Phone,
        "browser" => Kind::Browser,
        other => panic!("the model draws no {other} identifier"),
    }
}

fn run(cases: u32) {
    let config = ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/proptest-regressions/model.txt"
        )))),
        ..ProptestConfig::default()
    };
    let strategy = (proptest::collection::vec(step(), 1..60), proptest::collection::vec(1u8..8, 1..4), any::<u16>());
    TestRunner::new(config).run(&strategy, |(steps, batches, offset)| check(&steps, &batches, usize::from(offset))).unwrap();
}

#[test]
fn the_engine_builds_the_directory_the_reference_model_builds() {
    run(256);
}

#[test]
#[ignore = "a long run for people to start by hand"]
fn the_engine_builds_the_directory_the_reference_model_builds_long_run() {
    run(20_000);
}

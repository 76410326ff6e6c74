//! Synthetic corpus for benchmarks and soak tests: interleaved conversations of
//! returning customers across tenants and every channel, with redeliveries and a
//! little bad input, deterministic for a given seed.

use std::collections::VecDeque;
use std::io::{self, Write};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::model::Timestamp;

#[derive(Clone, Debug)]
pub struct GenOptions {
    pub events: u64,
    pub tenants: u32,
    pub seed: u64,
    /// Share of lines that repeat an earlier line (a redelivery).
    pub duplicate_ratio: f64,
    /// Share of lines that are not valid events.
    pub bad_ratio: f64,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self { events: 100_000, tenants: 10, seed: 7, duplicate_ratio: 0.01, bad_ratio: 0.001 }
    }
}

const WORDS: [&str; 64] = [
    "order",
    "refund",
    "parcel",
    "delivery",
    "invoice",
    "payment",
    "card",
    "account",
    "password",
    "login",
    "warranty",
    "certificate",
    "tyre",
    "winter",
    "promotion",
    "discount",
    "price",
    "shipping",
    "address",
    "courier",
    "return",
    "exchange",
    "size",
    "colour",
    "broken",
    "damaged",
    "missing",
    "late",
    "today",
    "tomorrow",
    "week",
    "please",
    "thanks",
    "hello",
    "help",
    "question",
    "status",
    "tracking",
    "number",
    "email",
    "phone",
    "callback",
    "manager",
    "complaint",
    "subscription",
    "cancel",
    "renew",
    "upgrade",
    "plan",
    "bill",
    "charge",
    "twice",
    "receipt",
    "store",
    "pickup",
    "opening",
    "hours",
    "weekend",
    "stock",
    "available",
    "reserve",
    "confirm",
    "appointment",
    "service",
];

/// How many conversations run at once; their events interleave like a busy queue.
const OPEN_SESSIONS: usize = 64;
/// How far back a redelivery may reach, in lines.
const REDELIVERY_WINDOW: usize = 512;

struct Session {
    events: VecDeque<Value>,
}

pub struct Generator {
    options: GenOptions,
    rng: SmallRng,
    clock: i64,
    next_session: u64,
    customers_per_tenant: u64,
}

impl Generator {
    pub fn new(options: GenOptions) -> Self {
        let customers_per_tenant = (options.events / u64::from(options.tenants.max(1)) / 25).max(10);
        Self {
            rng: SmallRng::seed_from_u64(options.seed),
            options,
            clock: 1_767_225_600_000_000,
            next_session: 0,
            customers_per_tenant,
        }
    }

    fn tenant(&self, t: u32) -> String {
        format!("tenant-{t:03}")
    }

    fn sentence(&mut self) -> String {
        let len = self.rng.random_range(6..18);
        let mut words = Vec::with_capacity(len);
        for _ in 0..len {
            // Squaring skews towards the first words, like natural term frequencies.
            let pick = self.rng.random::<f64>().powi(2) * WORDS.len() as f64;
            words.push(WORDS[(pick as usize).min(WORDS.len() - 1)]);
        }
        words.join(" ")
    }

    fn envelope(&mut self, tenant: &str, kind: &str, channel: &str, session: &str, event_no: &mut u32) -> Value {
        self.clock += self.rng.random_range(1..2_000_000);
        *event_no += 1;
        json!({
            "schema": "contact-event/v1",
            "event_id": format!("{session}-{event_no}"),
            "tenant_id": tenant,
            "type": kind,
            "occurred_at": Timestamp::from_micros(self.clock).to_rfc3339(),
            "channel": channel,
            "session_id": session,
        })
    }

    fn conversation(&mut self) -> Session {
        let t = self.rng.random_range(0..self.options.tenants.max(1));
        let tenant = self.tenant(t);
        // Returning customers: a skewed pick makes some customers frequent.
        let customer = (self.rng.random::<f64>().powi(3) * self.customers_per_tenant as f64) as u64;
        self.next_session += 1;
        let session = format!("s{}", self.next_session);
        let channel = match self.rng.random_range(0..100) {
            0..40 => "chat",
            40..55 => "email",
            55..65 => "messenger",
            65..80 => "whatsapp",
            80..85 => "apple",
            85..90 => "vk",
            _ => "voip",
        };
        let email = format!("customer{customer}@mail{}.example", customer % 97);
        let phone = format!("+42077{:07}", customer % 10_000_000);
        let name = format!("Customer {customer}");
        let mut n = 0;
        let mut events = VecDeque::new();
        let mut start = |g: &mut Self, identity: Value, payload: Value| {
            let mut e = g.envelope(&tenant, "session.started", channel, &session, &mut n);
            e["identity"] = identity;
            e["payload"] = payload;
            e
        };
        match channel {
            "email" => {
                let mut e = self.envelope(&tenant, "email.received", channel, &session, &mut n);
                let mut participants = vec![email.clone()];
                if self.rng.random_bool(0.2) {
                    participants.insert(0, format!("colleague{}@corp.example", self.rng.random_range(0..1000)));
                }
                e["payload"] = json!({ "thread_id": format!("th-{session}"), "message_id": format!("<{session}@m>"),
                    "subject": self.sentence(), "text": self.sentence(), "participants": participants });
                events.push_back(e);
                let mut reply = self.envelope(&tenant, "email.sent", channel, &session, &mut n);
                reply["payload"] = json!({ "thread_id": format!("th-{session}"), "message_id": format!("<{session}@r>"),
                    "subject": "Re: your request", "text": self.sentence(), "participants": [email] });
                events.push_back(reply);
                return Session { events };
            }
            "voip" => {
                let mut e = self.envelope(&tenant, "call.ended", channel, &session, &mut n);
                e["identity"] = json!({ "phones": [phone], "source": "channel" });
                e["payload"] = json!({ "direction": "inbound", "duration_ms": self.rng.random_range(10_000..900_000), "transcript": self.sentence() });
                events.push_back(e);
                return Session { events };
            }
            "chat" => {
                let browser = format!("b-{t}-{customer}");
                let invited = self.rng.random_bool(0.2);
                let e = start(self, json!({ "browser_id": browser, "source": "channel" }), json!({ "invited": invited }));
                events.push_back(e);
            }
            "messenger" => {
                let e = start(
                    self,
                    json!({ "name": name, "facebook_psid": { "page_id": format!("page-{t}"), "psid": format!("{customer}") }, "source": "oauth_facebook" }),
                    json!({}),
                );
                events.push_back(e);
            }
            "whatsapp" => {
                let e = start(
                    self,
                    json!({ "whatsapp_id": phone.trim_start_matches('+'), "phones": [phone], "source": "channel" }),
                    json!({}),
                );
                events.push_back(e);
            }
            "apple" => {
                let e = start(self, json!({ "apple_id": format!("urn:apple:{t}:{customer}"), "source": "channel" }), json!({}));
                events.push_back(e);
            }
            _ => {
                let e = start(self, json!({ "vk_id": format!("{customer}"), "emails": [email], "source": "channel" }), json!({}));
                events.push_back(e);
            }
        }
        let messages = self.rng.random_range(3..9);
        let identify_at =
            if channel == "chat" && self.rng.random_bool(0.7) { Some(self.rng.random_range(0..messages)) } else { None };
        for m in 0..messages {
            if identify_at == Some(m) {
                let mut e = self.envelope(&tenant, "identity.provided", channel, &session, &mut n);
                e["identity"] = json!({ "name": name, "emails": [email], "phones": [phone], "source": "form" });
                events.push_back(e);
            }
            let mut e = self.envelope(&tenant, "message.posted", channel, &session, &mut n);
            let author = if m % 2 == 0 { "guest" } else { "operator" };
            e["payload"] = json!({ "message_id": format!("m{m}"), "author": author, "text": self.sentence() });
            events.push_back(e);
        }
        if self.rng.random_bool(0.1) {
            let mut e = self.envelope(&tenant, "note.added", channel, &session, &mut n);
            e["payload"] = json!({ "note_id": "n1", "author": "operator", "text": self.sentence() });
            events.push_back(e);
        }
        let mut end = self.envelope(&tenant, "session.ended", channel, &session, &mut n);
        end["payload"] = json!({ "duration_ms": self.rng.random_range(30_000..1_800_000) });
        events.push_back(end);
        Session { events }
    }

    /// Writes `options.events` lines of JSONL, returning the count written.
    pub fn write(&mut self, out: &mut impl Write) -> io::Result<u64> {
        let mut written = 0;
        for t in 0..self.options.tenants.max(1) {
            let tenant = self.tenant(t);
            let line = json!({ "schema": "contact-event/v1", "event_id": "config-1", "tenant_id": tenant, "type": "tenant.configured",
                "occurred_at": Timestamp::from_micros(self.clock).to_rfc3339(), "channel": "operator",
                "payload": { "identifying_params": ["crm_id"], "default_phone_region": "CZ" } });
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            written += 1;
        }
        let mut open: Vec<Session> = Vec::with_capacity(OPEN_SESSIONS);
        let mut recent: VecDeque<String> = VecDeque::with_capacity(REDELIVERY_WINDOW);
        while written < self.options.events {
            let roll = self.rng.random::<f64>();
            let line = if roll < self.options.bad_ratio {
                "{\"schema\":\"contact-event/v1\",\"event_id\":\"broken".to_owned()
            } else if roll < self.options.bad_ratio + self.options.duplicate_ratio && !recent.is_empty() {
                recent[self.rng.random_range(0..recent.len())].clone()
            } else {
                while open.len() < OPEN_SESSIONS {
                    let session = self.conversation();
                    open.push(session);
                }
                let pick = self.rng.random_range(0..open.len());
                let event = open[pick].events.pop_front().expect("open sessions have events");
                if open[pick].events.is_empty() {
                    open.swap_remove(pick);
                }
                let line = event.to_string();
                if recent.len() == REDELIVERY_WINDOW {
                    recent.pop_front();
                }
                recent.push_back(line.clone());
                line
            };
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
            written += 1;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_is_deterministic_and_sized() {
        let generate = || {
            let mut out = Vec::new();
            let n = Generator::new(GenOptions { events: 500, ..GenOptions::default() }).write(&mut out).unwrap();
            (n, out)
        };
        let (n, first) = generate();
        assert_eq!(n, 500);
        assert_eq!(first.iter().filter(|b| **b == b'\n').count(), 500);
        assert_eq!(first, generate().1);
    }

    #[test]
    fn generated_events_decode() {
        let mut out = Vec::new();
        Generator::new(GenOptions { events: 2_000, bad_ratio: 0.0, ..GenOptions::default() }).write(&mut out).unwrap();
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            crate::event::decode(line).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)));
        }
    }
}

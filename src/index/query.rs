//! The search language, for what people type into a search box: words (all
//! must match), `"phrases"`, `a OR b`, `-exclusion` and a trailing `*` on a
//! word or a phrase for a prefix. Everything else is text: colons, slashes,
//! brackets, field-like `name:value` and unbalanced quotes go through the
//! field's tokenizer like any word, so `Re: invoice`, `order:5521`,
//! `10:30` and a URL find what they say and are never an error. There is no
//! nesting, so no input recurses, and the length and number of parts are
//! capped.

use tantivy::Term;
use tantivy::query::{AllQuery, BooleanQuery, Occur, PhrasePrefixQuery, PhraseQuery, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::tokenizer::TextAnalyzer;

use super::IndexError;

/// Longer queries are refused: nobody types more, and each part costs a
/// posting-list walk.
pub const MAX_QUERY_CHARS: usize = 1_000;
/// More parts than this are refused, for the same reason.
pub const MAX_QUERY_PARTS: usize = 32;
/// How many indexed words a prefix may stand for.
const MAX_PREFIX_EXPANSIONS: u32 = 200;

/// One part of a query as typed.
#[derive(Debug, PartialEq, Eq)]
struct Part<'q> {
    text: &'q str,
    quoted: bool,
    excluded: bool,
    prefix: bool,
    /// Joined to the part before it by `OR`.
    or_previous: bool,
}

/// How a query treats a plain word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Words {
    /// A word matches itself (history search).
    Whole,
    /// An unquoted word matches every word it starts, and an address or
    /// number cut short matches its start (directory search: `nov` finds
    /// Novák, `petr@exa` finds petr@example.cz).
    Prefixes,
}

/// Splits what was typed into parts. Quotes pair up; a quote without its
/// pair is text.
fn parts(text: &str) -> Vec<Part<'_>> {
    let mut parts = Vec::new();
    let mut rest = text.trim_start();
    let mut or_next = false;
    while !rest.is_empty() {
        let excluded = rest.len() > 1 && rest.starts_with('-') && !rest[1..].starts_with(char::is_whitespace);
        let body = if excluded { &rest[1..] } else { rest };
        let (piece, quoted, after) = match body.strip_prefix('"').and_then(|inner| inner.find('"').map(|end| (inner, end))) {
            Some((inner, end)) => (&inner[..end], true, &inner[end + 1..]),
            None => {
                let end = body.find(char::is_whitespace).unwrap_or(body.len());
                (&body[..end], false, &body[end..])
            }
        };
        let (piece, prefix, after) = match after.strip_prefix('*') {
            Some(after) if quoted => (piece, true, after),
            _ if !quoted && piece.len() > 1 && piece.ends_with('*') => (&piece[..piece.len() - 1], true, after),
            _ => (piece, false, after),
        };
        if !quoted && !excluded && piece == "OR" && !parts.is_empty() {
            or_next = true;
        } else {
            parts.push(Part { text: piece, quoted, excluded, prefix, or_previous: or_next });
            or_next = false;
        }
        rest = after.trim_start();
    }
    parts
}

/// The query for `text` over `field`, analyzed with the field's tokenizer;
/// every document when nothing searchable was typed.
pub fn parse(text: &str, field: Field, analyzer: &mut TextAnalyzer, words: Words) -> Result<Box<dyn Query>, IndexError> {
    if text.chars().count() > MAX_QUERY_CHARS {
        return Err(IndexError::BadQuery(format!("a query is at most {MAX_QUERY_CHARS} characters")));
    }
    let parts = parts(text);
    if parts.len() > MAX_QUERY_PARTS {
        return Err(IndexError::BadQuery(format!("a query has at most {MAX_QUERY_PARTS} words, phrases or exclusions")));
    }
    let mut required: Vec<Vec<Box<dyn Query>>> = Vec::new();
    let mut excluded: Vec<Box<dyn Query>> = Vec::new();
    for part in parts {
        let terms: Vec<Term> =
            tokens(analyzer, part.text).into_iter().map(|token| Term::from_field_text(field, &token)).collect();
        let prefix = part.prefix || (words == Words::Prefixes && !part.quoted);
        let Some(query) = part_query(terms, prefix) else { continue };
        if part.excluded {
            excluded.push(query);
        } else if part.or_previous
            && let Some(group) = required.last_mut()
        {
            group.push(query);
        } else {
            required.push(vec![query]);
        }
    }
    if required.is_empty() && excluded.is_empty() {
        return Ok(Box::new(AllQuery));
    }
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = required
        .into_iter()
        .map(|mut group| {
            let query = if group.len() == 1 {
                group.remove(0)
            } else {
                Box::new(BooleanQuery::new(group.into_iter().map(|q| (Occur::Should, q)).collect())) as Box<dyn Query>
            };
            (Occur::Must, query)
        })
        .collect();
    if clauses.is_empty() {
        clauses.push((Occur::Must, Box::new(AllQuery)));
    }
    clauses.extend(excluded.into_iter().map(|query| (Occur::MustNot, query)));
    Ok(Box::new(BooleanQuery::new(clauses)))
}

fn tokens(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut stream = analyzer.token_stream(text);
    let mut tokens = Vec::new();
    while stream.advance() {
        tokens.push(stream.token().text.clone());
    }
    tokens
}

/// A word, a phrase or a prefix of either; `None` for a part with no word in it.
fn part_query(mut terms: Vec<Term>, prefix: bool) -> Option<Box<dyn Query>> {
    Some(match terms.len() {
        0 => return None,
        _ if prefix => {
            let mut query = PhrasePrefixQuery::new(terms);
            query.set_max_expansions(MAX_PREFIX_EXPANSIONS);
            Box::new(query)
        }
        1 => Box::new(TermQuery::new(terms.remove(0), IndexRecordOption::WithFreqs)),
        _ => Box::new(PhraseQuery::new(terms)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(text: &str) -> Part<'_> {
        Part { text, quoted: false, excluded: false, prefix: false, or_previous: false }
    }

    fn phrase(text: &str) -> Part<'_> {
        Part { quoted: true, ..part(text) }
    }

    #[test]
    fn what_people_type_splits_into_words_phrases_alternatives_exclusions_and_prefixes() {
        assert_eq!(parts("Re: invoice"), vec![part("Re:"), part("invoice")]);
        assert_eq!(parts("\"late parcel\" -refund"), vec![phrase("late parcel"), Part { excluded: true, ..part("refund") }]);
        assert_eq!(
            parts("ref* \"part t\"*"),
            vec![Part { prefix: true, ..part("ref") }, Part { prefix: true, ..phrase("part t") }]
        );
        assert_eq!(parts("refund OR return"), vec![part("refund"), Part { or_previous: true, ..part("return") }]);
        assert_eq!(parts("OR - * \"unbalanced"), vec![part("OR"), part("-"), part("*"), part("\"unbalanced")]);
        assert_eq!(parts("https://example.cz/a?b=c 10:30"), vec![part("https://example.cz/a?b=c"), part("10:30")]);
    }

    #[test]
    fn deep_nesting_is_text_and_length_is_capped() {
        let nested = format!("{}x{}", "(".repeat(400), ")".repeat(400));
        assert_eq!(parts(&nested).len(), 1);
        let schema = {
            let mut builder = tantivy::schema::Schema::builder();
            builder.add_text_field("text", tantivy::schema::TEXT);
            builder.build()
        };
        let field = schema.get_field("text").unwrap();
        let mut analyzer = TextAnalyzer::from(tantivy::tokenizer::SimpleTokenizer::default());
        assert!(parse(&nested, field, &mut analyzer, Words::Whole).is_ok());
        let long = "(".repeat(MAX_QUERY_CHARS + 1);
        assert!(matches!(parse(&long, field, &mut analyzer, Words::Whole), Err(IndexError::BadQuery(_))));
        let many = "a ".repeat(MAX_QUERY_PARTS + 1);
        assert!(matches!(parse(&many, field, &mut analyzer, Words::Whole), Err(IndexError::BadQuery(_))));
    }
}

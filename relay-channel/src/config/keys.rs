//! The keys a configuration file may hold, read from the raw structs that
//! parse it, and the keys a reference document lists: for tests that hold
//! the documentation (`docs/channel-file.md`, `docs/orchestrator-file.md`)
//! to exactly what the parsers accept.
//!
//! [`accepted`] walks a raw struct with `Walk`, a serde `Deserializer`
//! that hands every struct a value for each of its fields (serde derive
//! names them in `deserialize_struct`), descending into nested sections,
//! and notes each field's dotted path. A field added to a raw struct is
//! thus a key to document, with nothing else to keep in step.
//! [`documented`] reads the first cells of a reference's key tables.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde::de::value::{Error, MapDeserializer, SeqDeserializer};
use serde::de::{
    DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor,
};
use serde::forward_to_deserialize_any;

/// What [`Walk`] found: every field's dotted path, and those that are
/// sections (structs) rather than keys.
#[derive(Default)]
struct Found {
    fields: BTreeSet<String>,
    sections: BTreeSet<String>,
}

/// A deserializer that gives every field a plausible value (0, false, "",
/// empty lists and maps, `Some` for options) and notes the fields of every
/// struct on the way.
struct Walk<'a> {
    path: String,
    found: &'a RefCell<Found>,
}

impl Walk<'_> {
    fn join(&self, field: &str) -> String {
        if self.path.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.path)
        }
    }
}

impl<'de> Deserializer<'de> for Walk<'_> {
    type Error = Error;

    // Numbers, and the untagged enums (a size as bytes or text, a number as
    // an integer or a decimal), which buffer their input through here.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(0)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(false)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(SeqDeserializer::new(std::iter::empty::<()>()))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(MapDeserializer::new(std::iter::empty::<((), ())>()))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        {
            let mut found = self.found.borrow_mut();
            if !self.path.is_empty() {
                found.sections.insert(self.path.clone());
            }
            for f in fields {
                found.fields.insert(self.join(f));
            }
        }
        visitor.visit_map(Fields {
            walk: self,
            fields: fields.iter(),
            current: "",
        })
    }

    forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf
        unit unit_struct tuple tuple_struct enum identifier ignored_any
    }
}

/// A struct's fields, each with a value from [`Walk`].
struct Fields<'a> {
    walk: Walk<'a>,
    fields: std::slice::Iter<'static, &'static str>,
    current: &'static str,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(&field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = field;
        seed.deserialize(field.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(Walk {
            path: self.walk.join(self.current),
            found: self.walk.found,
        })
    }
}

/// The keys of a file that `T`, its raw struct, accepts (`name`,
/// `receive.bind`, ...): every field's dotted path, sections (fields that
/// are structs themselves) left out.
pub fn accepted<T: DeserializeOwned>() -> BTreeSet<String> {
    let found = RefCell::new(Found::default());
    let walk = Walk {
        path: String::new(),
        found: &found,
    };
    if let Err(e) = T::deserialize(walk) {
        panic!("walking a raw configuration struct: {e}");
    }
    let found = found.into_inner();
    &found.fields - &found.sections
}

/// The keys a reference documents, in order: the first cell of each row of
/// a `| key | ... |` table, one key in backticks (`` `bind` ``, a dotted
/// `` `http.listen` ``, or a table-valued `` `[defaults]` ``), in the section
/// the last heading names (`` ## `[archive]` ``; a heading without one: the
/// top level). Panics on a first cell that is not one key.
pub fn documented(reference: &str) -> Vec<String> {
    let mut section = String::new();
    let mut in_key_table = false;
    let mut keys = Vec::new();
    for line in reference.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            section = match (line.find("`["), line.find("]`")) {
                (Some(a), Some(b)) if a < b => line[a + 2..b].to_string(),
                _ => String::new(),
            };
            in_key_table = false;
            continue;
        }
        if !line.starts_with('|') {
            in_key_table = false;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.first() == Some(&"key") {
            in_key_table = true;
            continue;
        }
        if !in_key_table || cells[0].starts_with("---") {
            continue;
        }
        let key = cells[0].trim_matches('`');
        let key = key
            .strip_prefix('[')
            .and_then(|k| k.strip_suffix(']'))
            .unwrap_or(key);
        assert!(
            !key.is_empty() && !key.contains(['`', ' ', '[', ']']),
            "a key table's first cell is one key in backticks, got {:?}",
            cells[0]
        );
        keys.push(if section.is_empty() {
            key.to_string()
        } else {
            format!("{section}.{key}")
        });
    }
    keys
}

/// A TOML table holding only `key` (dotted: its sections as tables), with
/// the string `"x"`: to ask a parser whether it knows the key.
pub fn table_with_only(key: &str) -> toml::Table {
    let mut table = toml::Table::new();
    let mut parts: Vec<&str> = key.split('.').collect();
    let leaf = parts.pop().expect("a key");
    let mut t = &mut table;
    for p in parts {
        t = t
            .entry(p)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("a section");
    }
    t.insert(leaf.to_string(), toml::Value::String("x".into()));
    table
}

/// Holds a reference document to a parser, for its test: every key of
/// `accepted` is documented once in `reference` (named `doc` in the
/// failures), every documented key is accepted, and the parser
/// (`problems_with_only`: its problems with a file holding only that key)
/// calls none of them unknown. Panics with what disagrees.
pub fn check_reference(
    doc: &str,
    reference: &str,
    accepted: &BTreeSet<String>,
    problems_with_only: impl Fn(&str) -> Vec<String>,
) {
    let documented = documented(reference);
    let mut seen = BTreeSet::new();
    let twice: Vec<&String> = documented.iter().filter(|k| !seen.insert(*k)).collect();
    assert!(
        twice.is_empty(),
        "{doc} documents these keys twice: {twice:?}"
    );
    let documented: BTreeSet<String> = documented.into_iter().collect();
    let undocumented: Vec<&String> = accepted.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(accepted).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "{doc} and the parser disagree:\n  accepted, not documented: {undocumented:?}\n  documented, not accepted: {unknown:?}"
    );
    for key in accepted.union(&documented) {
        let problems = problems_with_only(key);
        assert!(
            !problems.iter().any(|p| p.contains("unknown field")),
            "{key}: the parser calls it unknown: {problems:?}"
        );
    }
}

/// A parser's answer as the doc-key tests read it: one `key: message` line
/// a problem, none for a file it takes.
pub fn problem_lines<T>(parsed: Result<T, super::ConfigError>) -> Vec<String> {
    match parsed {
        Ok(_) => Vec::new(),
        Err(e) => e
            .problems
            .into_iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect(),
    }
}

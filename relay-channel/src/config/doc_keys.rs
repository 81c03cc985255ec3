//! The channel-file reference (`docs/channel-file.md`) and the parser agree:
//! every key the raw structs accept is documented, and every documented key
//! is one the parser accepts.
//!
//! The accepted keys are read from the raw structs themselves: [`Walk`] is a
//! serde `Deserializer` that hands every struct a value for each of its
//! fields (serde derive names them in `deserialize_struct`), descending into
//! nested sections, and notes each field's dotted path. A field added to a
//! raw struct is thus a key to document, with nothing else to keep in step.
//! The documented keys are the first cells of the reference's key tables
//! (`| key | default | meaning |`), each in the section (`[receive]`, ...)
//! its heading names. Every key of both lists is then also put, alone, in a
//! channel file, which the parser must not call unknown.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

use serde::de::value::{Error, MapDeserializer, SeqDeserializer};
use serde::de::{DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::forward_to_deserialize_any;

use super::{ChannelSpec, RawChannel};

const REFERENCE: &str = include_str!("../../../docs/channel-file.md");

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

/// The keys of a channel file, as the raw structs accept them (`name`,
/// `receive.bind`, ...), sections left out.
fn accepted_keys() -> BTreeSet<String> {
    let found = RefCell::new(Found::default());
    let walk = Walk {
        path: String::new(),
        found: &found,
    };
    if let Err(e) = <RawChannel as serde::Deserialize>::deserialize(walk) {
        panic!("walking the raw channel struct: {e}");
    }
    let found = found.into_inner();
    &found.fields - &found.sections
}

/// The keys the reference documents: the first cell (`` `key` ``) of each
/// row of a `| key | ... |` table, in the section the last heading names
/// (`` ## `[archive]` ``; a heading without one: the top level).
fn documented_keys(reference: &str) -> Vec<String> {
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
        assert!(
            !key.is_empty() && !key.contains(['`', ' ']),
            "docs/channel-file.md: a key table's first cell is one key in backticks, got {:?}",
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

/// The problems the parser finds in a channel file holding only `key`.
fn problems_with_only(key: &str) -> Vec<String> {
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
    match ChannelSpec::from_table(table, Path::new("c/ch.toml"), None) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .problems
            .into_iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect(),
    }
}

#[test]
fn the_walk_finds_the_raw_structs_keys() {
    let keys = accepted_keys();
    for k in [
        "name",
        "schema",
        "receive.bind",
        "archive.codec",
        "decimated.keep_last",
    ] {
        assert!(keys.contains(k), "{k} not in {keys:?}");
    }
    for section in ["receive", "archive", "full", "decimated"] {
        assert!(!keys.contains(section), "{section} is a section, not a key");
    }
    // The parser itself says a key is unknown the way the check below
    // looks for.
    let problems = problems_with_only("receive.no_such_key");
    assert!(
        problems.iter().any(|p| p.contains("unknown field")),
        "{problems:?}"
    );
}

#[test]
fn every_channel_key_is_documented_and_every_documented_key_is_accepted() {
    let accepted = accepted_keys();
    let documented = documented_keys(REFERENCE);
    let mut seen = BTreeSet::new();
    let twice: Vec<&String> = documented.iter().filter(|k| !seen.insert(*k)).collect();
    assert!(
        twice.is_empty(),
        "docs/channel-file.md documents these keys twice: {twice:?}"
    );
    let documented: BTreeSet<String> = documented.into_iter().collect();
    let undocumented: Vec<&String> = accepted.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&accepted).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/channel-file.md and the parser disagree:\n  accepted, not documented: {undocumented:?}\n  documented, not accepted: {unknown:?}"
    );
    for key in accepted.union(&documented) {
        let problems = problems_with_only(key);
        assert!(
            !problems.iter().any(|p| p.contains("unknown field")),
            "{key}: the parser calls it unknown: {problems:?}"
        );
    }
}

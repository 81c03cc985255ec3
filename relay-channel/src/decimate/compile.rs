//! The decimator's schema compiler: the schema, resolved by apache-avro,
//! becomes the flat list of [`Step`]s a record is folded with and the skip
//! nodes that step over the fields taking the window's last value; a
//! `keep_last` entry that names no field is an error that says why.

use std::collections::HashMap;

use apache_avro::schema::{Name, NamesRef, NamespaceRef, RecordSchema, ResolvedSchema, Schema};

use super::{Num, Skip, Step, MAX_DEPTH};
use crate::avro_leaf;

/// What [`compile`] makes of a schema.
pub(super) struct Plan {
    pub(super) steps: Vec<Step>,
    pub(super) skips: Vec<Skip>,
    /// Accumulators the steps use, and array accumulators.
    pub(super) accs: u32,
    pub(super) arrays: u32,
}

/// Compiles `schema`; `keep_last` names fields (dotted paths from the top
/// record) that take the window's last value.
pub(super) fn compile(schema: &Schema, keep_last: &[String]) -> Result<Plan, String> {
    let resolved = ResolvedSchema::new(schema).map_err(|e| e.to_string())?;
    let mut c = Compiler {
        defs: resolved.get_names(),
        steps: Vec::new(),
        skips: Vec::new(),
        named: HashMap::new(),
        keep: keep_last.iter().map(|k| (k.as_str(), false)).collect(),
        accs: 0,
        arrays: 0,
    };
    c.plan(schema, None, "", 0)?;
    if let Some((k, _)) = c.keep.iter().find(|(_, used)| !used) {
        return Err(missing_field(schema, &resolved, k));
    }
    Ok(Plan {
        steps: c.steps,
        skips: c.skips,
        accs: c.accs,
        arrays: c.arrays,
    })
}

/// The message for a `keep_last` entry that names no field.
fn missing_field(schema: &Schema, resolved: &ResolvedSchema<'_>, path: &str) -> String {
    let mut record = match schema {
        Schema::Record(r) => r,
        _ => return format!("\"{path}\": the schema is not a record, it has no fields"),
    };
    let names = resolved.get_names();
    let mut ns = record.name.namespace().map(str::to_owned);
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let Some(field) = record.fields.iter().find(|f| f.name == *part) else {
            return format!(
                "\"{path}\": record {} has no field \"{part}\"",
                record.name.name()
            );
        };
        if i + 1 == parts.len() {
            break;
        }
        let mut s = &field.schema;
        if let Schema::Ref { name } = s {
            let fq = name.fully_qualified_name(ns.as_deref());
            if let Some(def) = names.get(fq.as_ref()) {
                s = def;
            }
        }
        match s {
            Schema::Record(r) => {
                ns = r.name.namespace().map(str::to_owned).or(ns);
                record = r;
            }
            _ => {
                let so_far = parts[..=i].join(".");
                return format!("\"{path}\": field \"{so_far}\" is not a record");
            }
        }
    }
    format!("\"{path}\": not a field of its own (it repeats another entry, or lies inside one)")
}

/// Compiles a schema to steps and skip nodes.
struct Compiler<'s> {
    defs: &'s NamesRef<'s>,
    steps: Vec<Step>,
    skips: Vec<Skip>,
    /// Skip nodes of named types, by full name (records while open too).
    named: HashMap<Name, u32>,
    /// The `keep_last` paths, and whether a field was found for each.
    keep: Vec<(&'s str, bool)>,
    accs: u32,
    arrays: u32,
}

impl<'s> Compiler<'s> {
    /// Adds the steps of a value at `path` (dotted field names).
    fn plan(
        &mut self,
        schema: &'s Schema,
        ns: NamespaceRef<'_>,
        path: &str,
        depth: u32,
    ) -> Result<(), String> {
        if let Some(k) = self.keep.iter_mut().find(|(k, used)| *k == path && !*used) {
            k.1 = true;
            let skip = self.skip(schema, ns)?;
            return self.push_last(skip);
        }
        let schema = match schema {
            Schema::Ref { name } => {
                let fq = name.fully_qualified_name(ns);
                return match self.defs.get(fq.as_ref()) {
                    Some(def) if depth < MAX_DEPTH => {
                        self.plan(def, fq.namespace(), path, depth + 1)
                    }
                    _ => {
                        let skip = self.skip(schema, ns)?;
                        self.push_last(skip)
                    }
                };
            }
            s => s,
        };
        if let Some(num) = Num::of(schema) {
            let acc = self.next_acc();
            self.steps.push(Step::Num { num, acc });
            return Ok(());
        }
        match schema {
            Schema::Record(r) if depth < MAX_DEPTH => self.record(r, ns, path, depth),
            Schema::Union(u) => match u.variants() {
                [Schema::Null, n] | [n, Schema::Null] if Num::of(n).is_some() => {
                    let number = u8::from(matches!(u.variants()[0], Schema::Null));
                    let acc = self.next_acc();
                    let num = Num::of(n).expect("numeric");
                    self.steps.push(Step::OptNum { num, acc, number });
                    Ok(())
                }
                _ => {
                    let skip = self.skip(schema, ns)?;
                    self.push_last(skip)
                }
            },
            Schema::Array(a) if Num::of(&a.items).is_some() => {
                let array = self.arrays;
                self.arrays += 1;
                let num = Num::of(&a.items).expect("numeric");
                self.steps.push(Step::Array { num, array });
                Ok(())
            }
            _ => {
                let skip = self.skip(schema, ns)?;
                self.push_last(skip)
            }
        }
    }

    fn record(
        &mut self,
        r: &'s RecordSchema,
        ns: NamespaceRef<'_>,
        path: &str,
        depth: u32,
    ) -> Result<(), String> {
        let fq = r.name.fully_qualified_name(ns);
        for f in &r.fields {
            let sub = if path.is_empty() {
                f.name.clone()
            } else {
                format!("{path}.{}", f.name)
            };
            self.plan(&f.schema, fq.namespace(), &sub, depth + 1)?;
        }
        Ok(())
    }

    fn next_acc(&mut self) -> u32 {
        self.accs += 1;
        self.accs - 1
    }

    /// Adds a last-value step.
    fn push_last(&mut self, skip: u32) -> Result<(), String> {
        self.steps.push(Step::Last { skip });
        Ok(())
    }

    fn add_skip(&mut self, s: Skip) -> u32 {
        self.skips.push(s);
        (self.skips.len() - 1) as u32
    }

    /// The skip node of a value of `schema`.
    fn skip(&mut self, schema: &'s Schema, ns: NamespaceRef<'_>) -> Result<u32, String> {
        if let Some(leaf) = avro_leaf::leaf(schema) {
            return Ok(self.add_skip(Skip::from(leaf)));
        }
        let s = match schema {
            Schema::Array(a) => {
                let items = self.skip(&a.items, ns)?;
                Skip::Array(items)
            }
            Schema::Map(m) => {
                let values = self.skip(&m.types, ns)?;
                Skip::Map(values)
            }
            Schema::Union(u) => {
                let branches = u
                    .variants()
                    .iter()
                    .map(|b| self.skip(b, ns))
                    .collect::<Result<Vec<_>, _>>()?;
                Skip::Union(branches)
            }
            Schema::Record(r) => {
                let fq = r.name.fully_qualified_name(ns).into_owned();
                if let Some(&i) = self.named.get(&fq) {
                    return Ok(i);
                }
                // Named before its fields, which may refer back to it.
                let index = self.add_skip(Skip::Record(Vec::new()));
                self.named.insert(fq.clone(), index);
                let fields = r
                    .fields
                    .iter()
                    .map(|f| self.skip(&f.schema, fq.namespace()))
                    .collect::<Result<Vec<_>, _>>()?;
                self.skips[index as usize] = Skip::Record(fields);
                return Ok(index);
            }
            Schema::Ref { name } => {
                let fq = name.fully_qualified_name(ns);
                if let Some(&i) = self.named.get(fq.as_ref()) {
                    return Ok(i);
                }
                let def = self
                    .defs
                    .get(fq.as_ref())
                    .ok_or_else(|| format!("unresolved type {fq}"))?;
                return self.skip(def, fq.namespace());
            }
            _ => unreachable!("leaf types are classified by avro_leaf::leaf"),
        };
        Ok(self.add_skip(s))
    }
}

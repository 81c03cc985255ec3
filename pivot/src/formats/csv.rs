//! CSV (RFC 4180): a header of column names, then a line a row. Numbers
//! and text as they are; times in RFC 3339 (`2026-12-07T04:33:27.123456Z`);
//! a null is an empty field; bytes in hex; nested values (arrays, maps,
//! unions, records inside them) as JSON text.

use std::io::{self, BufWriter, Write};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::Value;

use super::other;

pub struct CsvWriter<W: Write> {
    out: BufWriter<W>,
    field: String,
}

impl<W: Write> CsvWriter<W> {
    pub fn new(out: W, schema: &Schema) -> io::Result<CsvWriter<W>> {
        let mut w = CsvWriter {
            out: BufWriter::with_capacity(256 << 10, out),
            field: String::new(),
        };
        for (i, f) in schema.fields().iter().enumerate() {
            if i > 0 {
                w.out.write_all(b",")?;
            }
            w.put(f.name())?;
        }
        w.out.write_all(b"\r\n")?;
        Ok(w)
    }

    /// Writes one field, quoted if it must be.
    fn put(&mut self, s: &str) -> io::Result<()> {
        if s.contains([',', '"', '\n', '\r']) {
            self.out.write_all(b"\"")?;
            self.out.write_all(s.replace('"', "\"\"").as_bytes())?;
            self.out.write_all(b"\"")
        } else {
            self.out.write_all(s.as_bytes())
        }
    }

    pub fn write(&mut self, batch: &RecordBatch) -> io::Result<()> {
        let cols: Vec<Col> = batch
            .columns()
            .iter()
            .map(|a| {
                if nested(a.data_type()) {
                    return Ok(Col::Json(a.as_ref()));
                }
                // Times with every digit of their unit, so that a column
                // has one shape.
                let (tz, local) = match a.data_type() {
                    DataType::Timestamp(TimeUnit::Millisecond, _) => {
                        ("%Y-%m-%dT%H:%M:%S%.3fZ", "%Y-%m-%dT%H:%M:%S%.3f")
                    }
                    DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                        ("%Y-%m-%dT%H:%M:%S%.9fZ", "%Y-%m-%dT%H:%M:%S%.9f")
                    }
                    _ => ("%Y-%m-%dT%H:%M:%S%.6fZ", "%Y-%m-%dT%H:%M:%S%.6f"),
                };
                let opts = FormatOptions::default()
                    .with_null("")
                    .with_timestamp_tz_format(Some(tz))
                    .with_timestamp_format(Some(local));
                ArrayFormatter::try_new(a.as_ref(), &opts)
                    .map(Col::Plain)
                    .map_err(other)
            })
            .collect::<io::Result<_>>()?;
        for row in 0..batch.num_rows() {
            for (i, c) in cols.iter().enumerate() {
                if i > 0 {
                    self.out.write_all(b",")?;
                }
                self.field.clear();
                match c {
                    Col::Plain(f) => {
                        use std::fmt::Write as _;
                        let _ = write!(self.field, "{}", f.value(row));
                    }
                    Col::Json(a) => {
                        if a.is_valid(row) {
                            self.field = json(*a, row).to_string();
                        }
                    }
                }
                let field = std::mem::take(&mut self.field);
                self.put(&field)?;
                self.field = field;
            }
            self.out.write_all(b"\r\n")?;
        }
        Ok(())
    }

    pub fn finish(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

enum Col<'a> {
    Plain(ArrayFormatter<'a>),
    Json(&'a dyn Array),
}

fn nested(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_) | DataType::Map(..) | DataType::Struct(_) | DataType::LargeList(_)
    )
}

/// The value at `row` of `a` as JSON.
pub fn json(a: &dyn Array, row: usize) -> Value {
    if a.is_null(row) {
        return Value::Null;
    }
    match a.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(a.as_boolean().value(row)),
        DataType::Int32 => a
            .as_primitive::<arrow::datatypes::Int32Type>()
            .value(row)
            .into(),
        DataType::Int64 => a
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(row)
            .into(),
        DataType::Float32 => {
            let v = a.as_primitive::<arrow::datatypes::Float32Type>().value(row);
            serde_json::Number::from_f64(f64::from(v)).map_or(Value::Null, Value::Number)
        }
        DataType::Float64 => {
            let v = a.as_primitive::<arrow::datatypes::Float64Type>().value(row);
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        DataType::Utf8 => Value::String(a.as_string::<i32>().value(row).to_string()),
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let v = l.value(row);
            Value::Array((0..v.len()).map(|i| json(v.as_ref(), i)).collect())
        }
        DataType::Map(..) => {
            let m = a.as_map();
            let e = m.value(row);
            let (k, v) = (e.column(0), e.column(1));
            let k = k.as_string::<i32>();
            Value::Object(
                (0..e.len())
                    .map(|i| (k.value(i).to_string(), json(v.as_ref(), i)))
                    .collect(),
            )
        }
        DataType::Struct(fields) => {
            let s = a.as_struct();
            Value::Object(
                fields
                    .iter()
                    .zip(s.columns())
                    .map(|(f, c)| (f.name().clone(), json(c.as_ref(), row)))
                    .collect(),
            )
        }
        _ => {
            let opts = FormatOptions::default();
            match ArrayFormatter::try_new(a, &opts) {
                Ok(f) => Value::String(f.value(row).to_string()),
                Err(_) => Value::Null,
            }
        }
    }
}

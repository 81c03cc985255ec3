//! HDF5, as SpeedData lays it out: a group a channel (`/<channel>`), a 1-D
//! dataset a column (`/<channel>/<signal>`, nested fields under their
//! dotted names, `pos.x`), the time field among them.
//!
//! - Numbers natively: int32, int64, float32, float64; booleans as HDF5's
//!   boolean enum (numpy `bool` in h5py); decimals as float64.
//! - Times as int64 (dates int32) in their own unit, with a `unit`
//!   attribute: `ms`, `us`, `ns` (timestamps, since the Unix epoch, UTC
//!   unless the attribute `timezone` is absent: local timestamps), `days`
//!   (dates), `ms`/`us` since midnight (times of day).
//! - Strings and enum symbols as variable-length UTF-8 strings; bytes and
//!   fixed as variable-length arrays of uint8.
//! - Arrays of numbers or booleans as variable-length datasets (h5py gives
//!   an object array of numpy arrays); other arrays, maps, unions of
//!   several types, and records inside them as JSON text.
//! - A null (a union with null) is written as the fill value, 0 for
//!   integers and times, NaN for floats, false, an empty string or array,
//!   and `<signal>.valid`, a boolean dataset beside it, is false there. It
//!   exists only for a column that held a null.
//! - A field of type null has no dataset (the group's attribute `omitted`
//!   names it).
//!
//! Attributes: on the file, `start` and `end` (RFC 3339) and `generator`;
//! on each group, `rows`, `empty` (true when the range held none of the
//! channel's records: the group is there, its datasets empty, as SpeedData
//! does), `time_column` and `time_basis` (`record` or `arrival`).
//!
//! libhdf5 writes to a file it can seek in: the export is written to a
//! temporary file (under `$TMPDIR`) and sent once complete; the file is
//! deleted then, or when the export fails.

use std::io::{self, Write};
use std::str::FromStr;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, Time32MillisecondType,
    Time64MicrosecondType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType,
};
use arrow::record_batch::RecordBatch;
use hdf5::types::{VarLenArray, VarLenUnicode};
use hdf5::{Dataset, Group, H5Type};

use super::csv::json;
use super::{other, Sink};
use crate::ChannelInfo as ChannelPlan;

/// Rows a chunk of a dataset holds.
const CHUNK: usize = 16_384;

/// How a column is stored.
enum Kind {
    Bool,
    I32,
    I64,
    F32,
    F64,
    Str,
    Bytes,
    ListI32,
    ListI64,
    ListF32,
    ListF64,
    ListBool,
    Json,
    Omitted,
}

struct Column {
    kind: Kind,
    name: String,
    data: Option<Dataset>,
    valid: Option<Dataset>,
}

pub struct Hdf5Sink<W: Write> {
    out: W,
    tmp: tempfile::TempPath,
    file: hdf5::File,
    group: Option<Group>,
    columns: Vec<Column>,
    rows: usize,
}

impl<W: Write> Hdf5Sink<W> {
    pub fn new(out: W) -> io::Result<Hdf5Sink<W>> {
        let tmp = tempfile::Builder::new()
            .prefix("speeddata-export-")
            .suffix(".h5")
            .tempfile()?
            .into_temp_path();
        let file = hdf5::File::create(&tmp).map_err(other)?;
        attr_str(&file, "generator", "speeddata-relay")?;
        Ok(Hdf5Sink {
            out,
            tmp,
            file,
            group: None,
            columns: Vec::new(),
            rows: 0,
        })
    }
}

fn attr_str(loc: &hdf5::Location, name: &str, value: &str) -> io::Result<()> {
    let v = VarLenUnicode::from_str(&value.replace('\0', "\u{fffd}")).map_err(other)?;
    loc.new_attr::<VarLenUnicode>()
        .create(name)
        .and_then(|a| a.write_scalar(&v))
        .map_err(other)
}

fn attr<T: H5Type>(loc: &hdf5::Location, name: &str, value: T) -> io::Result<()> {
    loc.new_attr::<T>()
        .create(name)
        .and_then(|a| a.write_scalar(&value))
        .map_err(other)
}

fn kind_of(t: &DataType) -> Kind {
    match t {
        DataType::Null => Kind::Omitted,
        DataType::Boolean => Kind::Bool,
        DataType::Int32 | DataType::Date32 | DataType::Time32(_) => Kind::I32,
        DataType::Int64 | DataType::Time64(_) | DataType::Timestamp(..) => Kind::I64,
        DataType::Float32 => Kind::F32,
        DataType::Float64 | DataType::Decimal128(..) => Kind::F64,
        DataType::Utf8 | DataType::Dictionary(..) => Kind::Str,
        DataType::Binary | DataType::FixedSizeBinary(_) => Kind::Bytes,
        DataType::List(f) => match f.data_type() {
            DataType::Int32 => Kind::ListI32,
            DataType::Int64 => Kind::ListI64,
            DataType::Float32 => Kind::ListF32,
            DataType::Float64 => Kind::ListF64,
            DataType::Boolean => Kind::ListBool,
            _ => Kind::Json,
        },
        _ => Kind::Json,
    }
}

fn unit_of(t: &DataType) -> Option<&'static str> {
    match t {
        DataType::Timestamp(u, _) | DataType::Time32(u) | DataType::Time64(u) => Some(match u {
            TimeUnit::Second => "s",
            TimeUnit::Millisecond => "ms",
            TimeUnit::Microsecond => "us",
            TimeUnit::Nanosecond => "ns",
        }),
        DataType::Date32 => Some("days"),
        _ => None,
    }
}

fn dataset<T: H5Type>(g: &Group, name: &str) -> io::Result<Dataset> {
    g.new_dataset::<T>()
        .chunk(CHUNK)
        .shape(0..)
        .create(name)
        .map_err(other)
}

/// Appends `values` to `ds`, which holds `at` rows.
fn append<T: H5Type>(ds: &Dataset, at: usize, values: &[T]) -> io::Result<()> {
    let end = at + values.len();
    ds.resize(end).map_err(other)?;
    ds.write_slice(values, at..end).map_err(other)
}

fn text(s: &str) -> VarLenUnicode {
    VarLenUnicode::from_str(&s.replace('\0', "\u{fffd}")).unwrap_or_default()
}

impl<W: Write> Sink for Hdf5Sink<W> {
    fn begin(&mut self, ch: &ChannelPlan) -> io::Result<()> {
        let g = self.file.create_group(&ch.name).map_err(other)?;
        self.columns.clear();
        let mut omitted = Vec::new();
        for f in ch.schema().fields() {
            let kind = kind_of(f.data_type());
            let name = f.name().clone();
            let data = match kind {
                Kind::Bool => Some(dataset::<bool>(&g, &name)?),
                Kind::I32 => Some(dataset::<i32>(&g, &name)?),
                Kind::I64 => Some(dataset::<i64>(&g, &name)?),
                Kind::F32 => Some(dataset::<f32>(&g, &name)?),
                Kind::F64 => Some(dataset::<f64>(&g, &name)?),
                Kind::Str | Kind::Json => Some(dataset::<VarLenUnicode>(&g, &name)?),
                Kind::Bytes => Some(dataset::<VarLenArray<u8>>(&g, &name)?),
                Kind::ListI32 => Some(dataset::<VarLenArray<i32>>(&g, &name)?),
                Kind::ListI64 => Some(dataset::<VarLenArray<i64>>(&g, &name)?),
                Kind::ListF32 => Some(dataset::<VarLenArray<f32>>(&g, &name)?),
                Kind::ListF64 => Some(dataset::<VarLenArray<f64>>(&g, &name)?),
                Kind::ListBool => Some(dataset::<VarLenArray<bool>>(&g, &name)?),
                Kind::Omitted => {
                    omitted.push(name.clone());
                    None
                }
            };
            if let (Some(ds), Some(unit)) = (&data, unit_of(f.data_type())) {
                attr_str(ds, "unit", unit)?;
                if let DataType::Timestamp(_, Some(tz)) = f.data_type() {
                    attr_str(ds, "timezone", tz)?;
                }
            }
            self.columns.push(Column {
                kind,
                name,
                data,
                valid: None,
            });
        }
        attr_str(&g, "omitted", &omitted.join(","))?;
        attr_str(&g, "time_column", &ch.time_column)?;
        attr_str(&g, "time_basis", ch.basis.as_str())?;
        self.group = Some(g);
        self.rows = 0;
        Ok(())
    }

    fn batch(&mut self, _ch: &ChannelPlan, batch: &RecordBatch) -> io::Result<()> {
        let at = self.rows;
        let n = batch.num_rows();
        let g = self.group.as_ref().expect("begin was called");
        for (c, a) in self.columns.iter_mut().zip(batch.columns()) {
            let Some(ds) = &c.data else { continue };
            let a = a.as_ref();
            write_column(ds, &c.kind, a, at)?;
            if a.null_count() > 0 || c.valid.is_some() {
                if c.valid.is_none() {
                    let v = dataset::<bool>(g, &format!("{}.valid", c.name))?;
                    append(&v, 0, &vec![true; at])?;
                    c.valid = Some(v);
                }
                let valid: Vec<bool> = (0..n).map(|i| a.is_valid(i)).collect();
                append(c.valid.as_ref().expect("just made"), at, &valid)?;
            }
        }
        self.rows += n;
        Ok(())
    }

    fn end(&mut self, _ch: &ChannelPlan, rows: u64) -> io::Result<()> {
        let g = self.group.take().expect("begin was called");
        attr(&g, "rows", rows)?;
        attr(&g, "empty", rows == 0)?;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.file.flush().map_err(other)?;
        let file = std::mem::replace(
            &mut self.file,
            hdf5::File::create(self.tmp.with_extension("x")).map_err(other)?,
        );
        file.close().map_err(other)?;
        let mut f = std::fs::File::open(&self.tmp)?;
        io::copy(&mut f, &mut self.out)?;
        self.out.flush()
    }
}

fn prim<T: arrow::datatypes::ArrowPrimitiveType>(a: &dyn Array) -> Vec<T::Native> {
    // Nulls hold the builder's default (0) already.
    a.as_primitive::<T>().values().to_vec()
}

fn write_column(ds: &Dataset, kind: &Kind, a: &dyn Array, at: usize) -> io::Result<()> {
    let n = a.len();
    match kind {
        Kind::Omitted => Ok(()),
        Kind::Bool => {
            let b = a.as_boolean();
            let v: Vec<bool> = (0..n).map(|i| b.is_valid(i) && b.value(i)).collect();
            append(ds, at, &v)
        }
        Kind::I32 => match a.data_type() {
            DataType::Date32 => append(ds, at, &prim::<Date32Type>(a)),
            DataType::Time32(_) => append(ds, at, &prim::<Time32MillisecondType>(a)),
            _ => append(ds, at, &prim::<Int32Type>(a)),
        },
        Kind::I64 => match a.data_type() {
            DataType::Time64(_) => append(ds, at, &prim::<Time64MicrosecondType>(a)),
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                append(ds, at, &prim::<TimestampMillisecondType>(a))
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                append(ds, at, &prim::<TimestampMicrosecondType>(a))
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                append(ds, at, &prim::<TimestampNanosecondType>(a))
            }
            _ => append(ds, at, &prim::<Int64Type>(a)),
        },
        Kind::F32 => {
            let p = a.as_primitive::<Float32Type>();
            let v: Vec<f32> = (0..n)
                .map(|i| if p.is_valid(i) { p.value(i) } else { f32::NAN })
                .collect();
            append(ds, at, &v)
        }
        Kind::F64 => {
            let v: Vec<f64> = match a.data_type() {
                DataType::Decimal128(_, scale) => {
                    let d = a.as_primitive::<arrow::datatypes::Decimal128Type>();
                    let div = 10f64.powi(i32::from(*scale));
                    (0..n)
                        .map(|i| {
                            if d.is_valid(i) {
                                d.value(i) as f64 / div
                            } else {
                                f64::NAN
                            }
                        })
                        .collect()
                }
                _ => {
                    let p = a.as_primitive::<Float64Type>();
                    (0..n)
                        .map(|i| if p.is_valid(i) { p.value(i) } else { f64::NAN })
                        .collect()
                }
            };
            append(ds, at, &v)
        }
        Kind::Str => {
            let v: Vec<VarLenUnicode> = match a.data_type() {
                DataType::Dictionary(..) => {
                    let d = a.as_dictionary::<Int32Type>();
                    let values = d.values().as_string::<i32>();
                    let symbols: Vec<VarLenUnicode> =
                        (0..values.len()).map(|i| text(values.value(i))).collect();
                    d.keys()
                        .iter()
                        .map(|k| {
                            k.map_or_else(VarLenUnicode::default, |k| symbols[k as usize].clone())
                        })
                        .collect()
                }
                _ => {
                    let s = a.as_string::<i32>();
                    (0..n)
                        .map(|i| {
                            if s.is_valid(i) {
                                text(s.value(i))
                            } else {
                                VarLenUnicode::default()
                            }
                        })
                        .collect()
                }
            };
            append(ds, at, &v)
        }
        Kind::Bytes => {
            let v: Vec<VarLenArray<u8>> = match a.data_type() {
                DataType::FixedSizeBinary(_) => {
                    let b = a.as_fixed_size_binary();
                    (0..n)
                        .map(|i| {
                            VarLenArray::from_slice(if b.is_valid(i) { b.value(i) } else { &[] })
                        })
                        .collect()
                }
                _ => {
                    let b = a.as_binary::<i32>();
                    (0..n)
                        .map(|i| {
                            VarLenArray::from_slice(if b.is_valid(i) { b.value(i) } else { &[] })
                        })
                        .collect()
                }
            };
            append(ds, at, &v)
        }
        Kind::ListI32 => append(ds, at, &lists::<Int32Type>(a)),
        Kind::ListI64 => append(ds, at, &lists::<Int64Type>(a)),
        Kind::ListF32 => append(ds, at, &lists::<Float32Type>(a)),
        Kind::ListF64 => append(ds, at, &lists::<Float64Type>(a)),
        Kind::ListBool => {
            let l = a.as_list::<i32>();
            let v: Vec<VarLenArray<bool>> = (0..n)
                .map(|i| {
                    if l.is_null(i) {
                        return VarLenArray::from_slice(&[]);
                    }
                    let items = l.value(i);
                    let b = items.as_boolean();
                    let v: Vec<bool> = (0..b.len()).map(|j| b.is_valid(j) && b.value(j)).collect();
                    VarLenArray::from_slice(&v)
                })
                .collect();
            append(ds, at, &v)
        }
        Kind::Json => {
            let v: Vec<VarLenUnicode> = (0..n)
                .map(|i| {
                    if a.is_valid(i) {
                        text(&json(a, i).to_string())
                    } else {
                        VarLenUnicode::default()
                    }
                })
                .collect();
            append(ds, at, &v)
        }
    }
}

/// Each row's list of numbers; a null list, or a null number, is empty or
/// the type's default.
fn lists<T>(a: &dyn Array) -> Vec<VarLenArray<T::Native>>
where
    T: arrow::datatypes::ArrowPrimitiveType,
    T::Native: H5Type + Copy,
{
    let l = a.as_list::<i32>();
    (0..a.len())
        .map(|i| {
            if l.is_null(i) {
                return VarLenArray::from_slice(&[]);
            }
            let items = l.value(i);
            VarLenArray::from_slice(items.as_primitive::<T>().values())
        })
        .collect()
}

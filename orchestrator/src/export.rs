//! `orchestrator export NAME --out DIR [--cut]`: a hold's data, handed to
//! an analyst. Per channel, the held archive files go to `DIR/<channel>/`
//! (hard links where the filesystem allows, copies otherwise); with `--cut`
//! and the channel's `archive.time_field` set, one new Avro container file
//! per channel instead, holding exactly the records whose time field lies
//! in the hold's range, in order, with the same schema and codec. A
//! `MANIFEST.json` lists the hold, the channels and every file with its
//! records, bytes and SHA-256.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use apache_avro::types::Value;
use relay_channel::container::{self, BlockEncoder};
use serde::Serialize;
use sha2::{Digest, Sha256};
use speeddata_api::HoldReport;

/// One file of the export, as the manifest lists it.
#[derive(Debug, Serialize)]
pub struct ManifestFile {
    /// Relative to the export folder.
    pub file: String,
    pub records: u64,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct ManifestChannel {
    pub channel: String,
    /// Whether its files were cut to the range (by `time_field`), or are
    /// the held files whole.
    pub cut: bool,
    pub time_field: Option<String>,
    pub files: Vec<ManifestFile>,
    pub records: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Manifest {
    /// The hold, as the API gave it.
    pub hold: HoldReport,
    pub exported_at: String,
    pub channels: Vec<ManifestChannel>,
    pub records: u64,
    pub bytes: u64,
}

/// Exports `hold` (as the API gave it) into `out`, which must be empty or
/// not exist; returns the manifest (also written as `out/MANIFEST.json`).
pub fn export(hold: &HoldReport, out: &Path, cut: bool) -> Result<Manifest> {
    if out.exists()
        && std::fs::read_dir(out)
            .with_context(|| format!("cannot read {}", out.display()))?
            .next()
            .is_some()
    {
        bail!("{} is not empty: export into a new folder", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let range = (parse_time(&hold.hold.from)?, parse_time(&hold.hold.to)?);
    let mut channels = Vec::new();
    for ch in &hold.channels {
        let dir = out.join(&ch.channel);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut files: Vec<PathBuf> = ch.files.iter().map(|f| f.path.clone()).collect();
        files.sort();
        let cut_here = cut && ch.time_field.is_some();
        let mut listed = Vec::new();
        if cut_here && !files.is_empty() {
            let field = ch.time_field.as_deref().expect("checked");
            let name = format!("{}-{}-cut.avro", ch.channel, hold.hold.name);
            let path = dir.join(&name);
            let records = cut_files(&files, field, range, &path)
                .with_context(|| format!("cutting {}'s files", ch.channel))?;
            listed.push(describe(out, &path, records)?);
        } else {
            for f in &files {
                let name = f
                    .file_name()
                    .with_context(|| format!("{} has no file name", f.display()))?;
                let to = dir.join(name);
                if std::fs::hard_link(f, &to).is_err() {
                    std::fs::copy(f, &to).with_context(|| {
                        format!("cannot copy {} to {}", f.display(), to.display())
                    })?;
                }
                let records = count_records(&to)?;
                listed.push(describe(out, &to, records)?);
            }
        }
        channels.push(ManifestChannel {
            channel: ch.channel.clone(),
            cut: cut_here,
            time_field: ch.time_field.clone(),
            records: listed.iter().map(|f| f.records).sum(),
            bytes: listed.iter().map(|f| f.bytes).sum(),
            files: listed,
        });
    }
    let manifest = Manifest {
        hold: hold.clone(),
        exported_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        records: channels.iter().map(|c| c.records).sum(),
        bytes: channels.iter().map(|c| c.bytes).sum(),
        channels,
    };
    let text = serde_json::to_string_pretty(&manifest)? + "\n";
    std::fs::write(out.join("MANIFEST.json"), text)
        .with_context(|| format!("cannot write {}", out.join("MANIFEST.json").display()))?;
    Ok(manifest)
}

/// An RFC 3339 time of the API (UTC).
fn parse_time(t: &str) -> Result<SystemTime> {
    humantime::parse_rfc3339_weak(t.trim_end_matches('Z'))
        .with_context(|| format!("{t:?} is not an RFC 3339 UTC time"))
}

fn describe(out: &Path, path: &Path, records: u64) -> Result<ManifestFile> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(ManifestFile {
        file: path.strip_prefix(out).unwrap_or(path).display().to_string(),
        records,
        bytes,
        sha256: hash.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    })
}

fn count_records(path: &Path) -> Result<u64> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = apache_avro::Reader::new(BufReader::new(f))
        .with_context(|| format!("{} is not an Avro container file", path.display()))?;
    let mut n = 0;
    for v in reader {
        v.with_context(|| format!("reading {}", path.display()))?;
        n += 1;
    }
    Ok(n)
}

/// The unit of a time field's values, in nanoseconds.
fn unit_ns(v: &Value) -> Option<(i64, i128)> {
    match v {
        Value::TimestampMillis(t) | Value::LocalTimestampMillis(t) => Some((*t, 1_000_000)),
        Value::TimestampMicros(t) | Value::LocalTimestampMicros(t) => Some((*t, 1_000)),
        Value::TimestampNanos(t) | Value::LocalTimestampNanos(t) => Some((*t, 1)),
        Value::Union(_, inner) => unit_ns(inner),
        _ => None,
    }
}

/// The value at a dotted field path of a record.
fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = v;
    for part in path.split('.') {
        if let Value::Union(_, inner) = v {
            v = inner;
        }
        let Value::Record(fields) = v else {
            return None;
        };
        v = &fields.iter().find(|(k, _)| k == part)?.1;
    }
    Some(v)
}

fn nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// Writes the records of `files` whose `time_field` lies in `range`
/// (inclusive) into one new container file `out`, with the first file's
/// schema and codec; returns how many.
fn cut_files(
    files: &[PathBuf],
    time_field: &str,
    range: (SystemTime, SystemTime),
    out: &Path,
) -> Result<u64> {
    let (lo, hi) = (nanos(range.0), nanos(range.1));
    let first = &files[0];
    let header = container::read_header(&mut BufReader::new(
        std::fs::File::open(first).with_context(|| format!("cannot open {}", first.display()))?,
    ))
    .with_context(|| format!("{}", first.display()))?;
    let codec = relay_channel::config::Codec::parse(
        if header.codec == "zstandard" {
            "zstd"
        } else {
            &header.codec
        },
        None,
    )
    .map_err(anyhow::Error::msg)?;
    let schema = apache_avro::Schema::parse_str(&header.schema_json)?;
    let sync = container::new_sync_marker();
    let mut encoder = BlockEncoder::new(codec);
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?,
    );
    let mut buf = Vec::new();
    container::encode_header(&header.schema_json, &codec, &sync, &mut buf);
    file.write_all(&buf)?;
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&schema).build()?;
    let (mut block, mut in_block, mut total) = (Vec::new(), 0u64, 0u64);
    let mut flush = |block: &mut Vec<u8>,
                     n: &mut u64,
                     file: &mut std::io::BufWriter<std::fs::File>|
     -> Result<()> {
        if *n > 0 {
            let mut out = Vec::new();
            encoder.encode_block(*n, block, &sync, &mut out)?;
            file.write_all(&out)?;
            block.clear();
            *n = 0;
        }
        Ok(())
    };
    for f in files {
        let reader = apache_avro::Reader::new(BufReader::new(
            std::fs::File::open(f).with_context(|| format!("cannot open {}", f.display()))?,
        ))
        .with_context(|| format!("{} is not an Avro container file", f.display()))?;
        let file_schema = reader.writer_schema().clone();
        if file_schema.canonical_form() != schema.canonical_form() {
            bail!(
                "{} has another schema than {}: cut the files of each schema apart",
                f.display(),
                first.display()
            );
        }
        for v in reader {
            let v = v.with_context(|| format!("reading {}", f.display()))?;
            let Some((t, unit)) = field(&v, time_field).and_then(unit_ns) else {
                bail!(
                    "{}: a record has no timestamp field {time_field:?}",
                    f.display()
                );
            };
            let t = t as i128 * unit;
            if t < lo || t > hi {
                continue;
            }
            datum.write_value(&mut block, v)?;
            in_block += 1;
            total += 1;
            if block.len() >= 256 << 10 {
                flush(&mut block, &mut in_block, &mut file)?;
            }
        }
    }
    flush(&mut block, &mut in_block, &mut file)?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(total)
}

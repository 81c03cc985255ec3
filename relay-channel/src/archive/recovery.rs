//! Recovery: closes what a crash left open in a channel's folder.

use std::fs;
use std::path::Path;

use super::closer::closed_path;
use crate::container;
use crate::file_names::{self, epoch_ms};
use crate::index;
use crate::record_time::RecordTime;

/// Closes what a crash left open: each `{stem}.avro.part` is cut back to its
/// last whole block and renamed to `{stem}--{to}.avro`; one whose header is
/// damaged is renamed to `.avro.part.damaged` and left for a person to look
/// at.
///
/// The file's block index is made whole again: blocks it lacks are added,
/// their arrival the file's span, their record times (with `time`) read
/// from their records.
pub(super) fn recover_leftovers(dir: &Path, time: Option<&RecordTime>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        // Only regular files directly in the folder (the entry's own type:
        // a symlink is not followed).
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            if file_names::part_stem(&name).is_some() {
                tracing::warn!(file = %e.path().display(), "not a regular file: left alone by recovery");
            }
            continue;
        }
        let Some(stem) = file_names::part_stem(&name) else {
            continue;
        };
        let part = e.path();
        // `{to}` is when the last whole block was written: the file's
        // modification time, read before recovery cuts it back (which would
        // make it now). A torn last write may have moved it a little later;
        // never before the file's start.
        let modified = e.metadata().ok().and_then(|m| m.modified().ok());
        match container::recover_part(&part) {
            Ok(r) if r.header_ok => {
                let from_ms = file_names::stem_start(stem).map_or(0, epoch_ms);
                let to_ms = modified
                    .map_or_else(|| epoch_ms(std::time::SystemTime::now()), epoch_ms)
                    .max(from_ms);
                let span = (from_ms as i64 * 1000, to_ms as i64 * 1000);
                match index::rebuild(&part, span, time) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(file = %part.display(), blocks = n, "block index rebuilt")
                    }
                    Err(e) => {
                        tracing::warn!(file = %part.display(), error = %e, "cannot rebuild the block index; exports will read the file's block headers")
                    }
                }
                let done = closed_path(dir, stem, to_ms);
                match fs::rename(&part, &done) {
                    Ok(()) => tracing::warn!(
                        file = %done.display(), records = r.records, blocks = r.blocks,
                        cut_bytes = r.truncated_bytes,
                        "recovered an archive file left open by an earlier run"
                    ),
                    Err(e) => {
                        tracing::error!(file = %part.display(), error = %e, "cannot rename recovered file")
                    }
                }
            }
            Ok(_) => {
                let aside = dir.join(file_names::damaged_name(&name));
                let _ = fs::rename(&part, &aside);
                tracing::error!(
                    file = %aside.display(),
                    "an archive file left by an earlier run has no readable header; kept aside"
                );
            }
            Err(e) => {
                tracing::error!(file = %part.display(), error = %e, "cannot recover archive file")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Codec;
    use crate::container::BlockEncoder;
    use std::time::{Duration, SystemTime};

    #[test]
    fn leftovers_are_closed_or_kept_aside_and_nothing_else_is_touched() {
        let d = tempfile::tempdir().unwrap();
        let sync = [7u8; 16];
        let mut bytes = Vec::new();
        container::encode_header(r#""int""#, &Codec::Null, &sync, &mut bytes);
        BlockEncoder::new(Codec::Null)
            .encode_block(1, &[2], &sync, &mut bytes)
            .unwrap();
        bytes.extend_from_slice(b"half a block");
        let stem = "ch-20261122T213000.123Z";
        let part = d.path().join(format!("{stem}.avro.part"));
        fs::write(&part, &bytes).unwrap();
        // Its last write, an hour after its first record.
        let last_write = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_386_600_456);
        fs::File::options()
            .write(true)
            .open(&part)
            .unwrap()
            .set_modified(last_write)
            .unwrap();
        // A file whose clock went back: its span still ends after it starts.
        let back = d.path().join("ch-20261122T233000.000Z.avro.part");
        fs::write(&back, &bytes).unwrap();
        fs::File::options()
            .write(true)
            .open(&back)
            .unwrap()
            .set_modified(last_write)
            .unwrap();
        fs::write(d.path().join("ch-2.avro.part"), b"junk").unwrap();
        fs::write(d.path().join("notes.part"), b"x").unwrap();
        let outside = d.path().join("outside");
        fs::write(&outside, &bytes).unwrap();
        std::os::unix::fs::symlink(&outside, d.path().join("ch-3.avro.part")).unwrap();

        recover_leftovers(d.path(), None);

        let done = d
            .path()
            .join("ch-20261122T213000.123Z--20261122T223000.456Z.avro");
        let recovered = fs::read(&done).unwrap();
        assert_eq!(recovered.len(), bytes.len() - b"half a block".len());
        assert!(!part.exists());
        assert!(d
            .path()
            .join("ch-20261122T233000.000Z--20261122T233000.000Z.avro")
            .exists());
        assert!(d.path().join("ch-2.avro.part.damaged").exists());
        assert!(d.path().join("notes.part").exists());
        assert!(d.path().join("ch-3.avro.part").exists());
        assert_eq!(fs::read(&outside).unwrap(), bytes);
    }
}

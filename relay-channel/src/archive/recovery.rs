//! Recovery: closes what a crash left open in a channel's folder.

use std::fs;
use std::path::Path;

use crate::container;

/// Closes what a crash left open: each `*.avro.part` is cut back to its last
/// whole block and renamed to `.avro`; one whose header is damaged is
/// renamed to `.avro.part.damaged` and left for a person to look at.
pub(super) fn recover_leftovers(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        // Only regular files directly in the folder (the entry's own type:
        // a symlink is not followed).
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            if name.ends_with(".avro.part") {
                tracing::warn!(file = %e.path().display(), "not a regular file: left alone by recovery");
            }
            continue;
        }
        let Some(stem) = name.strip_suffix(".part") else {
            continue;
        };
        if !stem.ends_with(".avro") {
            continue;
        }
        let part = e.path();
        match container::recover_part(&part) {
            Ok(r) if r.header_ok => {
                let done = dir.join(stem);
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
                let aside = dir.join(format!("{name}.damaged"));
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
        fs::write(d.path().join("ch-1.avro.part"), &bytes).unwrap();
        fs::write(d.path().join("ch-2.avro.part"), b"junk").unwrap();
        fs::write(d.path().join("notes.part"), b"x").unwrap();
        let outside = d.path().join("outside");
        fs::write(&outside, &bytes).unwrap();
        std::os::unix::fs::symlink(&outside, d.path().join("ch-3.avro.part")).unwrap();

        recover_leftovers(d.path());

        let recovered = fs::read(d.path().join("ch-1.avro")).unwrap();
        assert_eq!(recovered.len(), bytes.len() - b"half a block".len());
        assert!(!d.path().join("ch-1.avro.part").exists());
        assert!(d.path().join("ch-2.avro.part.damaged").exists());
        assert!(d.path().join("notes.part").exists());
        assert!(d.path().join("ch-3.avro.part").exists());
        assert_eq!(fs::read(&outside).unwrap(), bytes);
    }
}

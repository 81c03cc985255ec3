//! Opening the files of a channel's archive folder without following a
//! symbolic link in their place (`O_NOFOLLOW`): a link planted there could
//! send the relay's writes anywhere its user may write. A link found there
//! is refused with an error that says so and what to do, rather than the
//! kernel's "Too many levels of symbolic links".

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens `path` with `opts` and the open flags `flags`, never through a
/// symbolic link at `path` itself.
pub(crate) fn open(opts: &mut OpenOptions, flags: i32, path: &Path) -> io::Result<File> {
    opts.custom_flags(flags | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| explain(e, path))
}

/// The error of an open with `O_NOFOLLOW` of `path`, explained when a
/// symbolic link stood there (`ELOOP` on Linux and macOS, `EMLINK` on
/// FreeBSD).
pub(crate) fn explain(e: io::Error, path: &Path) -> io::Error {
    let refused = matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EMLINK));
    if refused && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return io::Error::new(
            e.kind(),
            format!(
                "{} is a symbolic link: the relay does not follow links inside a channel's \
                 archive folder (a link could send its writes elsewhere); remove the link \
                 (or put a regular file there) and the relay uses the path again",
                path.display()
            ),
        );
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_refused_with_a_message_that_says_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("elsewhere");
        std::fs::write(&target, b"x").unwrap();
        let link = d.path().join("quarantine.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = open(OpenOptions::new().append(true), 0, &link).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("quarantine.jsonl is a symbolic link"), "{m}");
        assert!(m.contains("remove the link"), "{m}");
        // A regular file opens; a missing one gives the kernel's error.
        assert!(open(OpenOptions::new().read(true), 0, &target).is_ok());
        let missing = open(OpenOptions::new().read(true), 0, &d.path().join("no"));
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}

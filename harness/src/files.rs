//! Opening user files (suites, dataset files, checkpoints, arrays) safely: the type is checked
//! before the file is opened, so a FIFO, socket or device is refused instead of blocking
//! forever, and a broken symbolic link is named as one. Every error is an [`InputError`]. Also the
//! one atomic writer every results file and generated dataset goes through ([`write_atomic`]).

use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;

use crate::error::InputError;

fn input(msg: String) -> anyhow::Error {
    anyhow::Error::new(InputError(msg))
}

/// What a non-regular file is, in words.
fn kind_of(m: &Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        if t.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
    }
    if m.is_dir() { "a directory" } else { "not a regular file" }
}

/// Why `path` cannot be read, for a path whose `metadata` failed: a broken link is named as one.
fn missing(path: &Path, what: &str, e: std::io::Error) -> anyhow::Error {
    if let Ok(l) = std::fs::symlink_metadata(path) {
        if l.file_type().is_symlink() {
            let target = std::fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
            return input(format!("{}: broken symbolic link (to `{target}`: {e}); expected a {what}", path.display()));
        }
    }
    input(format!("{}: cannot read {what}: {e}", path.display()))
}

/// Checks that `path` is (or links to) a regular file, without opening it; returns its length.
pub fn check_regular(path: &Path, what: &str) -> anyhow::Result<u64> {
    let m = std::fs::metadata(path).map_err(|e| missing(path, what, e))?;
    if !m.is_file() {
        return Err(input(format!("{}: is {}, expected a regular file ({what})", path.display(), kind_of(&m))));
    }
    Ok(m.len())
}

/// Opens a regular file for reading (refusing other types before opening).
pub fn open(path: &Path, what: &str) -> anyhow::Result<File> {
    check_regular(path, what)?;
    let f = File::open(path).map_err(|e| missing(path, what, e))?;
    // Re-checked on the open handle: the path may have been replaced in between.
    let m = f.metadata().map_err(|e| input(format!("{}: cannot read {what}: {e}", path.display())))?;
    if !m.is_file() {
        return Err(input(format!("{}: is {}, expected a regular file ({what})", path.display(), kind_of(&m))));
    }
    Ok(f)
}

/// Reads a whole regular file.
pub fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let mut f = open(path, what)?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| input(format!("{}: cannot read {what}: {e}", path.display())))?;
    Ok(buf)
}

/// Reads a whole regular file as UTF-8 text.
pub fn read_to_string(path: &Path, what: &str) -> anyhow::Result<String> {
    let bytes = read(path, what)?;
    String::from_utf8(bytes)
        .map_err(|e| input(format!("{}: {what} is not UTF-8 text (invalid byte at offset {})", path.display(), e.utf8_error().valid_up_to())))
}

/// For directory listings: refuses an entry that is a broken link or not a regular file, by its
/// directory-entry type (no extra system call for plain files).
pub fn check_entry(entry: &std::fs::DirEntry, what: &str) -> anyhow::Result<()> {
    let t = entry.file_type().map_err(|e| input(format!("{}: {e}", entry.path().display())))?;
    if t.is_file() {
        return Ok(());
    }
    check_regular(&entry.path(), what).map(|_| ())
}

/// Writes `bytes` to `path` atomically: a reader sees the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("path has no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

//! Checking an uploaded build context before it reaches the engine.
//!
//! A context is a tar archive, optionally gzip-compressed, with the Dockerfile at its root or at a
//! named path. Refused: absolute paths, `..` components, symbolic or hard links that point outside
//! the context, device files and pipes, more than [`MAX_ENTRIES`] entries or more unpacked bytes
//! than the configured limit, and a missing Dockerfile.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

/// Most entries one context may hold.
pub const MAX_ENTRIES: usize = 100_000;

/// What was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedContext {
    /// `sha256:<hex>` of the uploaded bytes together with the Dockerfile's path.
    pub digest: String,
    /// The Dockerfile's path inside the context.
    pub dockerfile: String,
    /// Entries in the archive.
    pub entries: usize,
    /// Bytes of file content, unpacked.
    pub unpacked_bytes: u64,
}

/// Why a context was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// The context breaks a rule; the message names the entry.
    #[error("{0}")]
    Invalid(String),
    /// The context unpacks to more than the limit.
    #[error("the build context unpacks to more than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
}

/// Whether `bytes` look like a build context (a tar archive, or gzip data).
pub fn looks_like_context(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b]) || bytes.get(257..262) == Some(b"ustar")
}

/// Checks `bytes` as a build context whose Dockerfile is at `dockerfile`.
pub fn check(bytes: &Bytes, dockerfile: &str, max_unpacked: u64) -> Result<CheckedContext, ContextError> {
    let invalid = |why: String| ContextError::Invalid(why);
    let dockerfile_path = relative_path(dockerfile).ok_or_else(|| {
        invalid(format!("the Dockerfile path `{dockerfile}` must be relative and stay inside the context"))
    })?;
    let reader: Box<dyn Read> = if bytes.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(&bytes[..]))
    } else {
        Box::new(&bytes[..])
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| invalid(format!("not a tar archive: {e}")))?;
    let (mut count, mut unpacked, mut found_dockerfile) = (0usize, 0u64, false);
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("the archive is damaged: {e}")))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(invalid(format!("the build context has more than {MAX_ENTRIES} entries")));
        }
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = relative_path(&raw_path).ok_or_else(|| {
            invalid(format!("`{raw_path}`: absolute paths and `..` are not allowed in a build context"))
        })?;
        let kind = entry.header().entry_type();
        // A sparse file unpacks to its "real" size, which no size field of the entry states
        // (GNU's own format, or PAX's GNU.sparse.* records): refused, whatever its format.
        if kind == tar::EntryType::GNUSparse || is_pax_sparse(&mut entry)? {
            return Err(invalid(format!(
                "`{raw_path}` is a sparse file; build contexts may not hold sparse files"
            )));
        }
        // The entry's size as it unpacks: a PAX `size` record overrides the header's field.
        unpacked = unpacked.saturating_add(entry.size());
        if unpacked > max_unpacked {
            return Err(ContextError::TooLarge { limit: max_unpacked });
        }
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous => {
                found_dockerfile |= path == dockerfile_path;
            }
            T::Directory | T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            T::Symlink => {
                let target = link_target(&entry)?;
                let base = path.parent().unwrap_or(Path::new(""));
                if Path::new(&target).is_absolute() || relative_path_from(base, &target).is_none() {
                    return Err(invalid(format!(
                        "`{raw_path}` is a link to `{target}`, outside the build context"
                    )));
                }
                found_dockerfile |= path == dockerfile_path;
            }
            T::Link => {
                let target = link_target(&entry)?;
                if relative_path(&target).is_none() {
                    return Err(invalid(format!(
                        "`{raw_path}` is a hard link to `{target}`, outside the build context"
                    )));
                }
            }
            other => {
                return Err(invalid(format!(
                    "`{raw_path}` is a {}; only files, directories and links may be in a build context",
                    describe(other)
                )));
            }
        }
    }
    if count == 0 {
        return Err(invalid("the build context is empty".into()));
    }
    if !found_dockerfile {
        return Err(invalid(format!("the build context has no file `{dockerfile}` (the Dockerfile)")));
    }
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    hasher.update(b"\0");
    hasher.update(dockerfile_path.to_string_lossy().as_bytes());
    Ok(CheckedContext {
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        dockerfile: dockerfile_path.to_string_lossy().into_owned(),
        entries: count,
        unpacked_bytes: unpacked,
    })
}

/// Whether a PAX header before the entry describes it as a sparse file.
fn is_pax_sparse<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<bool, ContextError> {
    let Some(extensions) =
        entry.pax_extensions().map_err(|e| ContextError::Invalid(format!("the archive is damaged: {e}")))?
    else {
        return Ok(false);
    };
    for extension in extensions {
        let extension =
            extension.map_err(|e| ContextError::Invalid(format!("a PAX header is damaged: {e}")))?;
        if extension.key_bytes().starts_with(b"GNU.sparse.") {
            return Ok(true);
        }
    }
    Ok(false)
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, ContextError> {
    let target =
        entry.link_name_bytes().ok_or_else(|| ContextError::Invalid("a link entry has no target".into()))?;
    Ok(String::from_utf8_lossy(&target).into_owned())
}

fn describe(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "named pipe",
        _ => "special file",
    }
}

/// `path` normalised, if it is relative and never climbs above the root.
fn relative_path(path: &str) -> Option<PathBuf> {
    relative_path_from(Path::new(""), path)
}

/// `base` joined with `path`, normalised, if the result stays inside the root.
fn relative_path_from(base: &Path, path: &str) -> Option<PathBuf> {
    if path.contains('\0') || Path::new(path).is_absolute() {
        return None;
    }
    let mut normal = PathBuf::new();
    for component in base.components().chain(Path::new(path).components()) {
        match component {
            Component::Normal(part) => normal.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !normal.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(normal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(path: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        // Written into the raw name field: `set_path` itself refuses `..`, and these tests need
        // the archives an attacker would make.
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        header
    }

    fn archive(entries: &[(&str, tar::EntryType, &str)]) -> Bytes {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, content_or_target) in entries {
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let mut header = header(path, *kind, 0);
                    header.set_link_name(content_or_target).expect("link name");
                    header.set_cksum();
                    builder.append(&header, std::io::empty()).expect("append");
                }
                _ => {
                    let mut header = header(path, *kind, content_or_target.len() as u64);
                    header.set_cksum();
                    builder.append(&header, content_or_target.as_bytes()).expect("append");
                }
            }
        }
        Bytes::from(builder.into_inner().expect("finish"))
    }

    use tar::EntryType::{Directory, Fifo, GNUSparse, Link, Regular, Symlink};

    #[test]
    fn accepts_a_plain_context_and_finds_a_named_dockerfile() {
        let bytes = archive(&[
            ("Dockerfile", Regular, "FROM scratch\n"),
            ("src/", Directory, ""),
            ("src/main.c", Regular, "int main(){}"),
            ("src/link", Symlink, "main.c"),
            ("docker/Build.df", Regular, "FROM scratch\n"),
        ]);
        let checked = check(&bytes, "Dockerfile", 1 << 20).expect("valid");
        assert_eq!((checked.entries, checked.dockerfile.as_str()), (5, "Dockerfile"));
        assert!(check(&bytes, "docker/Build.df", 1 << 20).is_ok());
        assert!(looks_like_context(&bytes));
        assert_ne!(check(&bytes, "docker/Build.df", 1 << 20).map(|c| c.digest), Ok(checked.digest));
    }

    #[test]
    fn refuses_escapes_links_out_and_special_files() {
        type Entries<'a> = &'a [(&'a str, tar::EntryType, &'a str)];
        let cases: [(Entries<'_>, &str); 6] = [
            (&[("Dockerfile", Regular, "x"), ("../evil", Regular, "x")], "`..`"),
            (&[("Dockerfile", Regular, "x"), ("/etc/passwd", Regular, "x")], "absolute"),
            (&[("Dockerfile", Regular, "x"), ("a/link", Symlink, "../../etc")], "outside"),
            (&[("Dockerfile", Regular, "x"), ("link", Symlink, "/etc/shadow")], "outside"),
            (&[("Dockerfile", Regular, "x"), ("hard", Link, "../x")], "outside"),
            (&[("Dockerfile", Regular, "x"), ("pipe", Fifo, "")], "named pipe"),
        ];
        for (entries, expected) in cases {
            let error = check(&archive(entries), "Dockerfile", 1 << 20).expect_err("refused");
            assert!(error.to_string().contains(expected), "{error} should mention {expected}");
        }
    }

    #[test]
    fn refuses_sparse_files_in_pax_and_gnu_form() {
        // What `tar --sparse --format=pax` writes: PAX records naming the real size, then a
        // small regular entry holding the map and the data.
        let mut builder = tar::Builder::new(Vec::new());
        let mut dockerfile = header("Dockerfile", Regular, 13);
        dockerfile.set_cksum();
        builder.append(&dockerfile, &b"FROM scratch\n"[..]).expect("append");
        builder
            .append_pax_extensions([
                ("GNU.sparse.major", &b"1"[..]),
                ("GNU.sparse.minor", &b"0"[..]),
                ("GNU.sparse.name", &b"big"[..]),
                ("GNU.sparse.realsize", &b"1073741824"[..]),
            ])
            .expect("pax");
        let mut sparse = header("GNUSparseFile.0/big", Regular, 512);
        sparse.set_cksum();
        builder.append(&sparse, &[0u8; 512][..]).expect("append");
        let bytes = Bytes::from(builder.into_inner().expect("tar"));
        let error = check(&bytes, "Dockerfile", 1 << 20).expect_err("refused");
        assert!(error.to_string().contains("sparse"), "{error}");

        // (This GNU header has no sparse map; the archive reader refuses it before we see it.)
        let gnu = archive(&[("Dockerfile", Regular, "x"), ("big", GNUSparse, "")]);
        assert!(check(&gnu, "Dockerfile", 1 << 20).is_err());
    }

    #[test]
    fn refuses_missing_dockerfile_bad_paths_and_oversize() {
        let bytes = archive(&[("main.c", Regular, "int main(){}")]);
        assert!(
            check(&bytes, "Dockerfile", 1 << 20).expect_err("no dockerfile").to_string().contains("no file")
        );
        assert!(check(&bytes, "../Dockerfile", 1 << 20).is_err());
        let big = archive(&[("Dockerfile", Regular, "FROM scratch\n")]);
        assert_eq!(check(&big, "Dockerfile", 4), Err(ContextError::TooLarge { limit: 4 }));
        assert!(check(&Bytes::from_static(b"not a tar"), "Dockerfile", 1 << 20).is_err());
    }

    #[test]
    fn reads_gzip_contexts() {
        let tar = archive(&[("Dockerfile", Regular, "FROM scratch\n")]);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, &tar).expect("compress");
        let gz = Bytes::from(encoder.finish().expect("finish"));
        assert!(looks_like_context(&gz));
        assert!(check(&gz, "Dockerfile", 1 << 20).is_ok());
    }
}

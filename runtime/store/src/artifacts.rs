//! Content-addressed artifacts and the compiled-code cache, inside the data directory.
//!
//! Sources live at `artifacts/<sha256 hex>`; compiled code at `compiled/<key>`. With a cluster
//! store ([`Artifacts::shared`]) sources are kept in PostgreSQL too, and the data directory's
//! copy is a cache: an artifact another gateway uploaded is fetched on first use. Compiled code
//! stays per node. Digests and keys
//! are checked to be plain lowercase hex (and `-`), so none can name a path outside those folders.

use cap_std::fs::Dir;
use sha2::{Digest as _, Sha256};

use crate::{StoreError, write_durably};

pub(crate) const SOURCES: &str = "artifacts";
pub(crate) const COMPILED: &str = "compiled";

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The artifact store.
pub struct Artifacts {
    sources: Dir,
    compiled: Dir,
    /// The cluster's copy of every source, when the store is shared.
    shared: Option<crate::postgres::chunks::PgChunks>,
}

impl Artifacts {
    /// Opens the artifact folders of a data directory.
    pub fn open(data: &crate::DataDir) -> Result<Self, StoreError> {
        let open = |name: &str| {
            data.dir()
                .open_dir(name)
                .map_err(|source| StoreError::Io { what: format!("opening {name}"), source })
        };
        Ok(Self { sources: open(SOURCES)?, compiled: open(COMPILED)?, shared: None })
    }

    /// The artifact folders of a data directory as a cache of the cluster's `store`.
    pub fn shared(
        data: &crate::DataDir,
        store: std::sync::Arc<crate::postgres::PgStore>,
    ) -> Result<Self, StoreError> {
        Ok(Self { shared: Some(crate::postgres::chunks::PgChunks::new(store)), ..Self::open(data)? })
    }

    /// Stores `bytes` under their digest (durably) and returns it. Storing twice is harmless.
    pub fn put(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let digest = digest_of(bytes);
        self.put_derived(&digest, bytes)?;
        Ok(digest)
    }

    /// Stores `bytes` made from other artifacts under `digest`, a digest of what made them (not of
    /// the bytes): what is made from the same inputs is stored once. Storing twice is harmless.
    pub fn put_derived(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let file = hex_of(digest)?;
        if !self.sources.exists(file) {
            write_durably(&self.sources, file, bytes, None)?;
        }
        if let Some(shared) = &self.shared {
            shared.put(digest, bytes)?;
        }
        Ok(())
    }

    /// Whether an artifact is stored under `digest` (here, or in the cluster).
    pub fn has(&self, digest: &str) -> Result<bool, StoreError> {
        let here = self
            .sources
            .try_exists(hex_of(digest)?)
            .map_err(|source| StoreError::Io { what: format!("checking artifact {digest}"), source })?;
        match &self.shared {
            Some(shared) if !here => shared.has(digest),
            _ => Ok(here),
        }
    }

    /// Reads the artifact with `digest`; one only the cluster has is fetched and kept here.
    pub fn get(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let file = hex_of(digest)?;
        match self.sources.read(file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.shared.is_some() => {
                let fetched = self.shared.as_ref().and_then(|shared| shared.get(digest).transpose());
                let bytes = fetched.ok_or_else(|| StoreError::Io {
                    what: format!("reading artifact {digest}"),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "not in the cluster's store either",
                    ),
                })??;
                write_durably(&self.sources, file, &bytes, None)?;
                Ok(bytes)
            }
            read => {
                read.map_err(|source| StoreError::Io { what: format!("reading artifact {digest}"), source })
            }
        }
    }

    /// Reads compiled code stored under `key`, if any.
    pub fn get_compiled(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        match self.compiled.read(key) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { what: format!("reading compiled {key}"), source }),
        }
    }

    /// Whether compiled code is stored under `key`.
    pub fn has_compiled(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        self.compiled
            .try_exists(key)
            .map_err(|source| StoreError::Io { what: format!("checking compiled {key}"), source })
    }

    /// Removes the artifact with `digest` and every compiled form of it (`<hex>-<engine>`).
    /// Returns the bytes freed.
    pub fn remove(&self, digest: &str) -> Result<u64, StoreError> {
        let hex = hex_of(digest)?;
        let mut freed = 0;
        let io = |what: String| move |source| StoreError::Io { what, source };
        let entries = self.compiled.entries().map_err(io("listing compiled code".into()))?;
        for entry in entries {
            let entry = entry.map_err(io("listing compiled code".into()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.strip_prefix(hex).is_some_and(|rest| rest.starts_with('-')) {
                freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
                self.compiled.remove_file(&name).map_err(io(format!("removing compiled {name}")))?;
            }
        }
        match self.sources.metadata(hex) {
            Ok(metadata) => {
                freed += metadata.len();
                self.sources.remove_file(hex).map_err(io(format!("removing artifact {digest}")))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Io { what: format!("reading artifact {digest}"), source }),
        }
        if let Some(shared) = &self.shared {
            shared.remove(digest)?;
        }
        Ok(freed)
    }

    /// Stores compiled code under `key`.
    pub fn put_compiled(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        write_durably(&self.compiled, key, bytes, None)
    }
}

fn hex_of(digest: &str) -> Result<&str, StoreError> {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(hex)
    } else {
        Err(StoreError::InvalidKey(digest.to_string()))
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    let ok = !key.is_empty()
        && key.len() <= 200
        && key.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-');
    if ok { Ok(()) } else { Err(StoreError::InvalidKey(key.to_string())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_addressed_and_confined() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = crate::DataDir::open(temp.path()).expect("open");
        let artifacts = Artifacts::open(&data).expect("artifacts");
        let digest = artifacts.put(b"\0asm").expect("put");
        assert_eq!(digest, digest_of(b"\0asm"));
        assert_eq!(artifacts.put(b"\0asm").expect("again"), digest);
        assert_eq!(artifacts.get(&digest).expect("get"), b"\0asm");
        for bad in ["../registry.db", "sha256:../../etc/passwd", "sha256:ABC", ""] {
            assert!(matches!(artifacts.get(bad), Err(StoreError::InvalidKey(_))), "{bad}");
        }
        assert!(artifacts.put_compiled("../x", b"").is_err());
        assert_eq!(artifacts.get_compiled("abc-1").expect("miss"), None);
        assert!(!artifacts.has_compiled("abc-1").expect("absent"));
        artifacts.put_compiled("abc-1", b"code").expect("put compiled");
        assert_eq!(artifacts.get_compiled("abc-1").expect("hit"), Some(b"code".to_vec()));
        assert!(artifacts.has_compiled("abc-1").expect("present"));

        let hex = digest.trim_start_matches("sha256:");
        artifacts.put_compiled(&format!("{hex}-e1"), b"code").expect("compiled");
        assert_eq!(artifacts.remove(&digest).expect("remove"), 4 + 4);
        assert!(artifacts.get(&digest).is_err());
        assert!(!artifacts.has_compiled(&format!("{hex}-e1")).expect("gone"));
        assert!(artifacts.has_compiled("abc-1").expect("another artifact's code stays"));
    }
}

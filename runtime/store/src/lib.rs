//! Amphi's embedded storage, in one data directory. Nothing to install.
//!
//! - [`DataDir`]: the directory, private to Amphi's user, opened once as a cap-std
//!   [`Dir`](cap_std::fs::Dir); artifacts, compiled code and small files go through that handle,
//!   so no function name, digest or key can reach outside it. SQLite opens its databases by path
//!   (it has no directory-relative open), at fixed names the handle created first.
//! - [`artifacts`]: content-addressed blobs (uploaded wasm) and the compiled-code cache.
//! - [`registry`]: functions and their versions (SQLite, durable before a deploy is acknowledged).
//! - [`logs`]: the log store for every backend: invocation records and log lines, written in
//!   batches by a dedicated thread, with retention and a live feed for `--follow`.
//! - [`postgres`]: the networked shape (`--store postgres://…`): the registry, artifacts and the
//!   cluster's nodes in PostgreSQL, shared by several gateways.

pub mod artifacts;
pub mod logs;
pub mod postgres;
pub mod registry;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation in the data directory failed.
    #[error("data directory I/O on {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The embedded database failed.
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    /// Stored data could not be decoded (a corrupt or newer data directory).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A deploy named an artifact that was never uploaded.
    #[error("no artifact {0} was uploaded")]
    UnknownArtifact(String),
    /// A key (digest, cache key) is not of the accepted form.
    #[error("invalid key `{0}`")]
    InvalidKey(String),
    /// The background writer is gone (the store was shut down).
    #[error("the log store writer has stopped")]
    WriterStopped,
    /// The cluster's store cannot be reached now (PostgreSQL down, no connection free); worth
    /// trying again.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// PostgreSQL refused a statement.
    #[error("PostgreSQL: {0}")]
    Postgres(#[source] tokio_postgres::Error),
}

impl StoreError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// The data directory.
pub struct DataDir {
    path: PathBuf,
    dir: Dir,
}

const TOKEN_FILE: &str = "admin-token";
const INSTALLATION_FILE: &str = "installation-id";

impl DataDir {
    /// Opens (creating it if needed) the data directory at `path`.
    /// The directory is made private to Amphi's user (0700): it holds the admin token, and the
    /// registry holds functions' environments in plain text.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(StoreError::io(format!("creating {}", path.display())))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(StoreError::io(format!("restricting {}", path.display())))?;
        }
        let dir = Dir::open_ambient_dir(path, ambient_authority())
            .map_err(StoreError::io(format!("opening {}", path.display())))?;
        for sub in [artifacts::SOURCES, artifacts::COMPILED] {
            dir.create_dir_all(sub).map_err(StoreError::io(format!("creating {sub}")))?;
        }
        let path = path.canonicalize().map_err(StoreError::io("resolving the data directory"))?;
        Ok(Self { path, dir })
    }

    /// The directory's absolute path (for SQLite, which opens files by path).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of every file in the directory, walked through the handle. Blocking.
    pub fn size(&self) -> u64 {
        fn walk(dir: &Dir) -> u64 {
            let Ok(entries) = dir.entries() else { return 0 };
            entries
                .filter_map(Result::ok)
                .map(|entry| match entry.file_type() {
                    Ok(kind) if kind.is_dir() => entry.open_dir().map(|sub| walk(&sub)).unwrap_or(0),
                    Ok(kind) if kind.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
                    _ => 0,
                })
                .sum()
        }
        walk(&self.dir)
    }

    /// The path of the database `name`, its file made first, readable by the owner only (SQLite
    /// gives its `-wal` and `-shm` files the database file's permissions).
    pub fn private_database(&self, name: &str) -> Result<PathBuf, StoreError> {
        use cap_std::fs::{OpenOptions, OpenOptionsExt as _, PermissionsExt as _};
        let file = self
            .dir
            .open_with(name, OpenOptions::new().create(true).append(true).mode(0o600))
            .map_err(StoreError::io(format!("creating {name}")))?;
        // Files made by an older version keep their old mode unless it is set here.
        file.set_permissions(cap_std::fs::Permissions::from_mode(0o600))
            .map_err(StoreError::io(format!("restricting {name}")))?;
        for companion in [format!("{name}-wal"), format!("{name}-shm")] {
            match self.dir.set_permissions(&companion, cap_std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Io { what: format!("restricting {companion}"), source: e });
                }
                _ => {}
            }
        }
        Ok(self.path.join(name))
    }

    /// The capability handle to the directory.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The admin token stored in the directory, if one was made before.
    pub fn stored_token(&self) -> Result<Option<String>, StoreError> {
        match self.dir.read_to_string(TOKEN_FILE) {
            Ok(token) => Ok(Some(token.trim().to_string()).filter(|t| !t.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { what: "reading the admin token".into(), source: e }),
        }
    }

    /// Stores the admin token, readable by the owner only.
    pub fn store_token(&self, token: &str) -> Result<(), StoreError> {
        write_durably(&self.dir, TOKEN_FILE, token.as_bytes(), Some(0o600))
    }

    /// A random id made once per data directory. Container backends label what they create with
    /// it, so a server cleans up after its own earlier runs and never touches another server's.
    pub fn installation_id(&self) -> Result<String, StoreError> {
        match self.dir.read_to_string(INSTALLATION_FILE) {
            Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io { what: "reading the installation id".into(), source: e }),
        }
        let bytes: [u8; 8] = rand::random();
        let id = hex::encode(bytes);
        write_durably(&self.dir, INSTALLATION_FILE, id.as_bytes(), None)?;
        Ok(id)
    }
}

/// Writes `bytes` to `name` in `dir` so that it is complete and on disk when this returns:
/// a temporary file, fsync, rename over the name, fsync of the directory.
pub(crate) fn write_durably(
    dir: &Dir,
    name: &str,
    bytes: &[u8],
    mode: Option<u32>,
) -> Result<(), StoreError> {
    // One temporary file per write, so concurrent writers of the same name (the same upload sent
    // twice at once) never share one; the last rename wins with identical content.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = format!("{name}.tmp-{}-{write}", std::process::id());
    let mut options = cap_std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if let Some(mode) = mode {
        use cap_std::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    let mut file = dir.open_with(&temp, &options).map_err(StoreError::io(format!("creating {temp}")))?;
    file.write_all(bytes).map_err(StoreError::io(format!("writing {temp}")))?;
    file.sync_all().map_err(StoreError::io(format!("syncing {temp}")))?;
    drop(file);
    dir.rename(&temp, dir, name).map_err(StoreError::io(format!("renaming {temp}")))?;
    sync_dir(dir, name)
}

fn sync_dir(dir: &Dir, what: &str) -> Result<(), StoreError> {
    // A directory is fsynced through a read handle to itself (the `Dir` handle may be O_PATH).
    let handle = dir.open(".").map_err(StoreError::io(format!("syncing after {what}")))?;
    handle.sync_all().map_err(StoreError::io(format!("syncing after {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_durable_writes_of_one_name_all_succeed() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = DataDir::open(temp.path()).expect("open");
        let content = vec![7u8; 256 << 10];
        std::thread::scope(|scope| {
            let writers: Vec<_> = (0..8)
                .map(|_| {
                    scope
                        .spawn(|| (0..20).try_for_each(|_| write_durably(data.dir(), "same", &content, None)))
                })
                .collect();
            for writer in writers {
                writer.join().expect("thread").expect("every write succeeds");
            }
        });
        assert_eq!(data.dir().read("same").expect("read"), content);
    }
}

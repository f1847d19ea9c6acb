//! Packing a directory into a build context (tar.gz), honouring its `.dockerignore`.
//!
//! `.dockerignore` as Docker reads it: one pattern per line, `#` comments, `!` re-includes,
//! `*`/`?`/`[…]` within one path segment and `**` across segments, a leading `/` ignored; a
//! pattern that matches a directory excludes everything under it; the last matching line wins.
//! The Dockerfile and `.dockerignore` are always sent. Entries are sorted and their owners and
//! times zeroed, so the same files give the same bytes (and the server reuses the image it built).

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

use crate::ToolchainError;

type Result<T> = std::result::Result<T, ToolchainError>;

/// The rules of a `.dockerignore`.
pub struct IgnoreRules {
    rules: Vec<(GlobMatcher, bool)>,
}

impl IgnoreRules {
    /// Parses the text of a `.dockerignore`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (pattern, include) = match line.strip_prefix('!') {
                Some(rest) => (rest.trim(), true),
                None => (line, false),
            };
            let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
            let pattern = pattern.strip_prefix("./").unwrap_or(pattern);
            if pattern.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| ToolchainError::Invalid(format!(".dockerignore: bad pattern `{line}`: {e}")))?;
            rules.push((glob.compile_matcher(), include));
        }
        Ok(Self { rules })
    }

    /// Whether `path` (relative, `/`-separated) is left out of the context.
    pub fn excludes(&self, path: &str) -> bool {
        let mut excluded = false;
        for (glob, include) in &self.rules {
            // A rule matching a parent directory covers everything beneath it.
            let matches = std::iter::successors(Some(path), |p| p.rsplit_once('/').map(|(parent, _)| parent))
                .any(|candidate| glob.is_match(candidate));
            if matches {
                excluded = !include;
            }
        }
        excluded
    }
}

/// Packs `dir` into a gzip-compressed tar; checks that `dockerfile` is in it.
pub fn pack(dir: &Path, dockerfile: &str) -> Result<Vec<u8>> {
    if !dir.is_dir() {
        return Err(ToolchainError::Invalid(format!(
            "{} is not a directory (a build context is a directory with a Dockerfile)",
            dir.display()
        )));
    }
    if !dir.join(dockerfile).is_file() {
        return Err(ToolchainError::Invalid(format!("{} has no {dockerfile}", dir.display())));
    }
    let rules = match std::fs::read_to_string(dir.join(".dockerignore")) {
        Ok(text) => IgnoreRules::parse(&text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => IgnoreRules { rules: Vec::new() },
        Err(e) => return Err(ToolchainError::io(dir.join(".dockerignore"), e)),
    };
    let always = [dockerfile.trim_start_matches("./"), ".dockerignore"];
    let mut files = Vec::new();
    walk(dir, PathBuf::new(), &rules, &always, &mut files)?;

    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut archive = tar::Builder::new(encoder);
    for relative in files {
        let path = dir.join(&relative);
        let metadata = std::fs::symlink_metadata(&path).map_err(|e| ToolchainError::io(&path, e))?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        use std::os::unix::fs::PermissionsExt as _;
        header.set_mode(metadata.permissions().mode() & 0o7777);
        let name = relative.to_string_lossy().into_owned();
        if metadata.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| ToolchainError::io(&path, e))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            archive.append_link(&mut header, &name, &target).map_err(|e| ToolchainError::io(&path, e))?;
        } else if metadata.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            archive
                .append_data(&mut header, format!("{name}/"), std::io::empty())
                .map_err(|e| ToolchainError::io(&path, e))?;
        } else if metadata.is_file() {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(metadata.len());
            let file = std::fs::File::open(&path).map_err(|e| ToolchainError::io(&path, e))?;
            archive.append_data(&mut header, &name, file).map_err(|e| ToolchainError::io(&path, e))?;
        }
    }
    let encoder = archive.into_inner().map_err(|e| ToolchainError::io(dir, e))?;
    encoder.finish().map_err(|e| ToolchainError::io(dir, e))
}

fn walk(
    root: &Path,
    relative: PathBuf,
    rules: &IgnoreRules,
    always: &[&str],
    out: &mut Vec<PathBuf>,
) -> Result<()> {
    let dir = root.join(&relative);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .and_then(|entries| entries.collect::<std::io::Result<_>>())
        .map_err(|e| ToolchainError::io(&dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = relative.join(entry.file_name());
        let name = path.to_string_lossy().into_owned();
        let is_dir = entry.file_type().map_err(|e| ToolchainError::io(entry.path(), e))?.is_dir();
        if rules.excludes(&name) && !always.contains(&name.as_str()) {
            // A re-included file below an excluded directory still needs the walk.
            if !is_dir || !rules.rules.iter().any(|(_, include)| *include) {
                continue;
            }
        } else {
            out.push(path.clone());
        }
        if is_dir {
            walk(root, path, rules, always, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_rules() {
        let rules = IgnoreRules::parse("# comment\n*.log\n/target\nnode_modules/\n**/*.tmp\n!keep.log\n")
            .expect("valid rules");
        assert!(rules.excludes("debug.log"));
        assert!(!rules.excludes("keep.log"));
        assert!(!rules.excludes("src/debug.log"), "`*` stays within one segment");
        assert!(rules.excludes("target"));
        assert!(rules.excludes("target/release/app"), "a directory covers what is under it");
        assert!(rules.excludes("node_modules/x/index.js"));
        assert!(rules.excludes("a/b/c.tmp"));
        assert!(!rules.excludes("src/main.rs"));
    }

    #[test]
    fn packs_a_directory_without_ignored_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").expect("write");
        std::fs::write(dir.path().join(".dockerignore"), "secret\n*.log\n").expect("write");
        std::fs::write(dir.path().join("secret"), "password").expect("write");
        std::fs::write(dir.path().join("app.log"), "noise").expect("write");
        std::fs::create_dir(dir.path().join("src")).expect("mkdir");
        std::fs::write(dir.path().join("src/main.c"), "int main(){}").expect("write");
        let packed = pack(dir.path(), "Dockerfile").expect("packs");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&packed[..]));
        let mut names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry").path().expect("path").to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".dockerignore", "Dockerfile", "src/", "src/main.c"]);
        assert_eq!(pack(dir.path(), "Dockerfile").expect("packs again"), packed, "packing is deterministic");
        assert!(pack(dir.path(), "Missing.df").is_err());
    }
}

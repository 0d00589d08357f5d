//! Profiles as JSON lines in the data directory: `profiles.jsonl`, rotated by size to
//! `profiles.jsonl.1` (newest) … `profiles.jsonl.N` (oldest). The directory is created 0700 and
//! the files 0600: profiles name processes and peers.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

pub const FILE_NAME: &str = "profiles.jsonl";

#[derive(Debug)]
pub struct JsonLines {
    pub path: PathBuf,
    max_bytes: u64,
    keep: u32,
}

impl JsonLines {
    /// Creates the data directory if needed.
    pub fn open(dir: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        Ok(Self {
            path: dir.join(FILE_NAME),
            max_bytes,
            keep,
        })
    }

    /// Appends one line (the newline is added), rotating first if the line would take the file
    /// past the size limit. One `write` of the whole line: a crash leaves whole lines only.
    pub fn append(&self, line: &[u8]) -> io::Result<()> {
        let size = fs::metadata(&self.path).map_or(0, |m| m.len());
        if size > 0 && size + line.len() as u64 + 1 > self.max_bytes {
            self.rotate()?;
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        file.write_all(&buf)
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&self) -> io::Result<()> {
        if self.keep == 0 {
            return fs::remove_file(&self.path);
        }
        let _ = fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        fs::rename(&self.path, self.rotated(1))
    }
}

/// The profile files of a data directory, oldest first (`.N` … `.1`, then the current file).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let current = dir.join(FILE_NAME);
    let mut rotated: Vec<(u32, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let n = name
                .to_str()?
                .strip_prefix(FILE_NAME)?
                .strip_prefix('.')?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if current.exists() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n_files() -> io::Result<()> {
        let dir = std::env::temp_dir().join(format!("crmprof-jsonl-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // 10 bytes a line (9 + newline), at most 30 bytes a file: 3 lines a file.
        let sink = JsonLines::open(&dir, 30, 2)?;
        for i in 0..10 {
            sink.append(format!("line-{i:03}").as_bytes())?;
        }
        let files = files(&dir);
        let names: Vec<String> = files
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(
            names,
            ["profiles.jsonl.2", "profiles.jsonl.1", "profiles.jsonl"]
        );
        let all: Vec<String> = files
            .iter()
            .map(|p| fs::read_to_string(p).unwrap_or_default())
            .collect();
        // Lines 0-2 were rotated out; the rest are in order.
        assert_eq!(
            all.concat(),
            (3..10)
                .map(|i| format!("line-{i:03}\n"))
                .collect::<String>()
        );
        for f in &files {
            assert!(fs::metadata(f)?.len() <= 30);
        }
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}

//! Sizes of directory trees, measured one way everywhere (templates, snapshot layers, a
//! sandbox's disk use): like `du`, every inode once however many hard links name it (a
//! template's hard-link farm or a `cp -al` copy must not count twice), symlinks not followed.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What a tree's size means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Bytes the files say they hold (`du -sb`): a layer's or template's content.
    Apparent,
    /// Bytes allocated on disk (`du -s --block-size=1`): what a sandbox uses of its disk.
    Allocated,
}

/// The size of the tree at `path` (0 when it does not exist).
pub fn tree_size(path: impl AsRef<Path>, measure: Measure) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![path.as_ref().to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        total += match measure {
            Measure::Apparent => md.size(),
            Measure::Allocated => md.blocks() * 512,
        };
        if md.is_dir()
            && let Ok(rd) = fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_count_once() {
        let dir = std::env::temp_dir().join(format!("coppice-fsutil-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("a"), vec![1u8; 10_000]).unwrap();
        fs::hard_link(dir.join("a"), dir.join("sub/a-again")).unwrap();
        fs::write(dir.join("sub/b"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        let dirs: u64 = [&dir, &dir.join("sub")]
            .iter()
            .map(|d| fs::metadata(d).unwrap().size())
            .sum();
        let link = fs::symlink_metadata(dir.join("link")).unwrap().size();
        assert_eq!(tree_size(&dir, Measure::Apparent), dirs + 10_000 + 5 + link);
        let allocated = tree_size(&dir, Measure::Allocated);
        let a_blocks = fs::metadata(dir.join("a")).unwrap().blocks() * 512;
        assert!(allocated >= a_blocks, "{allocated} < {a_blocks}");
        assert!(
            allocated < 2 * a_blocks + 64 * 1024,
            "linked file counted twice: {allocated}"
        );
        assert_eq!(tree_size(dir.join("missing"), Measure::Apparent), 0);
        fs::remove_dir_all(&dir).unwrap();
    }
}

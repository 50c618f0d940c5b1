//! Where to put a uprobe: a function's file offset from the library's dynamic symbol table,
//! moved past an `endbr64` (which would make the kernel single-step the probe, ~10 µs a hit). Versioned names (`name@@VER`) are matched by their base name.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// Why a library's probe points could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The library file could not be opened or mapped.
    #[error("{path}: {source}")]
    Io {
        /// The library file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ELF shared object the parser can read.
    #[error("{path}: not a readable ELF shared object: {what}")]
    Parse {
        /// The library file.
        path: PathBuf,
        /// The parser's error.
        what: String,
    },
}

/// A function found in a library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePoint {
    /// Offset in the file where the probe goes.
    pub file_offset: u64,
    /// The function starts with `endbr64`, and the probe was moved past it.
    pub skipped_endbr64: bool,
}

/// Finds `wanted` functions among the exported symbols of `path`.
pub fn probe_points(path: &Path, wanted: &[&str]) -> Result<HashMap<String, ProbePoint>, ElfError> {
    let io = |source| ElfError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    // SAFETY: a read-only private mapping of a shared library; libraries in use are not
    // truncated (the loader maps them the same way).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let elf =
        object::File::parse(&*map).map_err(|e| ElfError::Parse { path: path.to_path_buf(), what: e.to_string() })?;
    let mut found = HashMap::new();
    for sym in elf.dynamic_symbols() {
        if sym.kind() != SymbolKind::Text || sym.is_undefined() || sym.address() == 0 {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        let base = name.split('@').next().unwrap_or(name);
        if !wanted.contains(&base) || found.contains_key(base) {
            continue;
        }
        let Some(offset) = file_offset(&elf, sym.address()) else { continue };
        let first = map.get(offset as usize..offset as usize + 4);
        let skipped_endbr64 = first == Some(&ENDBR64[..]);
        let file_offset = if skipped_endbr64 { offset + 4 } else { offset };
        found.insert(base.to_string(), ProbePoint { file_offset, skipped_endbr64 });
    }
    Ok(found)
}

/// Virtual address → file offset through the loadable segment that contains it.
fn file_offset(elf: &object::File<'_>, addr: u64) -> Option<u64> {
    elf.segments().find_map(|seg| {
        let (start, size) = (seg.address(), seg.size());
        let (file_start, file_size) = seg.file_range();
        (addr >= start && addr < start + size && addr - start < file_size).then(|| addr - start + file_start)
    })
}

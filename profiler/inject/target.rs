//! What the injection reads about its target: /proc/PID/{maps,status,exe} and the ELF of its
//! libc, all untrusted (sizes capped, every address checked against the maps it came with).

use std::io::Read;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSegment, ObjectSymbol};

use super::InjectError;

/// At most this much of a maps file or an ELF file is read.
const MAPS_CAP: u64 = 16 << 20;
const ELF_CAP: u64 = 64 << 20;
/// The library is at most this large.
pub(super) const LIBRARY_CAP: u64 = 256 << 20;

/// One line of /proc/PID/maps.
#[derive(Debug, Clone)]
pub(super) struct Mapping {
    pub start: u64,
    pub end: u64,
    pub exec: bool,
    pub offset: u64,
    /// The path as the process sees it (may end in " (deleted)").
    pub path: String,
}

/// A process's mappings.
pub(super) struct Maps(pub Vec<Mapping>);

impl Maps {
    /// Reads /proc/PID/maps (capped).
    pub fn read(pid: u32) -> std::io::Result<Self> {
        let mut text = String::new();
        std::fs::File::open(format!("/proc/{pid}/maps"))?.take(MAPS_CAP).read_to_string(&mut text)?;
        Ok(Maps(text.lines().filter_map(parse_line).collect()))
    }

    fn file_name(path: &str) -> &str {
        path.rsplit('/').next().unwrap_or(path)
    }

    /// Some mapping's file name is `name`.
    pub fn has_file_named(&self, name: &str) -> bool {
        self.0.iter().any(|m| Self::file_name(&m.path) == name)
    }

    /// Some mapping's file name starts with `prefix`.
    pub fn has_file_prefix(&self, prefix: &str) -> bool {
        self.0.iter().any(|m| Self::file_name(&m.path).starts_with(prefix))
    }

    /// The shared libraries mapped, by name, for a message (at most 20).
    pub fn library_names(&self) -> String {
        let mut names: Vec<&str> =
            self.0.iter().map(|m| Self::file_name(&m.path)).filter(|n| n.contains(".so")).collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            return "no shared libraries".into();
        }
        let more = names.len().saturating_sub(20);
        names.truncate(20);
        let mut s = names.join(", ");
        if more > 0 {
            s.push_str(&format!(" and {more} more"));
        }
        s
    }

    /// The start of the offset-0 mapping of the memfd named `name`.
    pub fn memfd_base(&self, name: &str) -> Option<u64> {
        let wanted = format!("/memfd:{name}");
        self.0.iter().find(|m| m.offset == 0 && m.path.starts_with(&wanted)).map(|m| m.start)
    }
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut f = line.splitn(6, ' ');
    let range = f.next()?;
    let perms = f.next()?;
    let offset = u64::from_str_radix(f.next()?, 16).ok()?;
    let _dev = f.next()?;
    let _inode = f.next()?;
    let path = f.next().unwrap_or("").trim_start().to_string();
    let (a, b) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(a, 16).ok()?,
        end: u64::from_str_radix(b, 16).ok()?,
        exec: perms.as_bytes().get(2) == Some(&b'x'),
        offset,
        path,
    })
}

/// The target's architecture when it is not x86-64 (from its executable's ELF header), None
/// when it is (or cannot be read: the ptrace steps check again).
pub fn non_x86_64(pid: u32) -> Option<String> {
    let mut head = [0u8; 20];
    let mut f = std::fs::File::open(format!("/proc/{pid}/exe")).ok()?;
    f.read_exact(&mut head).ok()?;
    if &head[..4] != b"\x7fELF" {
        return None;
    }
    let class64 = head[4] == 2;
    let machine = u16::from_le_bytes([head[18], head[19]]);
    match (class64, machine) {
        (true, 62) => None,
        (false, 3) => Some("a 32-bit x86 process".into()),
        (_, 183) => Some("an aarch64 process".into()),
        (_, m) => Some(format!("an ELF machine {m} process")),
    }
}

/// The field `key` of /proc/PID/status.
fn status_field(pid: u32, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string())
}

/// At most this much of /proc/PID/environ is read.
const ENVIRON_CAP: u64 = 1 << 20;

/// The values of `keys` in `pid`'s environment as it was at exec (/proc/PID/environ, capped):
/// what the library would have read with `getenv`, read here instead so that it never calls
/// `getenv` on the thread borrowed from the job. A value that cannot travel in the entry
/// point's argument (a newline, over 1 KiB, not UTF-8) is left out.
pub(super) fn environ_values(pid: u32, keys: &[&str]) -> Vec<Option<String>> {
    let mut bytes = Vec::new();
    if let Ok(f) = std::fs::File::open(format!("/proc/{pid}/environ")) {
        let _ = f.take(ENVIRON_CAP).read_to_end(&mut bytes);
    }
    environ_lookup(&bytes, keys)
}

fn environ_lookup(bytes: &[u8], keys: &[&str]) -> Vec<Option<String>> {
    keys.iter()
        .map(|k| {
            bytes
                .split(|b| *b == 0)
                .filter_map(|v| v.strip_prefix(k.as_bytes())?.strip_prefix(b"="))
                .filter_map(|v| std::str::from_utf8(v).ok())
                .rfind(|v| !v.is_empty() && v.len() <= 1024 && !v.contains('\n'))
                .map(String::from)
        })
        .collect()
}

/// Whether `pid` runs under a seccomp filter (mode 2 in /proc/PID/status): the system calls
/// the injection makes in it may be denied by the job's own filter.
pub(super) fn under_seccomp_filter(pid: u32) -> bool {
    status_field(pid, "Seccomp:").is_some_and(|m| m == "2")
}

/// `pid`'s tracer (pid and command name) if it has one.
pub fn tracer_of(pid: u32) -> Option<(u32, String)> {
    let tracer: u32 = status_field(pid, "TracerPid:")?.parse().ok()?;
    if tracer == 0 {
        return None;
    }
    let name = std::fs::read_to_string(format!("/proc/{tracer}/comm")).map(|s| s.trim().to_string());
    Some((tracer, crate::units::escape_text(&name.unwrap_or_else(|_| "?".into())).into_owned()))
}

/// `dlopen` in the target.
#[derive(Debug, Clone)]
pub struct LibcDlopen {
    /// Its address in the target.
    pub addr: u64,
    /// The library it was found in, as the target names it.
    pub library: String,
}

/// The bytes of a file mapped by `pid` (through map_files, which names the very file mapped
/// whatever the mount namespace; else through /proc/PID/root), capped.
fn mapped_file(pid: u32, m: &Mapping) -> std::io::Result<Vec<u8>> {
    let by_range = PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
    let file = std::fs::File::open(&by_range).or_else(|_| {
        let rel = m.path.strip_prefix('/').unwrap_or(&m.path);
        std::fs::File::open(PathBuf::from(format!("/proc/{pid}/root")).join(rel))
    })?;
    let mut bytes = Vec::new();
    file.take(ELF_CAP).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The lowest loadable segment's page-aligned address: what the load base is relative to.
fn first_load(elf: &object::File<'_>) -> u64 {
    elf.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff
}

/// The address of a defined function `name` among `elf`'s dynamic symbols.
fn dynamic_function(elf: &object::File<'_>, name: &str) -> Option<u64> {
    elf.dynamic_symbols()
        .find(|s| !s.is_undefined() && s.address() != 0 && s.name().is_ok_and(|n| n.split('@').next() == Some(name)))
        .map(|s| s.address())
}

/// Finds `dlopen` in the target's libc (glibc ≥ 2.34) or libdl (older), checked to lie in an
/// executable mapping of that same file.
pub fn find_dlopen(pid: u32, maps: &Maps) -> Result<LibcDlopen, InjectError> {
    let is_lib = |p: &str, stem: &str| {
        let n = Maps::file_name(p);
        n.starts_with(&format!("{stem}.so")) || n.starts_with(&format!("{stem}-"))
    };
    let mut looked = Vec::new();
    for stem in ["libc", "libdl"] {
        let Some(base) = maps.0.iter().find(|m| m.offset == 0 && is_lib(&m.path, stem)) else { continue };
        looked.push(base.path.clone());
        let Ok(bytes) = mapped_file(pid, base) else { continue };
        let Ok(elf) = object::File::parse(&*bytes) else { continue };
        let Some(value) = dynamic_function(&elf, "dlopen") else { continue };
        let addr = base.start.wrapping_sub(first_load(&elf)).wrapping_add(value);
        let inside = maps.0.iter().any(|m| m.exec && m.path == base.path && (m.start..m.end).contains(&addr));
        if inside {
            return Ok(LibcDlopen { addr, library: base.path.clone() });
        }
    }
    let what = if looked.is_empty() {
        "no libc.so or libdl.so is mapped".to_string()
    } else {
        format!("{} exports none", crate::units::escape_text(&looked.join(", ")))
    };
    Err(InjectError::NoDlopen { pid, what })
}

/// The entry point's offset from the library's load base (from the library file on this host).
pub fn entry_offset(library: &Path) -> Result<u64, InjectError> {
    let err = |what: String| InjectError::Library { path: library.to_path_buf(), what };
    let bytes = read_library(library)?;
    let elf = object::File::parse(&*bytes).map_err(|e| err(format!("not an ELF shared object: {e}")))?;
    if elf.architecture() != object::Architecture::X86_64 {
        return Err(err("not an x86-64 library".into()));
    }
    let value = dynamic_function(&elf, super::ENTRY).ok_or_else(|| err(format!("it exports no {}", super::ENTRY)))?;
    Ok(value - first_load(&elf))
}

/// The library's bytes (capped).
pub(super) fn read_library(library: &Path) -> Result<Vec<u8>, InjectError> {
    let err = |what: String| InjectError::Library { path: library.to_path_buf(), what };
    let file = std::fs::File::open(library).map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(LIBRARY_CAP + 1).read_to_end(&mut bytes).map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > LIBRARY_CAP {
        return Err(err("larger than 256 MiB".into()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_are_parsed_and_hostile_ones_skipped() {
        let m = parse_line("7f00a000-7f00b000 r-xp 00001000 08:01 42   /usr/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        assert_eq!((m.start, m.end, m.exec, m.offset), (0x7f00a000, 0x7f00b000, true, 0x1000));
        assert_eq!(m.path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert!(parse_line("zz-10 r-xp 0 0 0 x").is_none());
        assert!(parse_line("").is_none());
        let maps = Maps(vec![parse_line("1000-2000 r-xp 00000000 00:01 7 /memfd:ghostprof-inject (deleted)").unwrap()]);
        assert_eq!(maps.memfd_base("ghostprof-inject"), Some(0x1000));
        assert_eq!(maps.memfd_base("other"), None);
    }

    #[test]
    fn environ_values_are_exact_keys_and_safe_for_the_argument() {
        let env = b"CUDA_HOME_X=/no\0CUDA_HOME=/usr/local/cuda-13\0GHOSTPROF_CUPTI_PATH=/a\nb\0";
        let v = environ_lookup(env, &["CUDA_HOME", "GHOSTPROF_CUPTI_PATH", "PATH"]);
        assert_eq!(v, vec![Some("/usr/local/cuda-13".to_string()), None, None]);
    }

    #[test]
    fn this_process_libc_has_dlopen_inside_its_text() {
        let pid = std::process::id();
        let maps = Maps::read(pid).unwrap();
        let found = find_dlopen(pid, &maps).unwrap();
        // SAFETY: looking up our own dlopen to compare.
        let ours = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"dlopen".as_ptr()) } as u64;
        assert_eq!(found.addr, ours, "{}", found.library);
    }
}

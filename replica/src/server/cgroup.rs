//! The container's memory limit and usage from the cgroup (v2 `memory.max`,
//! v1 `memory.limit_in_bytes`), found through `/proc/self/cgroup` and
//! `/proc/self/mountinfo`. "max" or an absurdly large value means no limit.
//! Usage is what the kernel cannot simply drop: the cgroup's usage minus its
//! clean page cache (from `memory.stat`).

use std::path::{Path, PathBuf};

/// Limits above this are treated as "no limit" (v1 reports ~2^63 rounded to pages).
const NO_LIMIT_ABOVE: u64 = 1 << 60;

/// Where the memory controller's files of this process live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupFiles {
    V2 { dir: PathBuf },
    V1 { dir: PathBuf },
}

impl CgroupFiles {
    /// The controller directory of this process, if any.
    pub fn detect() -> Option<CgroupFiles> {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        locate(&cgroup, &mountinfo, Path::new("/"))
    }

    /// The limit in bytes, `None` when unlimited or unreadable.
    pub fn limit(&self) -> Option<u64> {
        let (dir, name) = match self {
            CgroupFiles::V2 { dir } => (dir, "memory.max"),
            CgroupFiles::V1 { dir } => (dir, "memory.limit_in_bytes"),
        };
        parse_limit(&std::fs::read_to_string(dir.join(name)).ok()?)
    }

    /// Usage in bytes without the clean page cache. The cgroup's own usage
    /// (`memory.current`, `memory.usage_in_bytes`) counts every page of the
    /// write-ahead log and snapshots the kernel still caches; the kernel drops
    /// those clean pages before it OOM-kills, so counting them kept shedding on
    /// (and refused honest clients) while the process itself was far below the
    /// limit. An unreadable `memory.stat` counts the whole usage.
    pub fn usage(&self) -> Option<u64> {
        let (dir, name, v1) = match self {
            CgroupFiles::V2 { dir } => (dir, "memory.current", false),
            CgroupFiles::V1 { dir } => (dir, "memory.usage_in_bytes", true),
        };
        let total: u64 = std::fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok()?;
        let clean_cache =
            std::fs::read_to_string(dir.join("memory.stat")).map(|s| clean_page_cache(&s, v1)).unwrap_or(0);
        Some(total.saturating_sub(clean_cache))
    }
}

/// Clean page cache in bytes from a `memory.stat`: file pages that are not
/// shared memory (tmpfs, which cannot be dropped without swap), not dirty and
/// not under writeback. v1 reads the hierarchical `total_*` counters, v2 its
/// own (which already include descendants). Missing counters count as zero.
pub fn clean_page_cache(stat: &str, v1: bool) -> u64 {
    let field = |name: &str| -> u64 {
        stat.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let [cache, shmem, dirty, writeback] = if v1 {
        ["total_cache", "total_shmem", "total_dirty", "total_writeback"]
    } else {
        ["file", "shmem", "file_dirty", "file_writeback"]
    };
    field(cache).saturating_sub(field(shmem) + field(dirty) + field(writeback))
}

/// Parses a limit file's content: a number of bytes, or "max".
pub fn parse_limit(s: &str) -> Option<u64> {
    let s = s.trim();
    if s == "max" {
        return None;
    }
    s.parse::<u64>().ok().filter(|v| *v > 0 && *v < NO_LIMIT_ABOVE)
}

/// Finds the memory controller directory from the contents of
/// `/proc/self/cgroup` and `/proc/self/mountinfo` (`root` prefixes the
/// resulting path, for tests).
pub fn locate(cgroup: &str, mountinfo: &str, root: &Path) -> Option<CgroupFiles> {
    // v1 memory controller line "N:...memory...:/path" wins when present.
    let mut v1_path = None;
    let mut v2_path = None;
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if ctrl.is_empty() {
            v2_path = Some(path.to_string());
        } else if ctrl.split(',').any(|c| c == "memory") {
            v1_path = Some(path.to_string());
        }
    }
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        if fields.len() < 5 || fields.len() < sep + 3 {
            continue;
        }
        let (mount_root, mount_point) = (fields[3], fields[4]);
        let fstype = fields[sep + 1];
        let superopts = fields[sep + 3..].join(" ");
        let join = |path: &str| -> PathBuf {
            // The cgroup path is relative to the hierarchy root; the mount may show a sub-tree.
            let rel = path.strip_prefix(mount_root).unwrap_or(path);
            let mut p = root.join(mount_point.trim_start_matches('/'));
            for c in rel.split('/').filter(|c| !c.is_empty()) {
                p.push(c);
            }
            p
        };
        if let Some(path) = &v1_path {
            if fstype == "cgroup" && superopts.split(',').any(|o| o == "memory") {
                return Some(CgroupFiles::V1 { dir: join(path) });
            }
        }
        if v1_path.is_none() {
            if let Some(path) = &v2_path {
                if fstype == "cgroup2" {
                    return Some(CgroupFiles::V2 { dir: join(path) });
                }
            }
        }
    }
    None
}

/// Resident set size of this process from `/proc/self/statm` (fallback usage when there is no cgroup).
pub fn process_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Caps glibc's malloc arenas at two. Its default (eight per core) spreads
/// the short-lived buffers of many gRPC calls over many arenas whose freed
/// memory stays resident, which let a client flood push RSS past the limit
/// while the accounted buffers stayed within budget. Call before starting threads.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::os::raw::c_int, value: std::os::raw::c_int) -> std::os::raw::c_int;
        }
        const M_ARENA_MAX: std::os::raw::c_int = -8;
        // SAFETY: mallopt only adjusts allocator parameters; it is called before other threads exist.
        unsafe {
            mallopt(M_ARENA_MAX, 2);
        }
    }
}

/// Hands freed heap pages back to the kernel. glibc keeps freed memory in
/// its arenas, so after a flood the RSS (or cgroup usage) would stay above
/// the shedding threshold although the buffers were released; the memory
/// sampler calls this while usage is above the threshold. A no-op on other
/// C libraries (musl returns memory on its own).
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: malloc_trim only walks glibc's own arenas; it takes no pointers from us.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2_CGROUP: &str = "0::/kubepods/burstable/pod1/abc\n";
    const V2_MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw,nsdelegate
";
    const V1_CGROUP: &str = "\
12:pids:/docker/x
4:memory:/docker/x
1:name=systemd:/docker/x
0::/
";
    const V1_MOUNTINFO: &str = "\
40 31 0:35 /docker/x /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
41 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";

    #[test]
    fn limits_parse() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("268435456\n"), Some(268435456));
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("garbage"), None);
        assert_eq!(parse_limit("0"), None);
    }

    #[test]
    fn v2_located() {
        let f = locate(V2_CGROUP, V2_MOUNTINFO, Path::new("/root")).unwrap();
        assert_eq!(f, CgroupFiles::V2 { dir: PathBuf::from("/root/sys/fs/cgroup/kubepods/burstable/pod1/abc") });
    }

    #[test]
    fn v1_located_with_subtree_mount() {
        let f = locate(V1_CGROUP, V1_MOUNTINFO, Path::new("/")).unwrap();
        assert_eq!(f, CgroupFiles::V1 { dir: PathBuf::from("/sys/fs/cgroup/memory") });
    }

    #[test]
    fn fixture_files_read() {
        let dir = std::env::temp_dir().join(format!("pbft-cgroup-{}", std::process::id()));
        let cg = dir.join("sys/fs/cgroup/kubepods/burstable/pod1/abc");
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::write(cg.join("memory.max"), "134217728\n").unwrap();
        std::fs::write(cg.join("memory.current"), "1000\n").unwrap();
        let f = locate(V2_CGROUP, V2_MOUNTINFO, &dir).unwrap();
        assert_eq!(f.limit(), Some(134217728));
        assert_eq!(f.usage(), Some(1000), "no memory.stat: the whole usage counts");
        std::fs::write(cg.join("memory.stat"), "anon 300\nfile 700\nshmem 100\nfile_dirty 50\n").unwrap();
        assert_eq!(f.usage(), Some(450), "the clean page cache (700-100-50) is left out");
        std::fs::write(cg.join("memory.stat"), "file 5000\n").unwrap();
        assert_eq!(f.usage(), Some(0), "never below zero");
        std::fs::write(cg.join("memory.max"), "max\n").unwrap();
        assert_eq!(f.limit(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clean_page_cache_by_version() {
        // Read off a cgroup v1 memory.stat of this machine (own and hierarchical counters).
        let v1 = "cache 9916416\nshmem 9580544\ndirty 20480\nwriteback 0\ntotal_cache 1310769152\n\
                  total_rss 430407680\ntotal_shmem 9580544\ntotal_dirty 268283904\ntotal_writeback 0\n";
        assert_eq!(clean_page_cache(v1, true), 1310769152 - 9580544 - 268283904);
        let v2 = "anon 1000\nfile 8000\nshmem 1000\nfile_dirty 500\nfile_writeback 500\ninactive_file 3000\n";
        assert_eq!(clean_page_cache(v2, false), 6000);
        assert_eq!(clean_page_cache(v2, true), 0, "v1 counters are absent from a v2 file");
        assert_eq!(clean_page_cache("file garbage\nshmem\n", false), 0);
    }

    #[test]
    fn no_memory_controller() {
        assert_eq!(locate("3:cpu:/x\n", V1_MOUNTINFO, Path::new("/")), None);
    }
}

//! What the node is ([`Capabilities`]) and its live load ([`Status`]), as the wire reports them.
//!
//! [`collect`] describes the machine once: architecture, OS, CPUs, memory, the filesystem that
//! holds the data dir, the board, and the accelerators under `/dev`. Files are read relative to a
//! root directory ([`collect_from`]) so tests can point it at a fake tree; values that come from
//! syscalls (kernel, hostname, CPUs and memory through `sysinfo`, the disk through `statvfs`)
//! always describe the running machine. Missing or unreadable files give an empty or `None`
//! field, never an error: a node reports what it can find.
//!
//! The disk is the filesystem that holds the data dir, asked directly ([`disk_space`]): not
//! looked up in a list of mounts, which leaves out tmpfs and network mounts and would
//! measure a data dir on one of those as the filesystem below it.
//!
//! [`StatusSampler`] is the cheap periodic part. It refreshes CPU usage, memory and the data
//! dir's filesystem only, never the process list: on a 512 MB Pi the process table alone would
//! cost more than the rest of the daemon.
//!
//! Change detection: [`Capabilities`] holds no timestamps and nothing live except
//! `disk_free_bytes`, so the caller re-sends it when [`same_identity`] says it changed; free disk
//! travels in every [`Status`] anyway.
//!
//! This module is read-only: it never writes, creates or locks a file, and never touches the
//! network.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use edge_proto::{Accelerator, AcceleratorKind, Capabilities, Label, List, Location, Status, text};
pub use node_core::session::same_identity;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, System};

/// The wire bound of `Capabilities::accelerators`.
const MAX_ACCELERATORS: usize = 16;

/// Read limits for the files we parse. Real ones are far smaller (cpuinfo of a 256-thread server
/// is ~300 KiB); the limits only keep a strange file from costing memory.
const CPUINFO_MAX_BYTES: u64 = 1024 * 1024;
const SMALL_FILE_MAX_BYTES: u64 = 16 * 1024;

/// Describes this machine. `data_dir` need not exist yet: the filesystem that will hold it is
/// measured. `labels` and `location` come from the config and are passed through.
pub fn collect(
    data_dir: &Path,
    labels: List<Label, 32>,
    location: Option<Location>,
) -> Capabilities {
    collect_from(Path::new("/"), data_dir, labels, location)
}

/// [`collect`] with the files (`etc/os-release`, `proc/cpuinfo`, the device tree, `dev`,
/// `sys/class`) read under `root` instead of `/`. Values read through sysinfo (kernel, hostname,
/// CPU count and model, memory) and statvfs (disk) still describe the running machine;
/// `proc/cpuinfo` under `root` is only the fallback when sysinfo has no CPU model or count.
pub fn collect_from(
    root: &Path,
    data_dir: &Path,
    labels: List<Label, 32>,
    location: Option<Location>,
) -> Capabilities {
    let system = System::new().ok().map(|mut s| {
        // The CPU list (with each CPU's brand) and total RAM; nothing else.
        s.refresh_cpu_list(CpuRefreshKind::nothing());
        s.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        s
    });
    let sysinfo_cpus = system.as_ref().map_or(0, |s| s.cpus().len());
    let sysinfo_model = system
        .as_ref()
        .and_then(|s| s.cpus().first())
        .map(|cpu| cpu.brand().trim().to_owned())
        .filter(|brand| !brand.is_empty());

    // /proc/cpuinfo only when sysinfo lacks something, so the common case reads it once.
    let cpuinfo = if sysinfo_cpus == 0 || sysinfo_model.is_none() {
        read_text(&root.join("proc/cpuinfo"), CPUINFO_MAX_BYTES).unwrap_or_default()
    } else {
        String::new()
    };
    let cpus = if sysinfo_cpus > 0 {
        sysinfo_cpus
    } else {
        match count_cpuinfo_processors(&cpuinfo) {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    };
    let cpu_model = sysinfo_model
        .or_else(|| cpu_model_from_cpuinfo(&cpuinfo))
        .unwrap_or_else(|| "unknown".to_owned());

    let disk = disk_space(data_dir).unwrap_or_default();

    Capabilities {
        arch: text(std::env::consts::ARCH),
        os: text(std::env::consts::OS),
        os_version: text(&os_version(root).unwrap_or_default()),
        kernel: text(&System::kernel_version().unwrap_or_default()),
        hostname: text(&System::host_name().unwrap_or_default()),
        cpus: u16::try_from(cpus).unwrap_or(u16::MAX),
        cpu_model: text(&cpu_model),
        memory_bytes: system.as_ref().map_or(0, System::total_memory),
        disk_bytes: disk.total_bytes,
        disk_free_bytes: disk.free_bytes,
        accelerators: accelerators(root),
        board: board_model(root).map(|model| text(&model)),
        labels,
        location,
    }
}

/// Why a [`StatusSampler`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// sysinfo cannot read CPU or memory counters on this platform. Retrying will not help.
    #[error("system statistics are unavailable on this platform: {0}")]
    Unavailable(#[from] sysinfo::Error),
}

/// Samples the node's live load for [`Status`]. Holds a sysinfo `System` that is only ever
/// refreshed for CPU usage and RAM; the data dir's free space is one `statvfs` per sample.
#[derive(Debug)]
pub struct StatusSampler {
    system: System,
    data_dir: PathBuf,
}

impl StatusSampler {
    /// Starts sampling. CPU usage is measured from here: the first [`sample`](Self::sample)
    /// covers the time since `new` (since boot if taken within 200 ms of it, see `sample`).
    pub fn new(data_dir: &Path) -> Result<Self, SamplerError> {
        let mut system = System::new()?;
        system.refresh_cpu_usage();
        Ok(Self {
            system,
            data_dir: data_dir.to_owned(),
        })
    }

    /// Memory and disk right now, for admission. Refreshes only what it reads.
    pub fn measure(&mut self) -> node_core::admission::Measured {
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        node_core::admission::Measured {
            memory_total: self.system.total_memory(),
            memory_available: self.system.available_memory(),
            disk_free: disk_space(&self.data_dir).unwrap_or_default().free_bytes,
        }
    }

    /// The load now. `cpu_percent` is the whole machine's busy time since the previous sample,
    /// 0 to 100. sysinfo ignores CPU refreshes less than 200 ms apart, so samples taken closer
    /// than that repeat the previous figure; at a status interval of a second or more this
    /// never matters.
    pub fn sample(&mut self) -> Status {
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let cpu = self.system.global_cpu_usage();
        Status {
            cpu_percent: if cpu.is_finite() {
                cpu.clamp(0.0, 100.0)
            } else {
                0.0
            },
            memory_used_bytes: self.system.used_memory(),
            disk_free_bytes: disk_space(&self.data_dir).unwrap_or_default().free_bytes,
            uptime_secs: System::uptime().unwrap_or(0),
        }
    }

    /// `status` as a share of the machine: CPU busy and memory used, each 0 to 1, as the
    /// routing model takes a backend host's load.
    pub fn host_load(&self, status: &Status) -> node_core::proxy::balance::HostLoad {
        let total = self.system.total_memory();
        let memory = if total == 0 {
            0.0
        } else {
            (status.memory_used_bytes as f64 / total as f64).clamp(0.0, 1.0) as f32
        };
        node_core::proxy::balance::HostLoad {
            cpu: (status.cpu_percent / 100.0).clamp(0.0, 1.0),
            memory,
        }
    }
}

/// Size and free space (for unprivileged users) of one filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskSpace {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// The space of the filesystem holding `dir`, or its nearest existing ancestor if `dir` is
/// not there yet, from `statvfs` on that directory itself. `None` if not even an ancestor can
/// be asked.
pub fn disk_space(dir: &Path) -> Option<DiskSpace> {
    let dir = nearest_existing_canonical(dir)?;
    let stat = nix::sys::statvfs::statvfs(&dir).ok()?;
    // The counters' width differs by target (32 bits on some ARM C libraries).
    #[allow(clippy::useless_conversion)]
    let (blocks, available, block_size) = (
        u64::from(stat.blocks()),
        u64::from(stat.blocks_available()),
        u64::from(stat.fragment_size()),
    );
    Some(DiskSpace {
        total_bytes: blocks.saturating_mul(block_size),
        free_bytes: available.saturating_mul(block_size),
    })
}

/// `path` made absolute and canonical, or else its nearest ancestor that exists.
fn nearest_existing_canonical(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    absolute.ancestors().find_map(|p| p.canonicalize().ok())
}

/// `PRETTY_NAME` from os-release (`etc/os-release`, else `usr/lib/os-release`), or else `NAME`
/// and `VERSION_ID`.
fn os_version(root: &Path) -> Option<String> {
    ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|rel| read_text(&root.join(rel), SMALL_FILE_MAX_BYTES))
        .and_then(|text| parse_os_release(&text))
}

fn parse_os_release(text: &str) -> Option<String> {
    let mut pretty = None;
    let mut name = None;
    let mut version = None;
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let value = unquote_shell(value.trim());
        match key.trim() {
            "PRETTY_NAME" => pretty = Some(value),
            "NAME" => name = Some(value),
            "VERSION_ID" => version = Some(value),
            _ => {}
        }
    }
    let fallback = || match (name, version) {
        (Some(n), Some(v)) if !v.is_empty() => Some(format!("{n} {v}")),
        (n, _) => n,
    };
    pretty
        .filter(|p| !p.is_empty())
        .or_else(fallback)
        .filter(|s| !s.is_empty())
}

/// Undoes the shell quoting os-release allows: `"..."` with `\` escapes, `'...'`, or bare.
fn unquote_shell(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match (c, chars.clone().next()) {
                ('\\', Some(next @ ('"' | '\\' | '$' | '`'))) => {
                    out.push(next);
                    chars.next();
                }
                _ => out.push(c),
            }
        }
        out
    } else if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        inner.to_owned()
    } else {
        value.to_owned()
    }
}

/// The board model the firmware reports through the device tree, e.g. `Raspberry Pi Zero 2 W
/// Rev 1.0`. The file is NUL-terminated.
fn board_model(root: &Path) -> Option<String> {
    [
        "proc/device-tree/model",
        "sys/firmware/devicetree/base/model",
    ]
    .iter()
    .filter_map(|rel| read_text(&root.join(rel), SMALL_FILE_MAX_BYTES))
    .map(|model| {
        let model = model.split('\0').next().unwrap_or_default();
        model.trim().to_owned()
    })
    .find(|model| !model.is_empty())
}

/// The CPU model from /proc/cpuinfo. x86 and 32-bit ARM kernels write `model name`; older ARM
/// kernels `Processor`; MIPS `cpu model`; 64-bit ARM kernels often only `Hardware` (the SoC,
/// e.g. `BCM2835`) or `Model` (the board). The first of these present wins.
fn cpu_model_from_cpuinfo(cpuinfo: &str) -> Option<String> {
    const KEYS: [&str; 5] = ["model name", "Processor", "cpu model", "Hardware", "Model"];
    let mut found: [Option<&str>; KEYS.len()] = [None; KEYS.len()];
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if let Some(i) = KEYS.iter().position(|k| *k == key.trim())
            && found[i].is_none()
            && !value.is_empty()
        {
            found[i] = Some(value);
        }
    }
    found.into_iter().flatten().next().map(str::to_owned)
}

/// The number of `processor : N` entries in /proc/cpuinfo.
fn count_cpuinfo_processors(cpuinfo: &str) -> usize {
    cpuinfo
        .lines()
        .filter(|line| {
            line.split_once(':')
                .is_some_and(|(key, _)| key.trim() == "processor")
        })
        .count()
}

/// How an accelerator's device node is recognised and named.
struct DeviceClass {
    /// The directory under `dev`, `""` for `dev` itself.
    dir: &'static str,
    /// The node's name is this prefix followed by decimal digits only, so `nvidia0` is a GPU
    /// but `nvidiactl` and `nvidia-uvm` are not.
    prefix: &'static str,
    kind: AcceleratorKind,
    name: NameSource,
}

enum NameSource {
    /// The device node's own name, e.g. `gpiochip0`.
    NodeName,
    /// The kernel driver, from `sys/class/<class>/<node>/device/uevent`, e.g. `v3d`, `i915`.
    Driver { class: &'static str },
    /// A sysfs attribute, `sys/class/<class>/<node>/<attr>`, e.g. a camera's name.
    Attr {
        class: &'static str,
        attr: &'static str,
    },
}

const DEVICE_CLASSES: &[DeviceClass] = &[
    DeviceClass {
        dir: "dri",
        prefix: "renderD",
        kind: AcceleratorKind::Gpu,
        name: NameSource::Driver { class: "drm" },
    },
    DeviceClass {
        dir: "",
        prefix: "nvidia",
        kind: AcceleratorKind::Gpu,
        name: NameSource::NodeName,
    },
    // Coral Edge TPU (PCIe/M.2).
    DeviceClass {
        dir: "",
        prefix: "apex_",
        kind: AcceleratorKind::Npu,
        name: NameSource::NodeName,
    },
    DeviceClass {
        dir: "",
        prefix: "hailo",
        kind: AcceleratorKind::Npu,
        name: NameSource::NodeName,
    },
    // The kernel's compute accelerator subsystem (Intel NPU, Habana, ...).
    DeviceClass {
        dir: "accel",
        prefix: "accel",
        kind: AcceleratorKind::Npu,
        name: NameSource::Driver { class: "accel" },
    },
    DeviceClass {
        dir: "",
        prefix: "video",
        kind: AcceleratorKind::Video,
        name: NameSource::Attr {
            class: "video4linux",
            attr: "name",
        },
    },
    DeviceClass {
        dir: "",
        prefix: "gpiochip",
        kind: AcceleratorKind::Gpio,
        name: NameSource::NodeName,
    },
];

/// The accelerators under `<root>/dev`, GPUs first, then NPUs, video, GPIO, each in numeric
/// order, cut to the wire's 16. The order puts the scarce devices first, so a Pi's dozen video
/// codec nodes never push out its GPU.
fn accelerators(root: &Path) -> List<Accelerator, 16> {
    let dev = root.join("dev");
    let mut found: Vec<(Accelerator, String)> = Vec::new();
    let mut dirs: Vec<&str> = DEVICE_CLASSES.iter().map(|c| c.dir).collect();
    dirs.sort_unstable();
    dirs.dedup();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dev.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(node) = file_name.to_str() else {
                continue;
            };
            let Some(class) = DEVICE_CLASSES
                .iter()
                .find(|c| c.dir == dir && is_prefix_and_number(node, c.prefix))
            else {
                continue;
            };
            let path = Path::new("/dev").join(dir).join(node);
            let path = path.to_string_lossy();
            let name = device_name(root, node, &class.name);
            found.push((
                Accelerator {
                    kind: class.kind,
                    name: text(&name),
                    path: text(&path),
                },
                path.into_owned(),
            ));
        }
    }
    found.sort_by(|(a, a_path), (b, b_path)| {
        (kind_rank(a.kind), natural_key(a_path)).cmp(&(kind_rank(b.kind), natural_key(b_path)))
    });
    let mut out = List::new();
    for (accelerator, _) in found.into_iter().take(MAX_ACCELERATORS) {
        // At most MAX_ACCELERATORS (the list's capacity) are taken, so every push fits.
        let _ = out.push(accelerator);
    }
    out
}

fn is_prefix_and_number(node: &str, prefix: &str) -> bool {
    node.strip_prefix(prefix)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn device_name(root: &Path, node: &str, source: &NameSource) -> String {
    let sys = |class: &str, rel: &str| {
        read_text(
            &root.join("sys/class").join(class).join(node).join(rel),
            SMALL_FILE_MAX_BYTES,
        )
    };
    let name = match source {
        NameSource::NodeName => None,
        NameSource::Driver { class } => sys(class, "device/uevent").and_then(|uevent| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix("DRIVER="))
                .map(|d| d.trim().to_owned())
        }),
        NameSource::Attr { class, attr } => sys(class, attr).map(|v| v.trim().to_owned()),
    };
    name.filter(|n| !n.is_empty())
        .unwrap_or_else(|| node.to_owned())
}

fn kind_rank(kind: AcceleratorKind) -> u8 {
    match kind {
        AcceleratorKind::Gpu => 0,
        AcceleratorKind::Npu => 1,
        AcceleratorKind::Video => 2,
        AcceleratorKind::Gpio => 3,
        AcceleratorKind::Other => 4,
    }
}

/// Sorts `video2` before `video10`: the path without its trailing digits, then their value.
fn natural_key(path: &str) -> (&str, u128, &str) {
    let stem = path.trim_end_matches(|c: char| c.is_ascii_digit());
    let digits = &path[stem.len()..];
    (stem, digits.parse().unwrap_or(u128::MAX), digits)
}

/// Reads at most `max` bytes of a text file, lossily decoded. `None` if it cannot be read.
fn read_text(path: &Path, max: u64) -> Option<String> {
    let mut bytes = Vec::new();
    File::open(path)
        .ok()?
        .take(max)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A directory tree standing in for `/`, removed on drop.
    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new(name: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "edge-node-caps-{}-{}-{name}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create fake root");
            Self(dir)
        }

        fn file(&self, rel: &str, contents: impl AsRef<[u8]>) -> &Self {
            let path = self.0.join(rel);
            let parent = path.parent().expect("a file path has a parent");
            std::fs::create_dir_all(parent).expect("create parent dirs");
            std::fs::write(&path, contents).expect("write fake file");
            self
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn no_labels() -> List<Label, 32> {
        List::new()
    }

    /// A data dir on a real disk (the crate's source tree), not yet existing, so the nearest
    /// ancestor is measured.
    fn real_data_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("does-not-exist/edge-node")
    }

    #[test]
    fn os_release_pretty_name() {
        let root = FakeRoot::new("os-release");
        root.file(
            "etc/os-release",
            "# comment\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n\
             PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n",
        );
        assert_eq!(
            os_version(&root.0).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn os_release_quoting_and_fallbacks() {
        assert_eq!(
            parse_os_release("PRETTY_NAME='Alpine Linux v3.20'").as_deref(),
            Some("Alpine Linux v3.20")
        );
        assert_eq!(
            parse_os_release(r#"PRETTY_NAME="Say \"hi\" \\ \$HOME""#).as_deref(),
            Some(r#"Say "hi" \ $HOME"#)
        );
        assert_eq!(
            parse_os_release("PRETTY_NAME=Bare").as_deref(),
            Some("Bare")
        );
        assert_eq!(
            parse_os_release("NAME=\"Buildroot\"\nVERSION_ID=2024.02\n").as_deref(),
            Some("Buildroot 2024.02")
        );
        assert_eq!(
            parse_os_release("NAME=Linux\nPRETTY_NAME=\"\"").as_deref(),
            Some("Linux")
        );
        assert_eq!(parse_os_release(""), None);
        assert_eq!(parse_os_release("garbage\n\0\u{1}=\n"), None);
    }

    #[test]
    fn os_release_falls_back_to_usr_lib() {
        let root = FakeRoot::new("usr-lib-os-release");
        root.file("usr/lib/os-release", "PRETTY_NAME=\"Fedora Linux 41\"\n");
        assert_eq!(os_version(&root.0).as_deref(), Some("Fedora Linux 41"));
    }

    #[test]
    fn board_model_trims_nul() {
        let root = FakeRoot::new("board-proc");
        root.file("proc/device-tree/model", b"Raspberry Pi Zero 2 W Rev 1.0\0");
        assert_eq!(
            board_model(&root.0).as_deref(),
            Some("Raspberry Pi Zero 2 W Rev 1.0")
        );

        let root = FakeRoot::new("board-sys");
        root.file(
            "sys/firmware/devicetree/base/model",
            b"Raspberry Pi 4 Model B Rev 1.4\0\0",
        );
        assert_eq!(
            board_model(&root.0).as_deref(),
            Some("Raspberry Pi 4 Model B Rev 1.4")
        );

        let root = FakeRoot::new("board-empty");
        root.file("proc/device-tree/model", b"\0");
        assert_eq!(board_model(&root.0), None);
    }

    #[test]
    fn huge_board_model_is_bounded_and_cut_to_the_wire() {
        let root = FakeRoot::new("board-huge");
        root.file("proc/device-tree/model", "é".repeat(100_000));
        let model = board_model(&root.0).expect("has a model");
        assert!(
            model.len() as u64 <= SMALL_FILE_MAX_BYTES,
            "read is bounded"
        );
        let caps = collect_from(&root.0, &real_data_dir(), no_labels(), None);
        let board = caps.board.expect("board reported");
        assert!(
            board.len() <= 96 && board.len() >= 94,
            "cut on a char boundary"
        );
    }

    #[test]
    fn cpuinfo_models() {
        let x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz\n\n\
                   processor\t: 1\nmodel name\t: Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz\n";
        assert_eq!(
            cpu_model_from_cpuinfo(x86).as_deref(),
            Some("Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz")
        );
        assert_eq!(count_cpuinfo_processors(x86), 2);

        // A Pi Zero 2 W on a 64-bit kernel: no model name.
        let pi = "processor\t: 0\nBogoMIPS\t: 38.40\nFeatures\t: fp asimd evtstrm crc32 cpuid\n\
                  CPU implementer\t: 0x41\nCPU part\t: 0xd03\n\n\
                  processor\t: 1\nCPU part\t: 0xd03\n\n\
                  Hardware\t: BCM2835\nRevision\t: 902120\nSerial\t\t: 00000000deadbeef\n\
                  Model\t\t: Raspberry Pi Zero 2 W Rev 1.0\n";
        assert_eq!(cpu_model_from_cpuinfo(pi).as_deref(), Some("BCM2835"));
        assert_eq!(count_cpuinfo_processors(pi), 2);

        let only_model = "processor\t: 0\nModel\t\t: Raspberry Pi Zero 2 W Rev 1.0\n";
        assert_eq!(
            cpu_model_from_cpuinfo(only_model).as_deref(),
            Some("Raspberry Pi Zero 2 W Rev 1.0")
        );

        let armv7 =
            "Processor\t: ARMv7 Processor rev 4 (v7l)\nprocessor\t: 0\nHardware\t: BCM2709\n";
        assert_eq!(
            cpu_model_from_cpuinfo(armv7).as_deref(),
            Some("ARMv7 Processor rev 4 (v7l)")
        );
        assert_eq!(cpu_model_from_cpuinfo(""), None);
        assert_eq!(cpu_model_from_cpuinfo("model name\t:   \n"), None);
    }

    #[test]
    fn accelerators_found_and_named() {
        let root = FakeRoot::new("accel");
        root.file("dev/dri/renderD128", "")
            .file("dev/dri/card0", "")
            .file(
                "sys/class/drm/renderD128/device/uevent",
                "DRIVER=v3d\nOF_NAME=v3d\n",
            )
            .file("dev/apex_0", "")
            .file("dev/hailo0", "")
            .file("dev/accel/accel0", "")
            .file("dev/video0", "")
            .file("sys/class/video4linux/video0/name", "unicam-image\n")
            .file("dev/video10", "")
            .file("dev/gpiochip0", "")
            .file("dev/nvidia0", "")
            .file("dev/nvidiactl", "")
            .file("dev/nvidia-uvm", "")
            .file("dev/nvidia-modeset", "")
            .file("dev/video", "")
            .file("dev/gpiochip", "")
            .file("dev/hailo_ctl", "")
            .file("dev/null", "")
            .file("dev/sda1", "");
        let found = accelerators(&root.0);
        let got: Vec<(AcceleratorKind, &str, &str)> = found
            .iter()
            .map(|a| (a.kind, a.name.as_str(), a.path.as_str()))
            .collect();
        use AcceleratorKind::*;
        assert_eq!(
            got,
            [
                (Gpu, "v3d", "/dev/dri/renderD128"),
                (Gpu, "nvidia0", "/dev/nvidia0"),
                (Npu, "accel0", "/dev/accel/accel0"),
                (Npu, "apex_0", "/dev/apex_0"),
                (Npu, "hailo0", "/dev/hailo0"),
                (Video, "unicam-image", "/dev/video0"),
                (Video, "video10", "/dev/video10"),
                (Gpio, "gpiochip0", "/dev/gpiochip0"),
            ]
        );
        assert_eq!(
            got.iter().filter(|(k, ..)| *k == Gpu).count(),
            2,
            "nvidiactl, nvidia-uvm and nvidia-modeset are not GPUs"
        );
    }

    #[test]
    fn accelerators_capped_at_sixteen_scarce_kinds_first() {
        let root = FakeRoot::new("accel-cap");
        for i in 0..20 {
            root.file(&format!("dev/video{i}"), "");
        }
        root.file("dev/gpiochip0", "")
            .file("dev/dri/renderD128", "");
        let found = accelerators(&root.0);
        assert_eq!(found.len(), 16);
        assert_eq!(found[0].kind, AcceleratorKind::Gpu, "the GPU is kept");
        assert_eq!(
            found[0].name.as_str(),
            "renderD128",
            "no driver info: node name"
        );
        let videos: Vec<&str> = found[1..].iter().map(|a| a.path.as_str()).collect();
        let expected: Vec<String> = (0..15).map(|i| format!("/dev/video{i}")).collect();
        assert_eq!(videos, expected, "numeric order: video2 before video10");
    }

    #[test]
    fn accelerators_are_stable() {
        let root = FakeRoot::new("accel-stable");
        for name in ["video3", "gpiochip1", "video1", "hailo0", "gpiochip0"] {
            root.file(&format!("dev/{name}"), "");
        }
        assert_eq!(accelerators(&root.0), accelerators(&root.0));
    }

    #[test]
    fn missing_files_give_empty_not_errors() {
        let root = FakeRoot::new("empty");
        assert_eq!(os_version(&root.0), None);
        assert_eq!(board_model(&root.0), None);
        assert!(accelerators(&root.0).is_empty());
        let caps = collect_from(&root.0, &real_data_dir(), no_labels(), None);
        assert_eq!(caps.os_version.as_str(), "");
        assert_eq!(caps.board, None);
        assert!(caps.accelerators.is_empty());
        // A root that does not exist at all is the same.
        let caps = collect_from(&root.0.join("nope"), &real_data_dir(), no_labels(), None);
        assert!(caps.accelerators.is_empty());
    }

    #[test]
    fn collect_from_fake_root() {
        let root = FakeRoot::new("collect");
        root.file("etc/os-release", "PRETTY_NAME=\"Raspberry Pi OS Lite\"\n")
            .file("proc/device-tree/model", b"Raspberry Pi Zero 2 W Rev 1.0\0")
            .file("dev/gpiochip0", "");
        let mut labels = no_labels();
        labels
            .push(Label {
                key: text("site"),
                value: text("berlin"),
            })
            .expect("one label fits");
        let location = Some(Location {
            lat: 52.52,
            lon: 13.405,
            alt_m: None,
        });
        let caps = collect_from(&root.0, &real_data_dir(), labels.clone(), location);
        assert_eq!(caps.os_version.as_str(), "Raspberry Pi OS Lite");
        assert_eq!(
            caps.board.as_ref().map(|b| b.as_str()),
            Some("Raspberry Pi Zero 2 W Rev 1.0")
        );
        assert_eq!(caps.accelerators.len(), 1);
        assert_eq!(caps.labels, labels);
        assert_eq!(caps.location, location);
    }

    #[test]
    fn collect_on_this_machine() {
        let caps = collect(&real_data_dir(), no_labels(), None);
        assert_eq!(caps.arch.as_str(), std::env::consts::ARCH);
        assert_eq!(caps.os.as_str(), std::env::consts::OS);
        assert!(caps.cpus >= 1);
        assert!(!caps.cpu_model.is_empty());
        assert!(caps.memory_bytes > 0);
        assert!(
            caps.disk_bytes > 0,
            "the source tree's filesystem is measured"
        );
        assert!(caps.disk_free_bytes <= caps.disk_bytes);
        assert!(!caps.kernel.is_empty());
        // What we build decodes on the other side: every field is within its wire bound.
        let frame = edge_proto::encode(&edge_proto::NodeMsg::Capabilities(Box::new(caps.clone())));
        let body = frame.get(4..).expect("a frame has a 4-byte length prefix");
        let decoded: edge_proto::NodeMsg = edge_proto::decode(body).expect("decodes");
        assert_eq!(decoded, edge_proto::NodeMsg::Capabilities(Box::new(caps)));
    }

    #[test]
    fn the_temp_dir_is_measured_whatever_its_filesystem() {
        // Often a tmpfs, which no list of "real" disks includes: asked directly, it has a size.
        let caps = collect(&std::env::temp_dir(), no_labels(), None);
        assert!(caps.disk_bytes > 0);
        assert!(caps.disk_free_bytes <= caps.disk_bytes);
    }

    #[test]
    fn collect_twice_is_the_same_identity() {
        let a = collect(&real_data_dir(), no_labels(), None);
        let b = collect(&real_data_dir(), no_labels(), None);
        assert!(same_identity(&a, &b), "{a:?}\n{b:?}");
    }

    #[test]
    fn same_identity_ignores_only_disk_free() {
        let a = collect(&real_data_dir(), no_labels(), None);
        let mut b = a.clone();
        b.disk_free_bytes = b.disk_free_bytes.wrapping_add(4096);
        assert!(same_identity(&a, &b));
        assert_ne!(a, b);

        let mut c = a.clone();
        c.labels
            .push(Label {
                key: text("site"),
                value: text("berlin"),
            })
            .expect("fits");
        assert!(!same_identity(&a, &c));

        let mut d = a.clone();
        d.location = Some(Location {
            lat: 1.0,
            lon: 2.0,
            alt_m: None,
        });
        assert!(!same_identity(&a, &d));

        let mut e = a.clone();
        e.disk_bytes = e.disk_bytes.wrapping_add(1);
        assert!(!same_identity(&a, &e));
    }

    #[test]
    fn nearest_existing_ancestor_is_used() {
        let root = FakeRoot::new("ancestor");
        let missing = root.0.join("a/b/c");
        let found = nearest_existing_canonical(&missing).expect("the fake root exists");
        assert_eq!(found, root.0.canonicalize().expect("canonical"));
    }

    #[test]
    fn status_sampler_samples() {
        let mut sampler = StatusSampler::new(&real_data_dir()).expect("sysinfo works on Linux");
        for _ in 0..2 {
            let status = sampler.sample();
            assert!(
                (0.0..=100.0).contains(&status.cpu_percent),
                "{}",
                status.cpu_percent
            );
            assert!(status.memory_used_bytes > 0);
            assert!(status.disk_free_bytes > 0);
        }
    }

    #[test]
    fn status_sampler_for_missing_dir_does_not_fail() {
        let mut sampler =
            StatusSampler::new(Path::new("relative/not/there")).expect("sysinfo works");
        let status = sampler.sample();
        assert!((0.0..=100.0).contains(&status.cpu_percent));
    }
}

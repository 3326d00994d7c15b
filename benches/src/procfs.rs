//! What another process costs, read from `/proc`: resident memory and CPU time; and which
//! filesystem a directory is on.

use std::path::PathBuf;

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident now (`VmRSS`).
    pub rss_kib: u64,
    /// The highest resident so far (`VmHWM`).
    pub hwm_kib: u64,
}

impl Memory {
    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
    pub fn hwm_mib(&self) -> f64 {
        self.hwm_kib as f64 / 1024.0
    }
}

fn proc_path(pid: Option<u32>, file: &str) -> PathBuf {
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/{file}")),
        None => PathBuf::from(format!("/proc/self/{file}")),
    }
}

/// `VmRSS` and `VmHWM` of `pid` (`None`: this process).
pub fn memory(pid: Option<u32>) -> std::io::Result<Memory> {
    let text = std::fs::read_to_string(proc_path(pid, "status"))?;
    let field = |name: &str| -> std::io::Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("no {name} line"))
            })
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// User plus system CPU time of `pid` (`None`: this process), in clock ticks.
pub fn cpu_ticks(pid: Option<u32>) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(proc_path(pid, "stat"))?;
    // The command name is in parentheses and may hold spaces; fields count from after it.
    // After ")" come state (field 3), ..., utime (14) and stime (15).
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected /proc stat");
    let rest = text.rsplit_once(')').ok_or_else(bad)?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields
        .get(11)
        .and_then(|f| f.parse().ok())
        .ok_or_else(bad)?;
    let stime: u64 = fields
        .get(12)
        .and_then(|f| f.parse().ok())
        .ok_or_else(bad)?;
    Ok(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`); 100, the Linux value, if that cannot be asked.
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// The kernel's UDP counters for this network namespace (`/proc/net/snmp`, the `Udp:` lines):
/// `InDatagrams`, `RcvbufErrors` (datagrams dropped because a socket's receive buffer was
/// full), ... Empty if the file cannot be read.
pub fn udp_counters() -> std::collections::HashMap<String, u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    match (lines.next(), lines.next()) {
        (Some(names), Some(values)) => names
            .split_whitespace()
            .skip(1)
            .zip(values.split_whitespace().skip(1))
            .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
            .collect(),
        _ => Default::default(),
    }
}

/// Datagrams dropped by UDP sockets bound to IPv4 addresses that `select` accepts, summed
/// (`/proc/net/udp`, the `drops` column, which counts a socket's life). Reads IPv4 sockets of
/// this network namespace only.
pub fn udp_socket_drops(select: impl Fn(std::net::Ipv4Addr, u16) -> bool) -> u64 {
    let text = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (ip_hex, port_hex) = fields.get(1)?.split_once(':')?;
            // The address is the kernel's u32 in host order, printed as hex.
            let ip = u32::from_str_radix(ip_hex, 16).ok()?;
            let ip = std::net::Ipv4Addr::from(ip.to_le_bytes());
            let port = u16::from_str_radix(port_hex, 16).ok()?;
            let drops: u64 = fields.last()?.parse().ok()?;
            select(ip, port).then_some(drops)
        })
        .sum()
}

/// The filesystem holding `path`, from `/proc/mounts`: the longest mount point above it.
pub fn filesystem_of(path: &std::path::Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && path.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} on {}", f[2], f[0])))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, fs)| fs)
}

//! Node-side admission: the node re-checks every assignment against its own truth before it
//! downloads or starts anything, and reserves what it admits.
//!
//! The orchestrator schedules from reports that may be seconds old; the node knows what is free
//! right now. Two rules, both must hold:
//! - **Limits fit the budget**: the memory and disk limits of everything admitted, plus this,
//!   stay within the node's budget (its total less a reserve for the system and the daemon).
//!   Limits, not current use: a workload may grow to its limit later.
//! - **It fits now**: this workload's memory fits what is available now, less what other
//!   admitted workloads that have not started yet will take; its disk and its artifact
//!   download fit the free disk, less other pending reservations.
//!
//! Pure: the caller passes in the measurements. It never reads `/proc` or the disk itself.

use std::collections::BTreeMap;

/// What a workload asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Request {
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    /// Bytes still to download for its artifact (0 if cached).
    pub download_bytes: u64,
}

/// The node's measurements at the moment of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    pub memory_total: u64,
    pub memory_available: u64,
    pub disk_free: u64,
}

/// What the node keeps for itself: the OS, the daemon, its cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserve {
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

impl Default for Reserve {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            disk_bytes: 256 << 20,
        }
    }
}

/// Why a workload was not admitted: sent to the orchestrator, which tries another node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(
        "memory limits would exceed the node's budget: {committed} B committed + {want} B > {budget} B"
    )]
    MemoryBudget {
        committed: u64,
        want: u64,
        budget: u64,
    },
    #[error("not enough memory now: wants {want} B, {free} B available")]
    MemoryNow { want: u64, free: u64 },
    #[error("not enough disk: wants {want} B (incl. download), {free} B free")]
    Disk { want: u64, free: u64 },
    /// A container, and the node found no OCI runtime (runc or crun) to run it with.
    #[error("no container runtime on this node: install runc or crun, or name one in the config")]
    NoContainerRuntime,
    /// A container whose image has no platform for this node's architecture.
    #[error("the image has no platform for this node's architecture ({arch})")]
    NoPlatform { arch: String },
}

/// The platform of `image` this node runs: its own architecture's, if it has a container
/// runtime at all. Checked before anything else of a container's assignment.
pub fn container_platform<'a>(
    image: &'a edge_proto::Image,
    arch: &str,
    runtimes: &[&str],
) -> Result<&'a edge_proto::ImagePlatform, Rejection> {
    if runtimes.is_empty() {
        return Err(Rejection::NoContainerRuntime);
    }
    image
        .platforms
        .as_slice()
        .iter()
        .find(|p| p.arch.as_str() == arch)
        .ok_or_else(|| Rejection::NoPlatform {
            arch: arch.chars().take(16).collect(),
        })
}

#[derive(Debug, Clone, Copy)]
struct Reservation {
    request: Request,
    started: bool,
}

/// The node's reservations.
#[derive(Debug, Default)]
pub struct Admission {
    reserve: Reserve,
    admitted: BTreeMap<String, Reservation>,
}

impl Admission {
    pub fn new(reserve: Reserve) -> Self {
        Self {
            reserve,
            admitted: BTreeMap::new(),
        }
    }

    /// Checks `workload` and reserves it if it fits. Re-admitting a workload (a new version)
    /// replaces its old reservation rather than adding to it.
    pub fn admit(
        &mut self,
        workload: &str,
        request: Request,
        now: Measured,
    ) -> Result<(), Rejection> {
        let others = || self.admitted.iter().filter(|(name, _)| *name != workload);
        let committed: u64 = others().map(|(_, r)| r.request.memory_bytes).sum();
        let budget = now.memory_total.saturating_sub(self.reserve.memory_bytes);
        if committed.saturating_add(request.memory_bytes) > budget {
            return Err(Rejection::MemoryBudget {
                committed,
                want: request.memory_bytes,
                budget,
            });
        }
        let pending = |f: fn(&Request) -> u64| -> u64 {
            others()
                .filter(|(_, r)| !r.started)
                .map(|(_, r)| f(&r.request))
                .sum()
        };
        let free_memory = now
            .memory_available
            .saturating_sub(pending(|r| r.memory_bytes))
            .saturating_sub(self.reserve.memory_bytes);
        if request.memory_bytes > free_memory {
            return Err(Rejection::MemoryNow {
                want: request.memory_bytes,
                free: free_memory,
            });
        }
        let free_disk = now
            .disk_free
            .saturating_sub(pending(|r| r.disk_bytes + r.download_bytes))
            .saturating_sub(self.reserve.disk_bytes);
        let want_disk = request.disk_bytes.saturating_add(request.download_bytes);
        if want_disk > free_disk {
            return Err(Rejection::Disk {
                want: want_disk,
                free: free_disk,
            });
        }
        self.admitted.insert(
            workload.to_owned(),
            Reservation {
                request,
                started: false,
            },
        );
        Ok(())
    }

    /// Reserves a workload that is already running (the daemon restarted and found it),
    /// without checking: refusing it now would kill a running workload to make room it
    /// already has. Its limits count against the budget from here on.
    pub fn adopt(&mut self, workload: &str, request: Request) {
        self.admitted.insert(
            workload.to_owned(),
            Reservation {
                request,
                started: true,
            },
        );
    }

    /// The workload is running: its memory and disk now show in the measurements, so it no
    /// longer counts as pending. Its limits still count against the budget.
    pub fn started(&mut self, workload: &str) {
        if let Some(r) = self.admitted.get_mut(workload) {
            r.started = true;
        }
    }

    /// The workload is gone; its reservation is free.
    pub fn release(&mut self, workload: &str) {
        self.admitted.remove(workload);
    }

    pub fn is_admitted(&self, workload: &str) -> bool {
        self.admitted.contains_key(workload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adopted_workload_is_kept_and_counts_against_the_budget() {
        let mut a = Admission::new(Reserve::default());
        // Already running with more than is free now: kept, not refused.
        a.adopt("running", mem(400));
        assert!(a.is_admitted("running"));
        let full = Measured {
            memory_available: 10 * MIB,
            ..pi()
        };
        assert!(matches!(
            a.admit("next", mem(100), full),
            Err(Rejection::MemoryBudget { committed, .. }) if committed == 400 * MIB
        ));
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_container_needs_a_runtime_and_its_own_platform() {
        let platform = |arch: &str| edge_proto::ImagePlatform {
            arch: edge_proto::text(arch),
            manifest: [7; 32],
            manifest_size: 400,
            download_bytes: MIB,
            unpacked_bytes: 2 * MIB,
        };
        let image = edge_proto::Image {
            platforms: edge_proto::Seq::new(vec![platform("x86_64"), platform("aarch64")])
                .expect("fits"),
            allow_setuid: false,
            read_only_root: false,
        };
        assert_eq!(
            container_platform(&image, "aarch64", &["runc"]).map(|p| p.arch.as_str()),
            Ok("aarch64")
        );
        assert_eq!(
            container_platform(&image, "aarch64", &[]),
            Err(Rejection::NoContainerRuntime)
        );
        let err = container_platform(&image, "arm", &["crun"]).expect_err("no arm platform");
        assert_eq!(
            err.to_string(),
            "the image has no platform for this node's architecture (arm)"
        );
    }

    fn pi() -> Measured {
        Measured {
            memory_total: 512 * MIB,
            memory_available: 300 * MIB,
            disk_free: 1024 * MIB,
        }
    }

    fn mem(mib: u64) -> Request {
        Request {
            memory_bytes: mib * MIB,
            ..Request::default()
        }
    }

    #[test]
    fn two_admissions_cannot_overcommit_what_is_free_now() {
        let mut a = Admission::new(Reserve::default());
        // 300 available - 64 reserve = 236 free now.
        assert_eq!(a.admit("one", mem(200), pi()), Ok(()));
        // Nothing has started, so the first one's 200 are still to come out of the same 236.
        assert!(matches!(
            a.admit("two", mem(100), pi()),
            Err(Rejection::MemoryNow { .. })
        ));
        // Once it runs, its use shows in the measurement instead.
        a.started("one");
        let after = Measured {
            memory_available: 100 * MIB + 64 * MIB,
            ..pi()
        };
        assert_eq!(a.admit("two", mem(100), after), Ok(()));
    }

    #[test]
    fn limits_never_exceed_the_budget_even_when_memory_looks_free() {
        let mut a = Admission::new(Reserve::default());
        let roomy = Measured {
            memory_available: 512 * MIB,
            ..pi()
        };
        assert_eq!(a.admit("big", mem(400), roomy), Ok(()));
        a.started("big");
        // 400 committed + 100 > 448 budget, however much is available right now.
        assert!(matches!(
            a.admit("more", mem(100), roomy),
            Err(Rejection::MemoryBudget { .. })
        ));
        a.release("big");
        assert_eq!(a.admit("more", mem(100), roomy), Ok(()));
    }

    #[test]
    fn readmitting_replaces_the_old_reservation() {
        let mut a = Admission::new(Reserve::default());
        assert_eq!(a.admit("w", mem(200), pi()), Ok(()));
        assert_eq!(a.admit("w", mem(220), pi()), Ok(()), "not 200 + 220");
    }

    #[test]
    fn the_download_counts_against_disk() {
        let mut a = Admission::new(Reserve::default());
        let req = Request {
            memory_bytes: MIB,
            disk_bytes: 500 * MIB,
            download_bytes: 300 * MIB,
        };
        // 1024 free - 256 reserve = 768 < 800.
        assert!(matches!(
            a.admit("w", req, pi()),
            Err(Rejection::Disk { .. })
        ));
        let cached = Request {
            download_bytes: 0,
            ..req
        };
        assert_eq!(a.admit("w", cached, pi()), Ok(()));
    }
}

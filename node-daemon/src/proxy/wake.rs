//! Scale to zero on this node: the proxy's [`Waker`], and the idle watch that puts a workload
//! back to sleep.
//!
//! [`Activator`] sets the proxy's routing ([`Activator::refresh`], one at a time and from the
//! supervisor's state read under the same lock, so the routing set last is built from the
//! newest state) with an [`Activity`] for each workload that scales to zero, and is the one
//! place that wakes such a workload or puts it to sleep. Each workload has a *turn*: a wake
//! and a sleep never overlap.
//!
//! - **Wake** (a request found the activity closed): runs in a task of its own, so a request
//!   that gives up at its deadline does not abandon a start half done. It asks the
//!   supervisor to start the workload and waits until it is ready (at most the longest
//!   timeout of its routes; else it is stopped again), sets a routing that has the new
//!   instance, and only then opens the activity and answers: a woken request always finds
//!   the instance in the routing.
//! - **Sleep**: a watcher per awake workload waits until no request has come or ended for
//!   `idle_secs`, then closes the activity, which succeeds only while no request is in
//!   flight, and has the supervisor stop the workload (gracefully) and leave it dormant.
//!   While pre-warming holds the workload up ([`Activator::keep`], until a time that ends
//!   on its own should pre-warming stop), the watcher waits instead.
//! - **Pre-warm** ([`Activator::prewarm`]): the same wake as a request's, asked for by
//!   `super::prewarm` before the request it expects; it takes the same turn.
//!
//! It never forwards a request and never starts or signals a process itself.

use crate::supervisor::{InstanceStatus, Readiness, ScaleError, Supervisor, WorkloadSpec};
use edge_proxy::{Activity, Proxy, Routing, WakeError, Waker};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Builds the routing for what the supervisor serves (without the activities).
pub type BuildRouting = Box<dyn Fn(&[(WorkloadSpec, InstanceStatus)]) -> Routing + Send + Sync>;

/// The shortest a wake may take before it is given up: below the shortest route timeout.
const MIN_WAKE_WITHIN: Duration = Duration::from_secs(1);

/// How long a start is taken to last until one is measured: a typical small service on a Pi.
const COLD_START_GUESS: Duration = Duration::from_secs(4);

/// Wakes and sleeps the node's workloads that scale to zero, and sets the proxy's routing.
/// Cheap to clone; the proxy's waker and the idle watchers hold it weakly, so it ends with
/// its last clone.
#[derive(Clone)]
pub struct Activator {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Activator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activator").finish_non_exhaustive()
    }
}

struct Shared {
    proxy: Proxy,
    supervisor: Supervisor,
    build: BuildRouting,
    /// Held while a routing is built and set.
    refreshing: Mutex<()>,
    /// Every workload that scales to zero, by name.
    workloads: Mutex<HashMap<String, Entry>>,
}

#[derive(Clone)]
struct Entry {
    activity: Arc<Activity>,
    /// Held through a wake and through a sleep.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// An idle watcher runs; set and cleared only while holding the turn.
    watched: Arc<AtomicBool>,
    idle: Duration,
    /// How long a wake may take before the workload is stopped again.
    wake_within: Duration,
    /// The spec's memory, for pre-warming's view of what an instance costs.
    memory_bytes: u64,
    /// How long its last wake took to be ready, in milliseconds; 0 before the first.
    cold_start_ms: Arc<AtomicU64>,
    /// Until when pre-warming keeps it up past its idle time; `None`: it does not.
    kept_until: Arc<Mutex<Option<Instant>>>,
}

/// A workload that scales to zero, as pre-warming sees it.
#[derive(Debug, Clone)]
pub struct Sleeper {
    pub name: String,
    pub activity: Arc<Activity>,
    /// Up or starting (by a request or a pre-warm), as the supervisor says.
    pub awake: bool,
    pub idle: Duration,
    pub memory_bytes: u64,
    /// Its last start's time to ready, or a guess before the first.
    pub cold_start: Duration,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            activity: Arc::new(Activity::dormant(now)),
            turn: Arc::new(tokio::sync::Mutex::new(())),
            watched: Arc::new(AtomicBool::new(false)),
            idle: Duration::MAX,
            wake_within: MIN_WAKE_WITHIN,
            memory_bytes: 0,
            cold_start_ms: Arc::new(AtomicU64::new(0)),
            kept_until: Arc::new(Mutex::new(None)),
        }
    }

    fn kept_until(&self) -> Option<Instant> {
        *self
            .kept_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Activator {
    pub fn new(proxy: Proxy, supervisor: Supervisor, build: BuildRouting) -> Self {
        Self {
            shared: Arc::new(Shared {
                proxy,
                supervisor,
                build,
                refreshing: Mutex::new(()),
                workloads: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The waker to set on the proxy.
    pub fn waker(&self) -> Arc<dyn Waker> {
        Arc::new(NodeWaker(Arc::downgrade(&self.shared)))
    }

    /// Sets the proxy's routing from what the supervisor runs now. Call it on every change.
    pub fn refresh(&self) {
        self.shared.refresh();
    }

    /// Every workload that scales to zero, now.
    pub fn sleepers(&self) -> Vec<Sleeper> {
        let entries: Vec<(String, Entry)> = self
            .shared
            .workloads()
            .iter()
            .map(|(name, entry)| (name.clone(), entry.clone()))
            .collect();
        entries
            .into_iter()
            .map(|(name, entry)| {
                let awake = matches!(
                    self.shared.supervisor.readiness(&name),
                    Some(Readiness::Waking | Readiness::Ready)
                );
                let measured = entry.cold_start_ms.load(Ordering::Relaxed);
                Sleeper {
                    awake,
                    activity: entry.activity.clone(),
                    idle: entry.idle,
                    memory_bytes: entry.memory_bytes,
                    cold_start: if measured == 0 {
                        COLD_START_GUESS
                    } else {
                        Duration::from_millis(measured)
                    },
                    name,
                }
            })
            .collect()
    }

    /// Wakes `name` before a request, through the wake a request takes (and its turn).
    /// Resolves to whether this call started it (not: it was up already, or another wake
    /// did).
    pub fn prewarm(&self, name: &str) -> impl Future<Output = Result<bool, WakeError>> + use<> {
        let shared = self.shared.clone();
        let name = name.to_owned();
        async move { shared.wake(name).await }
    }

    /// Keeps `name` up past its idle time until `until` (`None`: no longer); the idle
    /// watcher looks again then.
    pub fn keep(&self, name: &str, until: Option<Instant>) {
        if let Some(entry) = self.shared.entry(name) {
            *entry
                .kept_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = until;
        }
    }
}

impl Shared {
    fn workloads(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Each change is a whole insert, update or removal.
        self.workloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn entry(&self, name: &str) -> Option<Entry> {
        self.workloads().get(name).cloned()
    }

    fn refresh(self: &Arc<Self>) {
        let _one = self
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let served = self.supervisor.served();
        let mut routing = (self.build)(&served);
        let now = Instant::now();
        let mut watch = Vec::new();
        {
            let mut workloads = self.workloads();
            workloads.retain(|name, _| {
                served
                    .iter()
                    .any(|(spec, _)| &spec.name == name && spec.scale_to_zero.is_some())
            });
            for (spec, _) in &served {
                let Some(scale) = spec.scale_to_zero else {
                    continue;
                };
                let entry = workloads
                    .entry(spec.name.clone())
                    .or_insert_with(|| Entry::new(now));
                entry.idle = scale.idle();
                entry.wake_within = wake_within(spec);
                entry.memory_bytes = spec.resources.memory_bytes.unwrap_or(0);
                routing
                    .scale_to_zero
                    .insert(spec.name.clone(), entry.activity.clone());
                // Wakes and sleeps keep the activity in step with the workload themselves;
                // this only mends what changed without them (a dormant workload's gate left
                // open, an awake one without a watcher, as after a new spec).
                let Ok(_turn) = entry.turn.try_lock() else {
                    continue;
                };
                match self.supervisor.readiness(&spec.name) {
                    Some(Readiness::Dormant) | None => entry.activity.close(),
                    Some(Readiness::Waking | Readiness::Ready) => {
                        if !entry.watched.swap(true, Ordering::AcqRel) {
                            watch.push((spec.name.clone(), entry.activity.clone()));
                        }
                    }
                }
            }
        }
        self.proxy.set_routing(routing);
        for (name, activity) in watch {
            tokio::spawn(watch_idle(Arc::downgrade(self), name, activity));
        }
    }

    /// Wakes `name`; see the module docs. Whether this call started it.
    async fn wake(self: Arc<Self>, name: String) -> Result<bool, WakeError> {
        let entry = self.entry(&name).ok_or(WakeError::Unknown)?;
        // A wake is the start of a request: the idle time counts from here.
        entry.activity.touch(Instant::now());
        let _turn = entry.turn.clone().lock_owned().await;
        if !entry.activity.is_closed() {
            // Another wake finished while this one waited its turn.
            return Ok(false);
        }
        let started = Instant::now();
        let woke = tokio::time::timeout(entry.wake_within, self.supervisor.wake(&name)).await;
        let error = match woke {
            Ok(Ok(())) => None,
            Ok(Err(ScaleError::Unknown(_))) => return Err(WakeError::Unknown),
            Ok(Err(error)) => Some(WakeError::NotReady(error.to_string())),
            Err(_) => Some(WakeError::Timeout),
        };
        if let Some(error) = error {
            // Stopped, so the next request starts it afresh rather than find it half up.
            warn!(workload = %name, %error, "not ready after a wake; scaling back to zero");
            if let Err(error) = self.supervisor.sleep(&name).await {
                debug!(workload = %name, %error, "cannot scale back to zero");
            }
            return Err(error);
        }
        let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        entry.cold_start_ms.store(took.max(1), Ordering::Relaxed);
        self.refresh();
        entry.activity.touch(Instant::now());
        entry.activity.open();
        if !entry.watched.swap(true, Ordering::AcqRel) {
            tokio::spawn(watch_idle(
                Arc::downgrade(&self),
                name,
                entry.activity.clone(),
            ));
        }
        Ok(true)
    }
}

/// The longest timeout of the workload's routes: no request waits longer for a wake.
fn wake_within(spec: &WorkloadSpec) -> Duration {
    let longest = spec
        .expose
        .iter()
        .map(|e| e.timeout_secs)
        .max()
        .unwrap_or(0);
    Duration::from_secs(u64::from(longest)).max(MIN_WAKE_WITHIN)
}

/// Puts `name` to sleep once it has been idle long enough; ends when it is dormant, removed,
/// no longer scales to zero, or the activator is gone.
async fn watch_idle(shared: Weak<Shared>, name: String, activity: Arc<Activity>) {
    loop {
        // Looked up each time: the idle time changes with the spec, and a workload removed
        // and applied again has an entry of its own.
        let Some(entry) = shared
            .upgrade()
            .and_then(|s| s.entry(&name))
            .filter(|e| Arc::ptr_eq(&e.activity, &activity))
        else {
            return;
        };
        if activity.in_flight() > 0 {
            // Its end moves the last request on; look again one idle time later.
            tokio::time::sleep(entry.idle).await;
            continue;
        }
        let now = Instant::now();
        let due = activity
            .last_request()
            .checked_add(entry.idle)
            .unwrap_or(now + Duration::from_secs(86_400));
        if due > now {
            tokio::time::sleep_until(due.into()).await;
            continue;
        }
        if let Some(until) = entry.kept_until().filter(|&until| until > now) {
            // Pre-warming expects a request soon; it says again before `until`.
            tokio::time::sleep_until(until.into()).await;
            continue;
        }
        let turn = entry.turn.clone().lock_owned().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if matches!(
            shared.supervisor.readiness(&name),
            None | Some(Readiness::Dormant)
        ) {
            entry.watched.store(false, Ordering::Release);
            return;
        }
        if !activity.close_if_idle(Instant::now(), entry.idle) {
            // A request came meanwhile.
            drop(turn);
            continue;
        }
        let idle_secs = entry.idle.as_secs();
        match shared.supervisor.sleep(&name).await {
            Ok(()) => info!(workload = %name, idle_secs, "scaled to zero after idling"),
            Err(error) => warn!(workload = %name, %error, "cannot scale to zero"),
        }
        entry.watched.store(false, Ordering::Release);
        drop(turn);
        return;
    }
}

/// The waker the proxy holds: weakly, so the proxy does not keep the activator (which holds
/// the proxy) alive.
struct NodeWaker(Weak<Shared>);

impl Waker for NodeWaker {
    fn wake(&self, workload: &str) -> Pin<Box<dyn Future<Output = Result<(), WakeError>> + Send>> {
        let Some(shared) = self.0.upgrade() else {
            return Box::pin(async { Err(WakeError::Unknown) });
        };
        let task = tokio::spawn(shared.wake(workload.to_owned()));
        Box::pin(async move {
            task.await
                .unwrap_or_else(|error| Err(WakeError::NotReady(error.to_string())))
                .map(|_| ())
        })
    }
}

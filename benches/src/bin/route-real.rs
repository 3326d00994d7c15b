//! `route-real`: the routing strategies through the real proxy to real backend servers.
//!
//! `edge-sim route eval` judges round-robin, least-requests, peak-EWMA P2C and the routing
//! model on a virtual clock. This runs the same evaluation scenarios
//! (`benches/scenarios/route/*.toml`, read by edge-sim's own parser) on sockets: for each
//! `[[backend]]` an HTTP server on `127.0.0.1:0` that behaves as the simulator's backend does
//! (see `edge_sim::sim`): the request crosses the "network" (1 ms per 100 km each way, plus a
//! little and a jitter), queues first come first served for one of the backend's `workers`,
//! is served for a lognormal time times the speed multiplier and the degradation under load
//! at the moment its service starts, and crosses back; a backend that is down refuses (a
//! `503` after about a millisecond) or lets the request hang past the timeout; `failure` is
//! the share refused. In front of them, `edge-proxy`'s `Proxy` with one route whose backends
//! they are, once per strategy; the model strategy is peak-EWMA with the routing model set
//! through `Proxy::set_route_model`, made as the node makes it
//! (`node_daemon::proxy::route_model::from_bytes`).
//!
//! **The route.** A workload's route with no instance here and no peer, and the scenario's
//! backends as its origins: the proxy's one route shape whose chooser picks among several
//! plain-HTTP backends (a route of origins alone splits its requests by weight,
//! `node_core::proxy::tiers::pick`). Every backend is then an origin: one tier, as the
//! simulator has it, but the chooser is told no distance (an origin's is unknown, a feature
//! of 0) and no host load.
//!
//! **The load.** Open loop: a Poisson process at the scenario's rate (times `--rate-scale`),
//! the send times drawn before the run from the round's seed, each request's latency taken
//! from its scheduled send time to the end of its answer's body, so a late send counts
//! against the run (no coordinated omission). A request fails on any status but 2xx, a
//! connection error, or no answer within the route's timeout for every attempt plus a
//! second. Each request carries its number (`x-route-real-request`); a backend draws its
//! jitter, refusal and service time from the seed, the request and itself, so every
//! strategy meets the same requests and the same draws (common random numbers, as the
//! simulator has them).
//!
//! **Time.** A run lasts `--duration-secs` of real time, not the scenario's: the scenario's
//! schedules (rate steps, speed changes, downs, flaps) are scaled by the same factor, so a
//! 60 s scenario run in 12 s has its 20 s flap period every 4 s. Service times, distances
//! and the timeout are not scaled: they are what the proxy measures. Requests sent before
//! `--warmup-secs` are not counted. Strategies alternate within each round, their order
//! rotated from round to round, and a round's seed is the same for every strategy.
//!
//! A benchmark: it prints figures and never fails on one.

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use edge_benches::stats::percentile;
use edge_proxy::cache::{Cache, CacheConfig, Clock};
use edge_proxy::proxy::RouteModel;
use edge_proxy::{Limits, Proxy, ProxyMetrics, Routing, Settings};
use edge_sim::scenario::{Backend as BackendSpec, DownMode, Scenario};
use edge_sim::sim::mix;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use node_core::proxy::balance::Strategy;
use node_core::proxy::cache_status::CacheName;
use node_core::proxy::headers::ViaName;
use node_core::proxy::learned::Mode;
use node_core::proxy::route::{Origin, Route, RouteSettings, RouteTable, Target, WeightedTarget};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// The header that carries a request's number to the backends, through the proxy.
const REQUEST_ID: &str = "x-route-real-request";
/// How often the model strategy's mode is read during a run.
const MODE_SAMPLE: Duration = Duration::from_millis(100);
/// The seed stream of the arrivals, apart from the backends' draws.
const ARRIVALS: u64 = 0xA771_7A15;

#[derive(Debug, Parser)]
#[command(about = "Routing strategies through the real proxy to real backend servers")]
struct Args {
    /// Scenario files (edge-sim's format).
    #[arg(long = "scenario", num_args = 1.., required = true)]
    scenarios: Vec<PathBuf>,
    /// Strategies, in the order of the first round.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "round-robin,least-requests,peak-ewma,model"
    )]
    strategies: Vec<String>,
    /// The routing model for the `model` strategy.
    #[arg(long, default_value = "edge-ai/models/route.onnx")]
    model: PathBuf,
    /// Real seconds per run; the scenario's schedules are scaled to fit.
    #[arg(long, default_value_t = 12.0)]
    duration_secs: f64,
    /// Real seconds at the start of each run whose requests are not counted.
    #[arg(long, default_value_t = 3.0)]
    warmup_secs: f64,
    /// The scenario's arrival rates are multiplied by this.
    #[arg(long, default_value_t = 1.0)]
    rate_scale: f64,
    /// Rounds: every strategy runs once per round, on the round's seed.
    #[arg(long, default_value_t = 2)]
    rounds: u64,
    /// The first round's seed; round `r` uses `seed + r`.
    #[arg(long, default_value_t = 100)]
    seed: u64,
    /// Writes the figures as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chooser {
    RoundRobin,
    LeastRequests,
    PeakEwma,
    Model,
}

impl Chooser {
    fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "round-robin" => Chooser::RoundRobin,
            "least-requests" => Chooser::LeastRequests,
            "peak-ewma" => Chooser::PeakEwma,
            "model" => Chooser::Model,
            other => {
                bail!("unknown strategy {other:?}: round-robin, least-requests, peak-ewma or model")
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Chooser::RoundRobin => "round-robin",
            Chooser::LeastRequests => "least-requests",
            Chooser::PeakEwma => "peak-ewma",
            Chooser::Model => "model",
        }
    }

    fn balance(self) -> Strategy {
        match self {
            Chooser::RoundRobin => Strategy::RoundRobin,
            Chooser::LeastRequests => Strategy::LeastRequests,
            Chooser::PeakEwma | Chooser::Model => Strategy::PeakEwma,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.duration_secs > 0.0 && args.warmup_secs >= 0.0)
        || args.warmup_secs >= args.duration_secs
    {
        bail!("--warmup-secs must be shorter than --duration-secs, both positive");
    }
    if !(args.rate_scale > 0.0 && args.rate_scale.is_finite()) || args.rounds == 0 {
        bail!("--rate-scale must be positive and --rounds at least 1");
    }
    let choosers = args
        .strategies
        .iter()
        .map(|s| Chooser::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let scenarios = args
        .scenarios
        .iter()
        .map(|path| Scenario::load(path).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let model = if choosers.contains(&Chooser::Model) {
        let bytes = std::fs::read(&args.model)
            .with_context(|| format!("reading {}", args.model.display()))?;
        let model = node_daemon::proxy::route_model::from_bytes(&bytes)
            .map_err(|why| anyhow::anyhow!("{}: {why}", args.model.display()))?;
        Some(model)
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let figures = runtime.block_on(evaluate(&args, &scenarios, &choosers, model.as_ref()))?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// What one strategy did on one scenario, over every round.
#[derive(Debug, Default)]
struct Pooled {
    latencies: Vec<Duration>,
    failed: u64,
    p99_by_round: Vec<Option<Duration>>,
    attempts: Vec<u64>,
    model_samples: u64,
    mode_samples: u64,
    fallbacks: Vec<&'static str>,
}

async fn evaluate(
    args: &Args,
    scenarios: &[Scenario],
    choosers: &[Chooser],
    model: Option<&RouteModel>,
) -> anyhow::Result<serde_json::Value> {
    let mut out = Vec::new();
    let mut ratios = Vec::new();
    for scenario in scenarios {
        let mut pooled: Vec<Pooled> = choosers.iter().map(|_| Pooled::default()).collect();
        for round in 0..args.rounds {
            let seed = args.seed + round;
            // Rotated each round, so no strategy always runs right after the same one.
            let n = choosers.len();
            for k in 0..n {
                let i = (k + usize::try_from(round).unwrap_or(0)) % n;
                let chooser = choosers[i];
                let run = run(args, scenario, chooser, model, seed).await?;
                eprintln!(
                    "  {} round {round} {:<15} p99 {:>8}  failed {}/{}",
                    scenario.name,
                    chooser.name(),
                    ms(percentile(&run.latencies, 99.0)),
                    run.failed,
                    run.latencies.len()
                );
                let p = &mut pooled[i];
                p.p99_by_round.push(percentile(&run.latencies, 99.0));
                p.latencies.extend_from_slice(&run.latencies);
                p.failed += run.failed;
                if p.attempts.len() < run.attempts.len() {
                    p.attempts.resize(run.attempts.len(), 0);
                }
                for (sum, a) in p.attempts.iter_mut().zip(&run.attempts) {
                    *sum += a;
                }
                p.model_samples += run.model_samples;
                p.mode_samples += run.mode_samples;
                for f in run.fallbacks {
                    if !p.fallbacks.contains(&f) {
                        p.fallbacks.push(f);
                    }
                }
            }
        }
        let (figures, ratio) = report(scenario, choosers, &pooled);
        ratios.push((scenario.name.clone(), ratio));
        out.push(figures);
    }
    println!();
    println!(
        "model p99 / peak-ewma p99 (goal: <= 0.75 heterogeneous, <= 1.05 homogeneous), through the proxy:"
    );
    for (name, ratio) in &ratios {
        let goal = if name.starts_with("homogeneous") {
            1.05
        } else {
            0.75
        };
        match ratio {
            Some(r) => println!(
                "  {name:<14} {r:.3}  (goal <= {goal}: {})",
                if *r <= goal { "met" } else { "NOT met" }
            ),
            None => println!("  {name:<14} -"),
        }
    }
    Ok(serde_json::Value::Array(out))
}

/// Prints one scenario's table; its figures as JSON, and the model's p99 over peak-EWMA's.
fn report(
    scenario: &Scenario,
    choosers: &[Chooser],
    pooled: &[Pooled],
) -> (serde_json::Value, Option<f64>) {
    println!();
    println!(
        "{} ({} backends, {:.0} req/s at the start, timeout {} ms)",
        scenario.name,
        scenario.backends.len(),
        scenario.arrivals.rate_per_sec,
        scenario.timeout_ms
    );
    println!(
        "  {:<15} {:>9} {:>9} {:>9} {:>8} {:>9}  p99 by round; attempts per backend ({})",
        "strategy",
        "p50",
        "p99",
        "p99.9",
        "errors",
        "requests",
        scenario
            .backends
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut rows = Vec::new();
    let p99_of = |chooser: Chooser| {
        choosers
            .iter()
            .position(|c| *c == chooser)
            .and_then(|i| percentile(&pooled[i].latencies, 99.0))
    };
    let ratio = match (p99_of(Chooser::Model), p99_of(Chooser::PeakEwma)) {
        (Some(m), Some(p)) if !p.is_zero() => Some(m.as_secs_f64() / p.as_secs_f64()),
        _ => None,
    };
    for (chooser, p) in choosers.iter().zip(pooled) {
        let requests = p.latencies.len() as u64;
        let error_rate = if requests == 0 {
            0.0
        } else {
            p.failed as f64 / requests as f64
        };
        let total: u64 = p.attempts.iter().sum();
        let shares: Vec<String> = p
            .attempts
            .iter()
            .map(|a| format!("{:.0}%", 100.0 * *a as f64 / total.max(1) as f64))
            .collect();
        let by_round: Vec<String> = p.p99_by_round.iter().map(|d| ms_short(*d)).collect();
        let mode = if *chooser == Chooser::Model && p.mode_samples > 0 {
            format!(
                "; model chose {:.0}% of the time{}",
                100.0 * p.model_samples as f64 / p.mode_samples as f64,
                if p.fallbacks.is_empty() {
                    String::new()
                } else {
                    format!(" (else {})", p.fallbacks.join(", "))
                }
            )
        } else {
            String::new()
        };
        println!(
            "  {:<15} {:>9} {:>9} {:>9} {:>7.2}% {:>9}  [{}]; {}{}",
            chooser.name(),
            ms(percentile(&p.latencies, 50.0)),
            ms(percentile(&p.latencies, 99.0)),
            ms(percentile(&p.latencies, 99.9)),
            100.0 * error_rate,
            requests,
            by_round.join(" "),
            shares.join(" "),
            mode
        );
        rows.push(serde_json::json!({
            "strategy": chooser.name(),
            "requests": requests,
            "error_rate": error_rate,
            "p50_ms": ms_f64(percentile(&p.latencies, 50.0)),
            "p99_ms": ms_f64(percentile(&p.latencies, 99.0)),
            "p999_ms": ms_f64(percentile(&p.latencies, 99.9)),
            "p99_by_round_ms": p.p99_by_round.iter().map(|d| ms_f64(*d)).collect::<Vec<_>>(),
            "attempts": p.attempts,
            "model_share": (p.mode_samples > 0)
                .then(|| p.model_samples as f64 / p.mode_samples as f64),
        }));
    }
    if let Some(ratio) = ratio {
        println!("  model p99 / peak-ewma p99: {ratio:.3}");
    }
    let figures = serde_json::json!({
        "scenario": scenario.name,
        "strategies": rows,
        "model_p99_ratio": ratio,
    });
    (figures, ratio)
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".into(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1e3),
    )
}

fn ms_short(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
}

fn ms_f64(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1e3)
}

/// What one run measured, after the warm-up.
#[derive(Debug)]
struct Run {
    /// Each counted request's latency from its scheduled send time; failures included, at
    /// the time they failed.
    latencies: Vec<Duration>,
    failed: u64,
    /// Attempts each backend received, warm-up included.
    attempts: Vec<u64>,
    /// For the model strategy: the samples of the route's mode that found the model
    /// choosing, of all taken, and the fallbacks seen.
    model_samples: u64,
    mode_samples: u64,
    fallbacks: Vec<&'static str>,
}

/// The scenario's clock for one run: real time since the start, scaled to the scenario's.
#[derive(Debug, Clone, Copy)]
struct Clocks {
    start: Instant,
    /// Scenario seconds per real second.
    scale: f64,
}

impl Clocks {
    fn scenario_secs(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.start).as_secs_f64() * self.scale
    }
}

/// One scenario, one strategy, one seed: fresh backends, a fresh proxy, the load.
async fn run(
    args: &Args,
    scenario: &Scenario,
    chooser: Chooser,
    model: Option<&RouteModel>,
    seed: u64,
) -> anyhow::Result<Run> {
    let scale = scenario.duration_secs / args.duration_secs;
    let arrivals = arrivals(scenario, args, scale, seed);
    // Everything is set up before the clock starts: the backends read it when a request
    // comes, and none comes before.
    let start = Arc::new(std::sync::OnceLock::new());
    let mut backends = Vec::new();
    for (index, spec) in scenario.backends.iter().enumerate() {
        backends
            .push(BackendServer::start(index, spec.clone(), scenario, seed, start.clone()).await?);
    }
    let (proxy, proxy_addr, stop_proxy, proxy_task) =
        start_proxy(scenario, chooser, model, &backends).await?;

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(4096)
        .build(connector);
    let uri: Uri = format!("http://{proxy_addr}/")
        .parse()
        .context("the proxy's URI")?;
    let per_attempt = Duration::from_secs_f64(scenario.timeout_ms / 1000.0);
    let client_timeout = per_attempt * (scenario.retries + 1) + Duration::from_secs(1);

    let clocks = Clocks {
        start: Instant::now(),
        scale,
    };
    if start.set(clocks).is_err() {
        bail!("the run's clock was started twice");
    }
    let modes = Arc::new(ModeCounts::default());
    let sampler = (chooser == Chooser::Model)
        .then(|| tokio::spawn(sample_modes(proxy.clone(), modes.clone())));
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let mut requests = JoinSet::new();
    for (i, at) in arrivals.iter().enumerate() {
        let due = clocks.start + *at;
        tokio::time::sleep_until(due.into()).await;
        let request = Request::get(uri.clone())
            .header(REQUEST_ID, i)
            .body(Empty::new())
            .context("a request")?;
        let client = client.clone();
        let counted = *at >= warmup;
        requests.spawn(async move {
            let answered = tokio::time::timeout(client_timeout, async {
                let response = client.request(request).await.ok()?;
                let ok = response.status().is_success();
                response.into_body().collect().await.ok()?;
                Some(ok)
            })
            .await;
            let ok = matches!(answered, Ok(Some(true)));
            (counted, due.elapsed(), ok)
        });
    }
    let mut latencies = Vec::with_capacity(arrivals.len());
    let mut failed = 0;
    while let Some(joined) = requests.join_next().await {
        let (counted, latency, ok) = joined.context("a request's task")?;
        if counted {
            latencies.push(latency);
            failed += u64::from(!ok);
        }
    }
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    let fallbacks = modes
        .fallbacks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let _ = stop_proxy.send(());
    proxy_task.abort();
    let attempts = backends.iter().map(|b| b.attempts()).collect();
    for b in backends {
        b.stop();
    }
    Ok(Run {
        latencies,
        failed,
        attempts,
        model_samples: modes.model.load(Ordering::Relaxed),
        mode_samples: modes.all.load(Ordering::Relaxed),
        fallbacks,
    })
}

/// The send times of one run, from its start: a Poisson process at the scenario's rate at
/// each moment (scaled), from the seed alone.
fn arrivals(scenario: &Scenario, args: &Args, scale: f64, seed: u64) -> Vec<Duration> {
    let mut rng = fastrand::Rng::with_seed(mix(&[seed, ARRIVALS]));
    let steps: Vec<(f64, f64)> = scenario
        .arrivals
        .schedule
        .iter()
        .map(|s| (s.at_secs / scale, s.rate_per_sec * args.rate_scale))
        .collect();
    let end = args.duration_secs;
    let mut out = Vec::new();
    let mut t = 0.0;
    while t < end {
        let rate = steps
            .iter()
            .rfind(|(at, _)| *at <= t)
            .map_or(scenario.arrivals.rate_per_sec * args.rate_scale, |s| s.1);
        let boundary = steps
            .iter()
            .map(|(at, _)| *at)
            .find(|&at| at > t)
            .unwrap_or(end)
            .min(end);
        if rate > 0.0 {
            let gap = -(1.0 - rng.f64()).ln() / rate;
            if t + gap < boundary {
                t += gap;
                out.push(Duration::from_secs_f64(t));
                continue;
            }
        }
        // Memoryless: start again at the boundary with its rate.
        t = boundary;
    }
    out
}

/// How often a run's model strategy found the model choosing, and the fallbacks seen.
#[derive(Debug, Default)]
struct ModeCounts {
    model: AtomicU64,
    all: AtomicU64,
    fallbacks: std::sync::Mutex<Vec<&'static str>>,
}

/// Reads the route's mode into `counts` every [`MODE_SAMPLE`], until aborted.
async fn sample_modes(proxy: Proxy, counts: Arc<ModeCounts>) {
    let mut interval = tokio::time::interval(MODE_SAMPLE);
    loop {
        interval.tick().await;
        for (mode, routes) in proxy.route_modes() {
            let routes = routes as u64;
            counts.all.fetch_add(routes, Ordering::Relaxed);
            match mode {
                Mode::Model => {
                    counts.model.fetch_add(routes, Ordering::Relaxed);
                }
                Mode::Fallback(_) => {
                    let mut seen = counts
                        .fallbacks
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if !seen.contains(&mode.as_str()) {
                        seen.push(mode.as_str());
                    }
                }
            }
        }
    }
}

/// The proxy with one route over `backends`, choosing by `chooser`, listening on port 0.
async fn start_proxy(
    scenario: &Scenario,
    chooser: Chooser,
    model: Option<&RouteModel>,
    backends: &[BackendServer],
) -> anyhow::Result<(Proxy, SocketAddr, oneshot::Sender<()>, JoinHandle<()>)> {
    let cache = Cache::open(CacheConfig {
        name: "route-real".into(),
        memory_bytes: 1 << 20,
        disk: None,
        max_object_bytes: 1 << 16,
        clock: Clock::system(),
    })
    .context("the proxy's cache")?;
    let settings = Settings {
        via: ViaName::new("route-real").context("a Via name")?,
        cache_name: CacheName::new("route-real").context("a cache name")?,
        max_body_bytes: 1024,
    };
    let proxy = Proxy::new(settings, cache, ProxyMetrics::default());
    // A workload target with no instance: its origins are its backends, in one tier.
    let mut targets = vec![WeightedTarget {
        target: Target::Workload {
            workload: "route-real".into(),
            port: 80,
        },
        weight: 1,
    }];
    targets.extend(backends.iter().map(|b| WeightedTarget {
        target: Target::Origin(Origin {
            host: b.addr.ip().to_string(),
            port: b.addr.port(),
            base_path: String::new(),
        }),
        weight: 1,
    }));
    let route = Route {
        name: "route-real".into(),
        host: None,
        path_prefix: None,
        targets,
        settings: RouteSettings {
            timeout: Duration::from_secs_f64(scenario.timeout_ms / 1000.0),
            retries: scenario.retries,
            cache: false,
            stale_if_offline: None,
            balance: chooser.balance(),
        },
    };
    if chooser == Chooser::Model {
        let Some(model) = model else {
            bail!("the model strategy without a model");
        };
        proxy.set_route_model(model.clone());
    }
    proxy.set_routing(Routing {
        table: RouteTable::new(vec![route]).context("the route")?,
        ..Routing::default()
    });
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the proxy")?;
    let addr = listener.local_addr().context("the proxy's address")?;
    let (stop, stopped) = oneshot::channel::<()>();
    // A hanging backend holds a connection per request until the timeout: room for them.
    let limits = Limits {
        max_connections: 8192,
        ..Limits::default()
    };
    let task = tokio::spawn(edge_proxy::serve(listener, limits, proxy.clone(), async {
        let _ = stopped.await;
    }));
    Ok((proxy, addr, stop, task))
}

/// One scenario backend, serving HTTP on `127.0.0.1:0` as the simulator's backend behaves.
#[derive(Debug)]
struct BackendServer {
    addr: SocketAddr,
    state: Arc<BackendState>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct BackendState {
    index: u64,
    spec: BackendSpec,
    timeout: Duration,
    seed: u64,
    workers: Semaphore,
    start: Arc<std::sync::OnceLock<Clocks>>,
    attempts: AtomicU64,
    /// Numbers for requests that came without one (none should).
    unnumbered: AtomicU64,
}

impl BackendServer {
    async fn start(
        index: usize,
        spec: BackendSpec,
        scenario: &Scenario,
        seed: u64,
        start: Arc<std::sync::OnceLock<Clocks>>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a backend")?;
        let addr = listener.local_addr().context("a backend's address")?;
        let workers = usize::try_from(spec.workers).context("workers")?;
        let state = Arc::new(BackendState {
            index: index as u64,
            spec,
            timeout: Duration::from_secs_f64(scenario.timeout_ms / 1000.0),
            seed,
            workers: Semaphore::new(workers),
            start,
            attempts: AtomicU64::new(0),
            unnumbered: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept(listener, state.clone()));
        Ok(Self { addr, state, task })
    }

    fn attempts(&self) -> u64 {
        self.state.attempts.load(Ordering::Relaxed)
    }

    /// Stops accepting and drops every connection (the tasks serving them are the accept
    /// task's, and go with it).
    fn stop(self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, state: Arc<BackendState>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors, most likely: the proxy will time out and retry.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.answer(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

impl BackendState {
    /// One attempt, as `edge_sim::sim` plays it: out, maybe refused or hung, queued, served,
    /// back.
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let id = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| u64::MAX - self.unnumbered.fetch_add(1, Ordering::Relaxed));
        let Some(clocks) = self.start.get().copied() else {
            return status(StatusCode::SERVICE_UNAVAILABLE);
        };
        let b = &self.spec;
        // The same draws, in the same order, as the simulator's `send`.
        let mut rng = fastrand::Rng::with_seed(mix(&[self.seed, id, self.index]));
        let draw = b.draw(&mut rng);
        let (refused, service_ms) = (draw.refused, draw.service_ms);
        let one_way = Duration::from_secs_f64(draw.one_way_ms / 1000.0);

        tokio::time::sleep(one_way).await;
        match b.down_at(clocks.scenario_secs(Instant::now())) {
            Some(DownMode::Hang) => {
                // Past the proxy's timeout: it has given up on this attempt by then.
                tokio::time::sleep(self.timeout * 3).await;
                return status(StatusCode::SERVICE_UNAVAILABLE);
            }
            Some(DownMode::Refuse) => return self.refuse(one_way).await,
            None if refused => return self.refuse(one_way).await,
            None => {}
        }
        let Ok(worker) = self.workers.acquire().await else {
            return status(StatusCode::SERVICE_UNAVAILABLE);
        };
        let busy = b
            .workers
            .saturating_sub(u32::try_from(self.workers.available_permits()).unwrap_or(0));
        let t = clocks.scenario_secs(Instant::now());
        let served = (b.served_ms(service_ms, t, busy) / 1000.0).clamp(0.0, 3600.0);
        tokio::time::sleep(Duration::from_secs_f64(served)).await;
        drop(worker);
        tokio::time::sleep(one_way).await;
        let mut response = Response::new(Full::new(Bytes::from_static(b"ok\n")));
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        response
    }

    /// Refused after about a millisecond, and the way back.
    async fn refuse(&self, one_way: Duration) -> Response<Full<Bytes>> {
        tokio::time::sleep(Duration::from_millis(1) + one_way).await;
        status(StatusCode::SERVICE_UNAVAILABLE)
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

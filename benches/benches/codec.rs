//! Wire codec: how fast frames encode and decode, and how fast `FrameDecoder` splits a stream.
//!
//! Criterion measures each case on its own. Then, because this box is shared and noisy, a
//! side-by-side pass runs each case and its anchor alternating, several rounds, and prints the
//! medians and the ratio (see /work/shared/BENCHMARKS.md). Anchors:
//! - encode/decode: `serde_json` on the same values, the format an HTTP/JSON agent would use;
//! - `FrameDecoder`: a decoder with a read cursor over one buffer, compacted once per push,
//!   that lends out frame bodies instead of copying each into its own `Vec` (defined below).
//!   No published anchor exists for this; it shows what the copies cost.
//!
//! Run: `cargo bench -p edge-benches --bench codec`.

use criterion::{BenchmarkId, Criterion, Throughput};
use edge_benches::fixtures;
use edge_benches::stats::median_f64;
use edge_proto::{FrameDecoder, Intent, NodeMsg, decode, encode};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Bytes per push into the decoder: one Ethernet MTU, about what one read returns.
const CHUNK: usize = 1500;
/// Frames in each decoder stream.
const STREAM_FRAMES: usize = 10_000;
/// Rounds of the side-by-side pass, and the time of each measurement in a round.
const ROUNDS: usize = 15;
const SLICE: Duration = Duration::from_millis(20);

struct Frame {
    name: &'static str,
    msg: NodeMsg,
    /// The whole frame: prefix and postcard body.
    wire: Vec<u8>,
    json: Vec<u8>,
    /// Whether the JSON decodes back into the message. `Blob` (the CSR) reads only byte
    /// strings and serde_json has none: bytes go out as a number array that cannot come back.
    json_decodes: bool,
}

impl Frame {
    fn new(name: &'static str, msg: NodeMsg) -> Self {
        let wire = encode(&msg);
        let json = serde_json::to_vec(&msg).expect("wire types serialize to JSON");
        let json_decodes = serde_json::from_slice::<NodeMsg>(&json).is_ok_and(|m| m == msg);
        Self {
            name,
            msg,
            wire,
            json,
            json_decodes,
        }
    }

    fn body(&self) -> &[u8] {
        &self.wire[edge_proto::frame::PREFIX_LEN..]
    }
}

struct Stream {
    name: &'static str,
    bytes: Vec<u8>,
    frames: usize,
}

fn frames() -> Vec<Frame> {
    let key = rcgen::KeyPair::generate().expect("P-256 key");
    let csr = fixtures::csr_of_about(&key, 500).expect("CSR");
    println!(
        "fixtures: the EnrollRequest carries a {}-byte CSR",
        csr.len()
    );
    let enroll = fixtures::enroll_request(
        "a1b2c3.0123456789abcdef0123456789abcdef",
        "shop-berlin-0042-gw",
        csr,
    )
    .expect("CSR fits a Der");
    vec![
        Frame::new("status", NodeMsg::Status(fixtures::status(86_400))),
        Frame::new(
            "capabilities",
            NodeMsg::Capabilities(Box::new(fixtures::capabilities("shop-berlin-0042-gw"))),
        ),
        Frame::new("enroll_request", NodeMsg::Enroll(Box::new(enroll))),
    ]
}

fn streams() -> Vec<Stream> {
    let status: Vec<u8> = (0..STREAM_FRAMES)
        .flat_map(|i| encode(&NodeMsg::Status(fixtures::status(i as u64))))
        .collect();
    // A session as it runs: capabilities after every welcome, then status reports.
    let caps = encode(&NodeMsg::Capabilities(Box::new(fixtures::capabilities(
        "shop-berlin-0042-gw",
    ))));
    let hello = encode(&fixtures::hello(Intent::Session, None));
    let mixed: Vec<u8> = (0..STREAM_FRAMES)
        .flat_map(|i| match i % 10 {
            0 => hello.clone(),
            1 => caps.clone(),
            _ => encode(&NodeMsg::Status(fixtures::status(i as u64))),
        })
        .collect();
    vec![
        Stream {
            name: "status_only",
            bytes: status,
            frames: STREAM_FRAMES,
        },
        Stream {
            name: "session_mix",
            bytes: mixed,
            frames: STREAM_FRAMES,
        },
    ]
}

/// Pushes `bytes` in [`CHUNK`]-byte pieces and takes out every frame body. Returns the count.
fn split_stream(bytes: &[u8]) -> usize {
    let mut dec = FrameDecoder::new();
    let mut n = 0;
    for chunk in bytes.chunks(CHUNK) {
        dec.push(chunk);
        while let Some(body) = dec.next_body().expect("valid stream") {
            black_box(&body);
            n += 1;
        }
    }
    n
}

/// As [`split_stream`], decoding each frame into a message too.
fn decode_stream(bytes: &[u8]) -> usize {
    let mut dec = FrameDecoder::new();
    let mut n = 0;
    for chunk in bytes.chunks(CHUNK) {
        dec.push(chunk);
        while let Some(msg) = dec.next_msg::<NodeMsg>().expect("valid stream") {
            black_box(&msg);
            n += 1;
        }
    }
    n
}

/// The anchor decoder: one buffer with a read cursor. A push compacts what is left once and
/// appends; a frame is handed out as a borrowed slice, so nothing is copied per frame. This is
/// the design `FrameDecoder` could have; it checks the same length limit.
#[derive(Default)]
struct CursorDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl CursorDecoder {
    fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn next_body(&mut self) -> Option<&[u8]> {
        let prefix = self.buf.get(self.start..)?.first_chunk::<4>()?;
        let len = edge_proto::frame::body_len(*prefix).expect("valid stream");
        let body_start = self.start + 4;
        let body = self.buf.get(body_start..body_start + len)?;
        self.start = body_start + len;
        Some(body)
    }
}

/// As [`split_stream`], with the cursor decoder.
fn cursor_split(bytes: &[u8]) -> usize {
    let mut dec = CursorDecoder::default();
    let mut n = 0;
    for chunk in bytes.chunks(CHUNK) {
        dec.push(chunk);
        while let Some(body) = dec.next_body() {
            black_box(body);
            n += 1;
        }
    }
    n
}

/// As [`decode_stream`], with the cursor decoder.
fn cursor_decode(bytes: &[u8]) -> usize {
    let mut dec = CursorDecoder::default();
    let mut n = 0;
    for chunk in bytes.chunks(CHUNK) {
        dec.push(chunk);
        while let Some(body) = dec.next_body() {
            black_box(decode::<NodeMsg>(body).expect("valid stream"));
            n += 1;
        }
    }
    n
}

fn criterion_benches(c: &mut Criterion, frames: &[Frame], streams: &[Stream]) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    for f in frames {
        group.bench_with_input(BenchmarkId::new("postcard", f.name), &f.msg, |b, m| {
            b.iter(|| encode(black_box(m)))
        });
        group.bench_with_input(BenchmarkId::new("json", f.name), &f.msg, |b, m| {
            b.iter(|| serde_json::to_vec(black_box(m)).expect("serializes"))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    for f in frames {
        group.bench_with_input(BenchmarkId::new("postcard", f.name), f.body(), |b, body| {
            b.iter(|| decode::<NodeMsg>(black_box(body)).expect("decodes"))
        });
        if f.json_decodes {
            group.bench_with_input(BenchmarkId::new("json", f.name), &f.json, |b, json| {
                b.iter(|| serde_json::from_slice::<NodeMsg>(black_box(json)).expect("decodes"))
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("frame_decoder");
    for s in streams {
        group.throughput(Throughput::Bytes(s.bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("split", s.name), &s.bytes, |b, bytes| {
            b.iter(|| split_stream(black_box(bytes)))
        });
        group.bench_with_input(
            BenchmarkId::new("split_and_decode", s.name),
            &s.bytes,
            |b, bytes| b.iter(|| decode_stream(black_box(bytes))),
        );
        group.bench_with_input(
            BenchmarkId::new("cursor_split", s.name),
            &s.bytes,
            |b, bytes| b.iter(|| cursor_split(black_box(bytes))),
        );
        group.bench_with_input(
            BenchmarkId::new("cursor_split_and_decode", s.name),
            &s.bytes,
            |b, bytes| b.iter(|| cursor_decode(black_box(bytes))),
        );
    }
    group.finish();
}

/// Nanoseconds per call of `f`, measured over about [`SLICE`].
fn ns_per_call(iters: u64, f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

/// How many calls of `f` fill about [`SLICE`].
fn calibrate(f: &mut dyn FnMut()) -> u64 {
    let mut iters = 1u64;
    loop {
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        let took = start.elapsed();
        if took >= SLICE / 4 || iters >= 1 << 30 {
            let per = took.as_secs_f64() / iters as f64;
            return ((SLICE.as_secs_f64() / per.max(1e-12)) as u64).max(1);
        }
        iters *= 2;
    }
}

/// Runs `ours` and `anchor` alternating for [`ROUNDS`] rounds (swapping which goes first) and
/// returns their median ns per call.
fn side_by_side(ours: &mut dyn FnMut(), anchor: &mut dyn FnMut()) -> (f64, f64) {
    let (n_ours, n_anchor) = (calibrate(ours), calibrate(anchor));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            a.push(ns_per_call(n_ours, ours));
            b.push(ns_per_call(n_anchor, anchor));
        } else {
            b.push(ns_per_call(n_anchor, anchor));
            a.push(ns_per_call(n_ours, ours));
        }
    }
    (
        median_f64(&a).unwrap_or(f64::NAN),
        median_f64(&b).unwrap_or(f64::NAN),
    )
}

fn rate(ns: f64, bytes: usize) -> String {
    let per_sec = 1e9 / ns;
    format!(
        "{:>9.1} ns {:>7.2} M frames/s {:>8.1} MB/s",
        ns,
        per_sec / 1e6,
        per_sec * bytes as f64 / 1e6
    )
}

fn print_side_by_side(frames: &[Frame], streams: &[Stream]) {
    println!();
    println!(
        "side by side: {ROUNDS} rounds alternating, ~{} ms each, medians; \
         ratio = anchor time / our time (> 1: we are faster)",
        SLICE.as_millis()
    );
    for f in frames {
        let (ours, anchor) = side_by_side(
            &mut || {
                black_box(encode(black_box(&f.msg)));
            },
            &mut || {
                black_box(serde_json::to_vec(black_box(&f.msg)).expect("serializes"));
            },
        );
        println!(
            "encode {:<15} postcard {:>5} B {}  | json {:>5} B {}  | ratio {:.2}x",
            f.name,
            f.wire.len(),
            rate(ours, f.wire.len()),
            f.json.len(),
            rate(anchor, f.json.len()),
            anchor / ours
        );
        println!(
            "metric codec.encode.{}.postcard_ns {ours:.1}\nmetric codec.encode.{}.json_ns {anchor:.1}\n\
             metric codec.encode.{}.postcard_bytes {}\nmetric codec.encode.{}.json_bytes {}",
            f.name,
            f.name,
            f.name,
            f.wire.len(),
            f.name,
            f.json.len()
        );
    }
    for f in frames {
        let body = f.body();
        if f.json_decodes {
            let (ours, anchor) = side_by_side(
                &mut || {
                    black_box(decode::<NodeMsg>(black_box(body)).expect("decodes"));
                },
                &mut || {
                    black_box(
                        serde_json::from_slice::<NodeMsg>(black_box(&f.json)).expect("decodes"),
                    );
                },
            );
            println!(
                "decode {:<15} postcard {:>5} B {}  | json {:>5} B {}  | ratio {:.2}x",
                f.name,
                f.wire.len(),
                rate(ours, f.wire.len()),
                f.json.len(),
                rate(anchor, f.json.len()),
                anchor / ours
            );
            println!(
                "metric codec.decode.{}.postcard_ns {ours:.1}\nmetric codec.decode.{}.json_ns {anchor:.1}",
                f.name, f.name
            );
        } else {
            let (ours, _) = side_by_side(
                &mut || {
                    black_box(decode::<NodeMsg>(black_box(body)).expect("decodes"));
                },
                &mut || {},
            );
            println!(
                "decode {:<15} postcard {:>5} B {}  | json: no anchor, a Blob does not decode \
                 from JSON's number array",
                f.name,
                f.wire.len(),
                rate(ours, f.wire.len()),
            );
            println!("metric codec.decode.{}.postcard_ns {ours:.1}", f.name);
        }
    }
    for s in streams {
        let avg = s.bytes.len() / s.frames;
        for (what, run, anchor_run) in [
            (
                "split",
                split_stream as fn(&[u8]) -> usize,
                cursor_split as fn(&[u8]) -> usize,
            ),
            ("split_and_decode", decode_stream, cursor_decode),
        ] {
            let (ours, anchor) = side_by_side(
                &mut || {
                    black_box(run(black_box(&s.bytes)));
                },
                &mut || {
                    black_box(anchor_run(black_box(&s.bytes)));
                },
            );
            let (ours_f, anchor_f) = (ours / s.frames as f64, anchor / s.frames as f64);
            println!(
                "FrameDecoder {what:<16} {:<12} {} frames, {} B in {CHUNK} B pushes: {}  | \
                 cursor decoder {}  | ratio {:.2}x",
                s.name,
                s.frames,
                s.bytes.len(),
                rate(ours_f, avg),
                rate(anchor_f, avg),
                anchor / ours
            );
            println!(
                "metric codec.frame_decoder.{what}.{}.ns_per_frame {ours_f:.1}\n\
                 metric codec.frame_decoder.{what}.{}.mb_per_s {:.1}\n\
                 metric codec.frame_decoder.cursor_{what}.{}.ns_per_frame {anchor_f:.1}",
                s.name,
                s.name,
                s.bytes.len() as f64 * 1e3 / ours,
                s.name
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs each case once with --test; skip the timing pass then.
    let quick = args.iter().any(|a| a == "--test" || a == "--list");
    let frames = frames();
    let streams = streams();
    for s in &streams {
        assert_eq!(split_stream(&s.bytes), s.frames, "stream {} splits", s.name);
        assert_eq!(cursor_split(&s.bytes), s.frames, "stream {} splits", s.name);
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    criterion_benches(&mut c, &frames, &streams);
    c.final_summary();
    if !quick {
        print_side_by_side(&frames, &streams);
    }
}

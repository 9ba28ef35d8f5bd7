//! Memory of `kind = "s3"` on a bucket with many objects: the source polls a moto bucket
//! of `BENCH_S3_OBJECTS` objects (default 10000) in-process, with a counting allocator,
//! and prints the peak heap the poll adds. Not a test: it prints numbers.
//!
//! Two polls are measured: the first publishes every object (with up to
//! `MAX_IN_FLIGHT` events unacknowledged, as the bridge allows); the second finds them
//! all unchanged (a full merge-join of the listing with the cursor file) and one new
//! object at the end. By design the figure depends on the page size and the in-flight
//! window, not on the number of objects.
//!
//! Run: `scripts/bench.sh` (starts moto), or `cargo bench --bench s3_listing` with moto
//! on 127.0.0.1:9000.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use broker_bridge::config::KindCatalog;
use broker_bridge::sources::{ConnectContext, KINDS};
use futures::StreamExt;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        pointer
    }
    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        CURRENT.fetch_sub(layout.size(), Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ENDPOINT: &str = "http://127.0.0.1:9000";
const MAX_IN_FLIGHT: usize = 256;

fn main() {
    let objects: usize = std::env::var("BENCH_S3_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(objects));
}

async fn run(objects: usize) {
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "bench"))
            .endpoint_url(ENDPOINT)
            .force_path_style(true)
            .build(),
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let bucket = format!("bench-{nanos:x}");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("moto S3 on 127.0.0.1:9000 (scripts/brokers.sh moto)");
    let started = Instant::now();
    let keys: Vec<String> = (0..objects)
        .map(|n| format!("artifacts/build-{n:06}/output.bin"))
        .collect();
    futures::stream::iter(keys)
        .map(|key| {
            let s3 = s3.clone();
            let bucket = bucket.clone();
            async move {
                s3.put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(vec![b'x'; 64].into())
                    .send()
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    println!(
        "s3: {objects} objects put in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let state = tempfile::tempdir().unwrap();
    let table = serde_json::json!({
        "bucket": bucket,
        "endpoint_url": ENDPOINT,
        "access_key_id": "test",
        "secret_access_key": "test",
        "poll_interval": "1s",
    });
    let spec = KINDS
        .parse("s3", table.as_object().unwrap().clone())
        .unwrap();
    let context = ConnectContext {
        bridge: "bench".into(),
        max_in_flight: MAX_IN_FLIGHT,
        state_dir: state.path().to_owned(),
        ..Default::default()
    };
    let mut source = KINDS.connect(&spec, &context).await.unwrap();

    // Poll 1: every object is new.
    let baseline = CURRENT.load(Relaxed);
    PEAK.store(baseline, Relaxed);
    let started = Instant::now();
    let mut window = VecDeque::new();
    for _ in 0..objects {
        let incoming = source.next().await.unwrap();
        window.push_back(incoming.ack);
        if window.len() >= MAX_IN_FLIGHT {
            window.pop_front().unwrap().ack().await.unwrap();
        }
    }
    while let Some(ack) = window.pop_front() {
        ack.ack().await.unwrap();
    }
    let first_peak = PEAK.load(Relaxed).saturating_sub(baseline);
    let first_time = started.elapsed();

    // Poll 2: nothing changed but one object added after all the others.
    s3.put_object()
        .bucket(&bucket)
        .key("zz-last")
        .body(vec![b'y'; 8].into())
        .send()
        .await
        .unwrap();
    let baseline = CURRENT.load(Relaxed);
    PEAK.store(baseline, Relaxed);
    let started = Instant::now();
    let last = source.next().await.unwrap();
    assert_eq!(last.meta.subject.as_deref(), Some("zz-last"));
    last.ack.ack().await.unwrap();
    let second_peak = PEAK.load(Relaxed).saturating_sub(baseline);
    let index = std::fs::metadata(state.path().join("s3/bench.index"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "s3: poll of {objects} new objects (page 1000, {MAX_IN_FLIGHT} in flight): {:.1}s, peak heap added {} KiB",
        first_time.as_secs_f64(),
        first_peak / 1024
    );
    println!(
        "s3: poll of {objects} unchanged objects + 1 new (merge-join with the cursor): {:.1}s, peak heap added {} KiB (includes the 1s poll wait)",
        started.elapsed().as_secs_f64(),
        second_peak / 1024
    );
    println!("s3: cursor file {} KiB on disk", index / 1024);
}

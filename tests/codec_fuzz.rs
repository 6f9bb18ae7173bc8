//! Property tests of the frame codec and every message decoder: random and
//! mutated bytes never panic, never make the decoder allocate more than the
//! bytes received allow, and valid messages round-trip.

use actord::protocol::conn::{decode, encode, FrameCodec};
use actord::protocol::*;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use tokio_util::codec::{Decoder, Encoder};

/// Counts, per thread, the bytes live now and the peak since the last reset.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|l| {
            let now = l.get() + layout.size();
            l.set(now);
            let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
        });
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(layout.size())));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak bytes allocated (beyond what was live before) while running `f`.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(|p| p.get()) - base)
}

/// Decodes `frame` as every message type; checks allocation stays within
/// what the frame's size allows (each value at most a few hundred bytes
/// in memory per byte on the wire, plus a small constant).
fn decode_all(frame: &[u8]) {
    let bound = 512 * frame.len() + (64 << 10);
    macro_rules! each {
        ($($t:ty),*) => {$(
            let (_, peak) = peak_during(|| decode::<$t>(frame).is_ok());
            assert!(peak <= bound, "{}: {peak} bytes allocated for a {}-byte frame", stringify!($t), frame.len());
        )*};
    }
    each!(Hello, HelloReply, FromWorker, ToWorker, FromClient, ToClient, FromNanny, ToNanny);
}

fn arb_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|r| Outcome::Ok { result: Bytes::from(r) }),
        ".{0,40}".prop_map(Outcome::err),
        (".{0,40}", any::<u64>(), "[0-9a-f]{0,64}").prop_map(|(path, size, checksum)| {
            Outcome::Stored(actord::protocol::StoredResult { path, size, checksum })
        }),
    ]
}

fn arb_task_spec() -> impl Strategy<Value = TaskSpec> {
    (
        proptest::option::of("[a-z0-9]{1,8}"),
        "[a-z]{1,8}",
        prop::collection::vec(any::<u8>(), 0..32),
        any::<i32>(),
        any::<u32>(),
        proptest::option::of(any::<u64>()),
        prop::collection::btree_map("[a-z]{1,4}", any::<u64>(), 0..3),
        prop::collection::vec("[a-z0-9]{1,4}", 0..3),
    )
        .prop_map(|(key, name, args, priority, retries, time_limit_ms, resources, deps)| TaskSpec {
            key,
            kind: TaskKind::Fn { name, args },
            max_worker_kills: None,
            deps: deps.into_iter().map(Dep::key).collect(),
            priority,
            retries,
            time_limit_ms,
            resources,
            time_request_ms: None,
        })
}

fn arb_from_worker() -> impl Strategy<Value = FromWorker> {
    let report = (any::<u64>(), any::<u32>(), any::<u32>(), arb_outcome(), any::<u64>()).prop_map(
        |(job, idx, attempt, outcome, micros)| TaskReport {
            task: actord::ids::TaskId { job: actord::ids::JobId(uuid::Uuid::from_u64_pair(job, 1)), idx },
            attempt,
            outcome,
            micros,
            executor_died: false,
            lost_inputs: Vec::new(),
        },
    );
    prop_oneof![
        (any::<u64>(), prop::collection::vec(report, 0..8))
            .prop_map(|(batch, reports)| FromWorker::Reports { batch, reports }),
        any::<u64>().prop_map(|rss_kib| FromWorker::Heartbeat { rss_kib }),
        Just(FromWorker::Goodbye),
    ]
}

fn arb_from_client() -> impl Strategy<Value = FromClient> {
    prop_oneof![
        ("[a-z]{0,8}", prop::collection::vec(arb_task_spec(), 0..6)).prop_map(|(name, tasks)| {
            FromClient::Submit {
                job: actord::ids::JobId(uuid::Uuid::new_v4()),
                name,
                tasks,
                functions: vec![],
            }
        }),
        Just(FromClient::Status),
        Just(FromClient::Workers),
        ".{0,20}".prop_map(|level| FromClient::LogLevel { level }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_nor_bloat(frame in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_all(&frame);
    }

    #[test]
    fn mutated_messages_never_panic_nor_bloat(
        msg in arb_from_client(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut frame = encode(&msg).unwrap().to_vec();
        for (at, byte) in flips {
            let i = at.index(frame.len());
            frame[i] = byte;
        }
        decode_all(&frame);
        let end = cut.index(frame.len() + 1);
        decode_all(&frame[..end]);
    }

    #[test]
    fn valid_messages_round_trip(c in arb_from_client(), w in arb_from_worker()) {
        let frame = encode(&c).unwrap();
        let back: FromClient = decode(&frame).unwrap();
        prop_assert_eq!(encode(&back).unwrap(), frame);
        let frame = encode(&w).unwrap();
        let back: FromWorker = decode(&frame).unwrap();
        prop_assert_eq!(encode(&back).unwrap(), frame);
    }

    #[test]
    fn the_codec_reassembles_frames_split_anywhere(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8),
        split in prop::collection::vec(1usize..64, 1..40),
    ) {
        let mut codec = FrameCodec::new(1024);
        let mut wire = BytesMut::new();
        for p in &payloads {
            codec.encode(Bytes::from(p.clone()), &mut wire).unwrap();
        }
        let mut got = Vec::new();
        let mut buf = BytesMut::new();
        let mut rest = &wire[..];
        let mut sizes = split.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f.to_vec());
            }
        }
        prop_assert_eq!(got, payloads);
    }

    #[test]
    fn random_streams_never_panic_the_codec(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut codec = FrameCodec::new(100);
        let mut buf = BytesMut::from(&bytes[..]);
        let (_, peak) = peak_during(|| while let Ok(Some(_)) = codec.decode(&mut buf) {});
        prop_assert!(peak <= 1024, "{} bytes allocated", peak);
    }
}

/// A submission that declares four billion tasks in a few bytes: refused
/// without reserving room for them (serde would reserve up to 1 MiB).
#[test]
fn a_declared_length_is_not_believed() {
    let job = actord::ids::JobId(uuid::Uuid::new_v4());
    let mut frame =
        encode(&FromClient::Submit { job, name: String::new(), tasks: vec![], functions: vec![] })
            .unwrap()
            .to_vec();
    assert_eq!(frame.pop(), Some(0x90), "ends with the empty function table");
    frame.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    let (ok, peak) = peak_during(|| decode::<FromClient>(&frame).is_ok());
    assert!(!ok);
    assert!(peak < 4096, "{peak} bytes allocated for a {}-byte frame", frame.len());
    // The allocator does count: a real submission allocates.
    let tasks = vec![TaskSpec::new(TaskKind::Fn { name: "inc".into(), args: vec![1] }); 100];
    let frame = encode(&FromClient::Submit { job, name: "x".into(), tasks, functions: vec![] }).unwrap();
    let (ok, peak) = peak_during(|| decode::<FromClient>(&frame).is_ok());
    assert!(ok && peak > 100 * std::mem::size_of::<TaskSpec>(), "{peak}");
}

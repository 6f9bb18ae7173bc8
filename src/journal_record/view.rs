//! Task specs read straight from the journal's bytes:
//! names, keys and arguments borrowed, not copied, so replay allocates
//! nothing per task for what a job's tasks share. Whatever the fast path
//! does not know is decoded as before, so both read the same records.

use super::msgpack::Reader;
use super::{Dep, Resources, TaskKind, TaskSpec};
use std::borrow::Cow;

/// A task spec whose strings and arguments may borrow from stored bytes.
#[derive(Debug, PartialEq)]
pub struct SpecView<'a> {
    pub key: Option<Cow<'a, str>>,
    pub kind: KindView<'a>,
    pub max_worker_kills: Option<u32>,
    pub deps: Vec<Dep>,
    pub priority: i32,
    pub retries: u32,
    pub time_limit_ms: Option<u64>,
    pub resources: Resources,
    pub time_request_ms: Option<u64>,
}

/// What a task runs; arguments borrowed.
#[derive(Debug, PartialEq)]
pub enum KindView<'a> {
    Fn {
        name: Cow<'a, str>,
        args: Cow<'a, [u8]>,
    },
    Py {
        func: u32,
        args: Cow<'a, [u8]>,
    },
    /// A command (owned: its fields are decoded as before).
    Cmd(TaskKind),
}

impl<'a> SpecView<'a> {
    /// A view of an owned spec.
    pub fn of(s: TaskSpec) -> SpecView<'static> {
        let kind = match s.kind {
            TaskKind::Fn { name, args } => KindView::Fn { name: Cow::Owned(name), args: Cow::Owned(args) },
            TaskKind::Py { func, args } => KindView::Py { func, args: Cow::Owned(Vec::from(args)) },
            cmd @ TaskKind::Cmd { .. } => KindView::Cmd(cmd),
        };
        SpecView {
            key: s.key.map(Cow::Owned),
            kind,
            max_worker_kills: s.max_worker_kills,
            deps: s.deps,
            priority: s.priority,
            retries: s.retries,
            time_limit_ms: s.time_limit_ms,
            resources: s.resources,
            time_request_ms: s.time_request_ms,
        }
    }
}

/// Marks a field seen; `None` if it was (the general decoder refuses a duplicate).
fn once(seen: &mut u16, bit: u16) -> Option<()> {
    let first = *seen & bit == 0;
    *seen |= bit;
    first.then_some(())
}

fn opt<T: TryFrom<i128>>(r: &mut Reader) -> Option<Option<T>> {
    if r.nil() {
        return Some(None);
    }
    r.int().ok().map(Some)
}

/// A field's value decoded by serde from its bytes (the rare, owned ones).
fn serde_value<T: serde::de::DeserializeOwned>(r: &mut Reader) -> Option<T> {
    rmp_serde::from_slice(r.value().ok()?).ok()
}

/// The kind of a spec, for `Fn` and `Py` (`None`: another kind or form).
fn kind<'a>(r: &mut Reader<'a>) -> Option<KindView<'a>> {
    if r.map_len().ok()? != 1 {
        return None;
    }
    let fun = match r.key().ok()? {
        b"Fn" => true,
        b"Py" => false,
        _ => return None,
    };
    if !matches!(r.peek(), Some(0x80..=0x8f)) {
        return None;
    }
    let (mut name, mut func, mut args, mut seen) = (None, None, None, 0u16);
    for _ in 0..r.map_len().ok()? {
        match (fun, r.key().ok()?) {
            (true, b"name") => {
                once(&mut seen, 1)?;
                name = Some(r.str().ok()?);
            }
            (false, b"func") => {
                once(&mut seen, 1)?;
                func = Some(r.int::<u32>().ok()?);
            }
            (_, b"args") => {
                once(&mut seen, 2)?;
                args = Some(r.bin().ok()?);
            }
            _ => r.skip().ok()?,
        }
    }
    match (name, func, args) {
        (Some(name), None, Some(args)) => {
            Some(KindView::Fn { name: Cow::Borrowed(name), args: Cow::Borrowed(args) })
        }
        (None, Some(func), Some(args)) => Some(KindView::Py { func, args: Cow::Borrowed(args) }),
        _ => None,
    }
}

/// One named field of a spec into `v`.
fn field<'a>(r: &mut Reader<'a>, v: &mut SpecView<'a>, seen: &mut u16) -> Option<()> {
    let name = r.key().ok()?;
    let bit = match name {
        b"key" => 1,
        b"kind" => 2,
        b"max_worker_kills" => 4,
        b"deps" => 8,
        b"priority" => 16,
        b"retries" => 32,
        b"time_limit_ms" => 64,
        b"resources" => 128,
        b"time_request_ms" => 256,
        _ => return r.skip().ok(),
    };
    once(seen, bit)?;
    match bit {
        1 => v.key = if r.nil() { None } else { Some(Cow::Borrowed(r.str().ok()?)) },
        2 => v.kind = kind(r)?,
        4 => v.max_worker_kills = opt(r)?,
        8 => v.deps = serde_value(r)?,
        16 => v.priority = r.int().ok()?,
        32 => v.retries = r.int().ok()?,
        64 => v.time_limit_ms = opt(r)?,
        128 => v.resources = serde_value(r)?,
        _ => v.time_request_ms = opt(r)?,
    }
    Some(())
}

impl Default for SpecView<'_> {
    fn default() -> Self {
        SpecView {
            key: None,
            kind: KindView::Py { func: 0, args: Cow::Borrowed(&[]) },
            max_worker_kills: None,
            deps: Vec::new(),
            priority: 0,
            retries: 0,
            time_limit_ms: None,
            resources: Resources::new(),
            time_request_ms: None,
        }
    }
}

/// A spec on the fast path into `v` (emptied first): a map of its named
/// fields, as the journal writes it (`None`: left to the general decoder).
fn spec_fast<'a>(r: &mut Reader<'a>, v: &mut SpecView<'a>) -> Option<()> {
    if !matches!(r.peek(), Some(0x80..=0x8f)) {
        return None;
    }
    *v = SpecView::default();
    let mut seen = 0u16;
    for _ in 0..r.map_len().ok()? {
        field(r, v, &mut seen)?;
    }
    (seen & 2 != 0).then_some(())
}

/// The next spec of `r` into `v` (one view reused for a part's specs),
/// borrowing from its bytes where it can.
pub fn read_spec<'a>(r: &mut Reader<'a>, v: &mut SpecView<'a>) -> Result<(), String> {
    let start = r.clone();
    if spec_fast(r, v).is_some() {
        return Ok(());
    }
    *r = start;
    *v = SpecView::of(next_spec_owned(r)?);
    Ok(())
}

/// The next spec of `r`, borrowing from its bytes where it can.
pub fn next_spec<'a>(r: &mut Reader<'a>) -> Result<SpecView<'a>, String> {
    let mut v = SpecView::default();
    read_spec(r, &mut v).map(|_| v)
}

/// The next spec of `r`, owned (decoded as it always was).
pub fn next_spec_owned(r: &mut Reader) -> Result<TaskSpec, String> {
    let bytes = r.value().map_err(|m| m.to_string())?;
    rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::JobId;
    use bytes::Bytes;

    fn specs() -> Vec<TaskSpec> {
        let mut out = Vec::new();
        for i in 0..60u32 {
            let kind = match i % 4 {
                0 => TaskKind::Fn { name: format!("f{}", i % 3), args: vec![i as u8; (i % 5) as usize] },
                1 => TaskKind::Py { func: i, args: Bytes::from(vec![1, 2, i as u8]) },
                2 => TaskKind::Cmd {
                    argv: vec!["echo".into(), i.to_string()],
                    env: vec![("A".into(), "b".into())],
                    discard_output: i % 8 == 2,
                    cwd: (i % 3 == 0).then(|| "/tmp".into()),
                },
                _ => TaskKind::Fn { name: "é".repeat(40), args: vec![0; 300] },
            };
            out.push(TaskSpec {
                key: (i % 3 == 1).then(|| format!("key-{i}")),
                kind,
                max_worker_kills: (i % 5 == 0).then_some(i),
                deps: if i % 7 == 0 {
                    vec![Dep { job: None, key: "a".into() }, Dep { job: Some(JobId::new()), key: "b".into() }]
                } else {
                    Vec::new()
                },
                priority: (i as i32 - 30) * 1000,
                retries: i % 4,
                time_limit_ms: (i % 6 == 0).then_some(u64::MAX - u64::from(i)),
                resources: if i % 9 == 0 { [("gpus".to_string(), 2)].into() } else { Resources::new() },
                time_request_ms: (i % 10 == 0).then_some(5),
            });
        }
        out
    }

    /// What the general decoder makes of the bytes, as a view.
    fn reference(bytes: &[u8]) -> Result<(TaskSpec, usize), String> {
        let mut r = Reader::new(bytes);
        next_spec_owned(&mut r).map(|s| (s, r.pos()))
    }

    #[test]
    fn the_fast_path_reads_what_the_general_decoder_reads() {
        let all = specs();
        let mut bytes = Vec::new();
        for s in &all {
            rmp_serde::encode::write_named(&mut bytes, s).unwrap();
        }
        let mut r = Reader::new(&bytes);
        for s in &all {
            let got = next_spec(&mut r).unwrap();
            assert_eq!(got, SpecView::of(s.clone()));
            if let KindView::Fn { name, args } = &got.kind {
                assert!(matches!((name, args), (Cow::Borrowed(_), Cow::Borrowed(_))), "borrowed: {s:?}");
            }
        }
        assert!(r.is_empty());
    }

    #[test]
    fn unusual_forms_go_to_the_general_decoder_and_agree_with_it() {
        use serde::Serialize;
        let s = TaskSpec {
            key: Some("k".into()),
            ..TaskSpec::new(TaskKind::Fn { name: "inc".into(), args: vec![1] })
        };
        // Positional (an array), an unknown field, a duplicate field, a kind as an array.
        let positional = rmp_serde::to_vec(&s).unwrap();
        let mut unknown = vec![0x83];
        rmp_serde::encode::write(&mut unknown, "later").unwrap();
        unknown.extend(rmp_serde::to_vec(&vec![1, 2]).unwrap());
        unknown.extend(&rmp_serde::to_vec_named(&s).unwrap()[1..]);
        let mut dup = vec![0x83];
        dup.extend(&rmp_serde::to_vec_named(&s).unwrap()[1..]);
        rmp_serde::encode::write(&mut dup, "key").unwrap();
        rmp_serde::encode::write(&mut dup, "again").unwrap();
        let mut kind_array = Vec::new();
        let mut ser = rmp_serde::Serializer::new(&mut kind_array).with_struct_map();
        (std::collections::BTreeMap::from([(
            "kind",
            std::collections::BTreeMap::from([("Fn", ("inc", serde_bytes::Bytes::new(&[1])))]),
        )]))
        .serialize(&mut ser)
        .unwrap();
        for (what, bytes) in
            [("positional", positional), ("unknown", unknown), ("dup", dup), ("kind", kind_array)]
        {
            let mut r = Reader::new(&bytes);
            let got = next_spec(&mut r).map(|v| (format!("{v:?}"), r.pos()));
            let want = reference(&bytes).map(|(s, at)| (format!("{:?}", SpecView::of(s)), at));
            assert_eq!(got.is_ok(), want.is_ok(), "{what}: {got:?} vs {want:?}");
            if let (Ok(g), Ok(w)) = (&got, &want) {
                assert_eq!(g, w, "{what}");
            }
        }
        assert!(next_spec(&mut Reader::new(&[0x81, 0xa3])).is_err(), "truncated");
    }
}

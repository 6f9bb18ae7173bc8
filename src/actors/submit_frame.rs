//! A client's `Submit` frame decoded straight into the job's compact
//! records, one task spec at a time (on the session's reader, off the
//! scheduler's loop): the scheduler never holds the submission's specs.

use crate::core::{Build, JobBuilder, SubmitMsg};
use crate::ids::JobId;
use crate::protocol::conn::{decode_seed, ConnError};
use crate::protocol::TaskSpec;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The bytes a `Submit` frame starts with: a one-key map, the key `"Submit"`.
const SUBMIT_PREFIX: &[u8] = b"\x81\xa6Submit";

/// The fewest bytes one task spec takes on the wire (`{"kind":{"Cmd":{"argv":[""]}}}`
/// is 20): bounds the room made for the tasks a frame claims to hold.
const MIN_SPEC_BYTES: usize = 16;

/// Whether `frame` is a `FromClient::Submit`.
pub fn is_submit(frame: &[u8]) -> bool {
    frame.starts_with(SUBMIT_PREFIX)
}

/// Decodes a `Submit` frame (with `decode`'s checks) into a `SubmitMsg`.
pub fn decode_submit(frame: &[u8]) -> Result<SubmitMsg, ConnError> {
    decode_seed(frame, Outer { room: frame.len() / MIN_SPEC_BYTES })
}

/// The one-key map around the variant.
struct Outer {
    room: usize,
}

impl<'de> DeserializeSeed<'de> for Outer {
    type Value = SubmitMsg;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SubmitMsg, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Outer {
    type Value = SubmitMsg;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Submit message")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SubmitMsg, A::Error> {
        match map.next_key::<String>()?.as_deref() {
            Some("Submit") => map.next_value_seed(Fields { room: self.room }),
            Some(other) => Err(de::Error::unknown_variant(other, &["Submit"])),
            None => Err(de::Error::invalid_length(0, &"one variant")),
        }
    }
}

/// The variant's fields, by name, in any order (unknown ones skipped).
struct Fields {
    room: usize,
}

impl<'de> DeserializeSeed<'de> for Fields {
    type Value = SubmitMsg;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SubmitMsg, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fields {
    type Value = SubmitMsg;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the fields of Submit by name")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SubmitMsg, A::Error> {
        let (mut job, mut name, mut tasks, mut functions) = (None, None, None, None);
        while let Some(key) = map.next_key::<String>()? {
            let dup = match key.as_str() {
                "job" => job.replace(map.next_value::<JobId>()?).is_some(),
                "name" => name.replace(map.next_value::<String>()?).is_some(),
                "tasks" => tasks.replace(map.next_value_seed(Tasks { room: self.room })?).is_some(),
                "functions" => functions.replace(map.next_value::<Vec<bytes::Bytes>>()?).is_some(),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    false
                }
            };
            if dup {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
        }
        Ok(SubmitMsg {
            job: job.ok_or_else(|| de::Error::missing_field("job"))?,
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            tasks: tasks.ok_or_else(|| de::Error::missing_field("tasks"))?,
            functions: functions.unwrap_or_default(),
        })
    }
}

/// The task specs, each compacted as soon as it is decoded.
struct Tasks {
    room: usize,
}

impl<'de> DeserializeSeed<'de> for Tasks {
    type Value = JobBuilder;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<JobBuilder, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Tasks {
    type Value = JobBuilder;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of task specs")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JobBuilder, A::Error> {
        let n = seq.size_hint().ok_or_else(|| de::Error::custom("a list of task specs of unknown length"))?;
        let mut b = JobBuilder::new(n, Build::Submit, n.min(self.room));
        while let Some(spec) = seq.next_element::<TaskSpec>()? {
            b.push(spec.into());
        }
        if b.len() != n {
            return Err(de::Error::invalid_length(b.len(), &"as many task specs as announced"));
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::conn::{decode, encode};
    use crate::protocol::{Dep, FromClient, TaskKind};

    fn specs() -> Vec<TaskSpec> {
        vec![
            TaskSpec {
                key: Some("a".into()),
                ..TaskSpec::new(TaskKind::Fn { name: "inc".into(), args: vec![1] })
            },
            TaskSpec {
                deps: vec![Dep::key("a")],
                ..TaskSpec::new(TaskKind::Py { func: 0, args: bytes::Bytes::from_static(b"p") })
            },
        ]
    }

    #[test]
    fn a_submit_frame_decodes_into_the_records_the_core_would_build() {
        let job = JobId::new();
        let functions = vec![bytes::Bytes::from_static(b"f")];
        let msg = FromClient::Submit { job, name: "j".into(), tasks: specs(), functions: functions.clone() };
        let frame = encode(&msg).unwrap();
        assert!(is_submit(&frame));
        let got = decode_submit(&frame).unwrap();
        let want = SubmitMsg::with_functions(job, "j".into(), specs(), functions.clone());
        assert_eq!((got.job, &got.name, &got.functions), (job, &want.name, &want.functions));
        assert_eq!(got.tasks.len(), 2);
        assert_eq!(got.tasks.digest(&functions), want.tasks.digest(&functions));
        assert!(!is_submit(&encode(&FromClient::Jobs).unwrap()));
    }

    #[test]
    fn bad_submit_frames_are_refused_like_any_bad_frame() {
        let job = JobId::new();
        let msg = FromClient::Submit { job, name: "j".into(), tasks: specs(), functions: vec![] };
        let frame = encode(&msg).unwrap();
        // Truncated, trailing bytes, a field missing: what `decode` refuses.
        for bad in [&frame[..frame.len() - 1], &[&frame[..], &[0xc0]].concat()[..]] {
            assert!(decode_submit(bad).is_err());
            assert!(decode::<FromClient>(bad).is_err());
        }
        #[derive(serde::Serialize)]
        enum Partial {
            Submit { job: JobId, name: String },
        }
        let no_tasks = encode(&Partial::Submit { job, name: "j".into() }).unwrap();
        let e = decode_submit(&no_tasks).err().expect("refused").to_string();
        assert!(e.contains("tasks"), "{e}");
        // A list that claims more specs than the frame holds.
        let mut lie = b"\x81\xa6Submit\x83\xa3job".to_vec();
        lie.extend_from_slice(&encode(&job).unwrap());
        lie.extend_from_slice(b"\xa4name\xa1j\xa5tasks\xdd\xff\xff\xff\xff");
        assert!(decode_submit(&lie).is_err());
    }
}

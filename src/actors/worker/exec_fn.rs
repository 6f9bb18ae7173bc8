//! `fn` tasks: a function of the worker's registry, called on the slot's
//! thread with its args and its inputs' results spliced in.

use crate::functions::{Registry, TaskCtx};
use crate::protocol::{Assignment, Outcome};

/// Runs a `fn` task. A panic is not caught here: it fails the slot, whose
/// supervisor reports the task failed (see `slot`).
pub(super) fn run(registry: &Registry, name: &str, args: &[u8], a: &Assignment) -> Outcome {
    let Some(f) = registry.get(name) else {
        return Outcome::err(format!(
            "unknown function {name:?}; this worker has: {}",
            registry.names().join(", ")
        ));
    };
    let ctx = TaskCtx { task: a.task, attempt: a.attempt };
    match f(&with_inputs(args, &a.inputs), &ctx) {
        Ok(result) => Outcome::Ok { result: result.into() },
        Err(error) => Outcome::err(error),
    }
}

/// The arguments a function with dependencies is called with: with no args
/// of its own, the one input itself or the array of inputs; otherwise the
/// array `[args, input1, input2, …]`. (msgpack, spliced without decoding.)
fn with_inputs(args: &[u8], inputs: &[bytes::Bytes]) -> Vec<u8> {
    if inputs.is_empty() {
        return args.to_vec();
    }
    let no_args = args.is_empty() || args == [0xc0];
    if no_args && inputs.len() == 1 {
        return inputs[0].to_vec();
    }
    let n = inputs.len() + usize::from(!no_args);
    let mut out = Vec::with_capacity(5 + args.len() + inputs.iter().map(|i| i.len()).sum::<usize>());
    match n {
        0..=15 => out.push(0x90 | n as u8),
        16..=65535 => {
            out.push(0xdc);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdd);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    if !no_args {
        out.extend_from_slice(args);
    }
    for i in inputs {
        out.extend_from_slice(i);
    }
    out
}

#[cfg(test)]
mod input_tests {
    use super::with_inputs;
    use bytes::Bytes;

    fn mp<T: serde::Serialize>(v: &T) -> Vec<u8> {
        rmp_serde::to_vec(v).unwrap()
    }

    #[test]
    fn inputs_become_arguments() {
        let one = [Bytes::from(mp(&5))];
        assert_eq!(with_inputs(&mp(&()), &one), mp(&5), "nil args, one input: the input itself");
        let two = [Bytes::from(mp(&5)), Bytes::from(mp(&"x"))];
        assert_eq!(with_inputs(&mp(&()), &two), mp(&(5, "x")), "nil args: the array of inputs");
        assert_eq!(with_inputs(&mp(&10), &two), mp(&(10, 5, "x")), "args first, then the inputs");
        assert_eq!(with_inputs(&mp(&10), &[]), mp(&10), "no inputs: the args");
        let many: Vec<Bytes> = (0..20).map(|i| Bytes::from(mp(&i))).collect();
        assert_eq!(with_inputs(&mp(&()), &many), mp(&(0..20).collect::<Vec<i32>>()));
    }
}

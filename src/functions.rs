//! The registry of `fn` tasks a worker can run, with the built-ins.
//! Library users add their own and build their own worker binary.

use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a running task can see of itself.
#[derive(Clone, Debug)]
pub struct TaskCtx {
    pub task: crate::ids::TaskId,
    pub attempt: u32,
}

/// A registered function: msgpack args in, msgpack result or error out.
pub type TaskFn = Arc<dyn Fn(&[u8], &TaskCtx) -> Result<Vec<u8>, String> + Send + Sync>;

#[derive(Clone, Default)]
pub struct Registry {
    fns: BTreeMap<String, TaskFn>,
}

impl Registry {
    pub fn empty() -> Self {
        Registry::default()
    }

    /// Registers a raw function over msgpack bytes.
    pub fn register_raw(&mut self, name: &str, f: TaskFn) -> &mut Self {
        self.fns.insert(name.to_string(), f);
        self
    }

    /// Registers a typed function: its arguments are decoded from the task's
    /// msgpack args (a clear error if they do not fit), its result encoded.
    pub fn register<A, R, F>(&mut self, name: &str, f: F) -> &mut Self
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A, &TaskCtx) -> Result<R, String> + Send + Sync + 'static,
    {
        self.register_expecting(name, "", f)
    }

    /// `register`, with what the arguments should be (e.g. `[a, b]: two
    /// integers`) for the error a task with bad arguments gets.
    pub fn register_expecting<A, R, F>(&mut self, name: &str, expects: &str, f: F) -> &mut Self
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A, &TaskCtx) -> Result<R, String> + Send + Sync + 'static,
    {
        let fname = name.to_string();
        let expects = expects.to_string();
        self.register_raw(
            name,
            Arc::new(move |args: &[u8], ctx: &TaskCtx| {
                let a: A =
                    rmp_serde::from_slice(args).map_err(|_| bad_arguments::<A>(&fname, &expects, args))?;
                let r = f(a, ctx)?;
                rmp_serde::to_vec(&r).map_err(|e| format!("{fname}: cannot encode result: {e}"))
            }),
        )
    }

    pub fn get(&self, name: &str) -> Option<&TaskFn> {
        self.fns.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.fns.keys().cloned().collect()
    }

    /// The built-in functions every actord worker has.
    pub fn builtin() -> Self {
        let mut r = Registry::empty();
        r.register("noop", |_: rmpv::Value, _| Ok(()));
        r.register_expecting(
            "blob",
            "[bytes, seed]: a size (at most 1 GiB) and an integer",
            |(n, seed): (u64, u64), _| {
                if n > 1 << 30 {
                    return Err(format!("blob: {n} bytes is over 1 GiB"));
                }
                Ok(serde_bytes::ByteBuf::from(blob_bytes(n as usize, seed)))
            },
        );
        r.register("digest", |v: rmpv::Value, _| Ok(digest_of(&v)));
        r.register_expecting("inc", "x: an integer", |x: i64, _| {
            x.checked_add(1).ok_or_else(|| "inc: overflow".to_string())
        });
        r.register_expecting("add", "[a, b]: two integers", |(a, b): (i64, i64), _| {
            a.checked_add(b).ok_or_else(|| "add: overflow".to_string())
        });
        r.register_expecting("sum", "[x, …]: an array of integers", |xs: Vec<i64>, _| {
            xs.iter().try_fold(0i64, |acc, x| acc.checked_add(*x)).ok_or_else(|| "sum: overflow".to_string())
        });
        r.register_expecting("sleep", "ms: milliseconds, a non-negative integer", |ms: u64, _| {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(())
        });
        r.register("fail", |msg: rmpv::Value, _| -> Result<(), String> {
            Err(match msg {
                rmpv::Value::String(s) => s.into_str().unwrap_or_default(),
                rmpv::Value::Nil => "task failed on purpose (fail)".into(),
                other => format!("task failed on purpose (fail {other})"),
            })
        });
        // Panics on purpose, for supervision tests: its slot fails, the
        // task is reported failed, the slot is started again.
        r.register("panic", |msg: rmpv::Value, _| -> Result<(), String> {
            match msg {
                rmpv::Value::String(s) => panic!("{}", s.into_str().unwrap_or_default()),
                _ => panic!("task panicked on purpose (panic)"),
            }
        });
        r.register("crash", |_: rmpv::Value, _| -> Result<(), String> {
            tracing::error!("crash task: aborting the worker process on purpose");
            std::process::abort()
        });
        r.register_expecting(
            "darts",
            "[darts, seed]: two non-negative integers",
            |(darts, seed): (u64, u64), _| Ok((crate::darts::throw_darts(darts, seed as u128), darts)),
        );
        r
    }
}

/// The bytes of `blob [n, seed]`: a pattern any test can recompute.
pub fn blob_bytes(n: usize, seed: u64) -> Vec<u8> {
    (0..n as u64).map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8).collect()
}

/// `digest`: the SHA-256 (hex) of its input's bytes, or of the bytes of
/// every `bin` in an array of inputs, one after the other; with the size.
fn digest_of(v: &rmpv::Value) -> (String, u64) {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut n = 0u64;
    let items = match v {
        rmpv::Value::Array(items) => items.as_slice(),
        one => std::slice::from_ref(one),
    };
    for item in items {
        if let rmpv::Value::Binary(b) = item {
            ctx.update(b);
            n += b.len() as u64;
        }
    }
    let hex: String = ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    (hex, n)
}

/// Why `args` do not fit `A`, in serde's words (which value, expected as
/// what), e.g. `add: bad arguments [1, "x"]: invalid type: string "x",
/// expected i64 (add takes [a, b]: two integers)`. Only on failure: the
/// fast path decodes straight from the bytes.
fn bad_arguments<A: DeserializeOwned>(name: &str, expects: &str, args: &[u8]) -> String {
    let why = match rmpv::decode::read_value(&mut &args[..]) {
        Ok(v) => match rmpv::ext::from_value::<A>(v) {
            Err(e) => {
                let e = e.to_string();
                e.strip_prefix("error while decoding value: ").map(str::to_string).unwrap_or(e)
            }
            Ok(_) => "they do not decode".into(),
        },
        Err(e) => e.to_string(),
    };
    let takes = if expects.is_empty() { String::new() } else { format!(" ({name} takes {expects})") };
    format!("{name}: bad arguments {}: {why}{takes}", describe_msgpack(args))
}

/// Short description of msgpack bytes for error messages (`got "x"`).
fn describe_msgpack(bytes: &[u8]) -> String {
    match rmpv::decode::read_value(&mut &bytes[..]) {
        Ok(v) => {
            let mut s = v.to_string();
            if s.len() > 80 {
                s.truncate(80);
                s.push('…');
            }
            format!("(got {s})")
        }
        Err(_) => format!("({} bytes of invalid msgpack)", bytes.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{JobId, TaskId};

    fn call(r: &Registry, name: &str, args: &impl Serialize) -> Result<rmpv::Value, String> {
        let ctx = TaskCtx { task: TaskId { job: JobId::new(), idx: 0 }, attempt: 1 };
        let out = (r.get(name).unwrap())(&rmp_serde::to_vec(args).unwrap(), &ctx)?;
        Ok(rmp_serde::from_slice(&out).unwrap())
    }

    #[test]
    fn builtins_compute_and_reject_bad_arguments() {
        let r = Registry::builtin();
        assert_eq!(call(&r, "inc", &41).unwrap(), rmpv::Value::from(42));
        assert_eq!(call(&r, "add", &(2, 3)).unwrap(), rmpv::Value::from(5));
        assert_eq!(call(&r, "sum", &vec![1, 2, 3]).unwrap(), rmpv::Value::from(6));
        assert_eq!(
            call(&r, "darts", &(1000u64, 192837465u64)).unwrap(),
            rmpv::Value::Array(vec![769.into(), 1000.into()])
        );
        let err = call(&r, "inc", &"seven").unwrap_err();
        assert_eq!(
            err,
            "inc: bad arguments (got \"seven\"): invalid type: string \"seven\", expected i64 (inc takes x: an integer)"
        );
        let err = call(&r, "add", &(1, "x")).unwrap_err();
        assert!(
            err.contains("invalid type: string \"x\", expected i64 (add takes [a, b]: two integers)"),
            "{err}"
        );
        let err = call(&r, "add", &[1]).unwrap_err();
        assert!(err.contains("invalid length 1"), "{err}");
        assert_eq!(call(&r, "fail", &"boom").unwrap_err(), "boom");
        assert!(call(&r, "inc", &i64::MAX).unwrap_err().contains("overflow"));
    }
}

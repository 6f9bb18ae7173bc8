"""A minimal client speaking the wire protocol with msgpack (over actord's
connection: TLS and the handshake), for the Rust integration tests of `py`
tasks (tests/python.rs): submit a job of py tasks built with
actord._payload, watch it, return its outcomes."""

import json
import pickle
import uuid

import msgpack

from actord._conn import Conn
from actord._payload import Dep, dumps


class Raw:
    def __init__(self, scheduler_file):
        sf = json.load(open(scheduler_file))
        self.c = Conn.open(sf, timeout=120)

    def send(self, obj):
        self.c.send(obj)

    def recv(self):
        return self.c.recv()

    def submit(self, tasks, functions, name="py"):
        """tasks: dicts with func (index), args (tuple), kwargs, deps (task
        indices of this job, each replaced by Dep(i) where args say so)."""
        job = uuid.uuid4().bytes
        specs = []
        for t in tasks:
            spec = {"kind": {"Py": {"func": t["func"], "args": dumps((tuple(t.get("args", ())), t.get("kwargs", {})))}}}
            for k in ("key", "time_limit_ms", "retries", "max_worker_kills"):
                if k in t:
                    spec[k] = t[k]
            if t.get("deps"):
                spec["deps"] = [{"job": None, "key": str(d)} for d in t["deps"]]
            specs.append(spec)
        self.send({"Submit": {"job": job, "name": name, "tasks": specs,
                              "functions": [f if isinstance(f, bytes) else dumps(f) for f in functions]}})
        reply = self.recv()
        if "Submitted" not in reply:
            raise RuntimeError(reply)
        return job

    def gather(self, job):
        """Outcomes by index: ["ok", value] or ["err", error, exception repr]."""
        self.send({"Watch": {"job": job}})
        out = {}
        while True:
            m = self.recv()
            if "Outcomes" in m:
                for o in m["Outcomes"]["outcomes"]:
                    out[o["idx"]] = (o["attempts"], o["outcome"])
            elif "JobDone" in m:
                break
            elif "Error" in m:
                raise RuntimeError(m)
        res = []
        for i in sorted(out):
            attempts, o = out[i]
            if "Ok" in o:
                res.append(["ok", pickle.loads(msgpack.unpackb(o["Ok"]["result"])), attempts])
            elif "Stored" in o:  # in the results store: its size
                res.append(["stored", o["Stored"]["size"], attempts])
            else:
                e = o["Err"]
                exc = e.get("exception")
                res.append(["err", e["error"], repr(pickle.loads(exc)) if exc else None, attempts])
        return res


__all__ = ["Raw", "Dep"]

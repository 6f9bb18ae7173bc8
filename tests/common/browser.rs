//! A headless Chromium for tests, driven over the DevTools protocol (CDP on a
//! WebSocket): navigate, evaluate JavaScript, take screenshots. The browser's
//! process group is killed by pid when the guard drops, also on failure.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// How long one CDP command may take before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Where screenshots go: `target/screenshots/` (kept after the run).
pub fn screenshot_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("screenshots")
}

/// The Chromium binary, installed by `scripts/chromium.sh` when missing (once
/// per test process). `Err` only when it cannot be installed here (no
/// apt-get, not root): the caller skips with that message. Any other install
/// failure panics, so a machine that should run the test cannot skip it.
pub fn chromium() -> Result<PathBuf, String> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/chromium.sh");
            let out = Command::new("bash")
                .arg(&script)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            match out.status.code() {
                Some(0) => Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())),
                Some(3) => Err(stderr),
                _ => panic!("scripts/chromium.sh failed ({}): {stderr}", out.status),
            }
        })
        .clone()
}

/// One headless Chromium with one page, attached over CDP.
pub struct Browser {
    child: Child,
    ws: WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    /// JavaScript exceptions and console errors the page reported so far.
    pub errors: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium (window `width`×`height`) with a fresh profile and
    /// opens a blank page. `Err` when Chromium cannot be installed here.
    pub fn launch(width: u32, height: u32) -> Result<Browser, String> {
        let bin = chromium()?;
        let profile = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--enable-precise-memory-info",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank");
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        // Its own process group, so that the renderers die with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut guard = Launching { child: Some(child), profile: Some(profile) };
        let (port, path) = guard.devtools_port();
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to DevTools");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("DevTools WebSocket handshake");
        // Short reads from here on, so that a silent browser fails the command's deadline.
        ws.get_ref().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let (child, profile) = guard.disarm();
        let mut b =
            Browser { child, ws, session: String::new(), next_id: 0, errors: Vec::new(), _profile: profile };
        let target = b.browser_call("Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().expect("a target id").to_string();
        let attached = b.browser_call("Target.attachToTarget", json!({"targetId": target, "flatten": true}));
        b.session = attached["sessionId"].as_str().expect("a session id").to_string();
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        // A page in front and focused, so that animation frames run.
        b.call("Page.bringToFront", json!({}));
        b.call("Emulation.setFocusEmulationEnabled", json!({"enabled": true}));
        Ok(b)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Opens `url` and waits until the document has loaded.
    pub fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url}));
        assert!(r.get("errorText").is_none(), "navigate to {url}: {r}");
        let loaded = self.wait_for("document.readyState === 'complete'", Duration::from_secs(20));
        assert!(loaded, "{url} never finished loading");
    }

    /// Evaluates `expr` in the page (promises awaited) and returns its value
    /// as JSON. Panics on a JavaScript exception, with its text.
    pub fn eval(&mut self, expr: &str) -> Value {
        let params = json!({"expression": expr, "returnByValue": true, "awaitPromise": true});
        let r = self.call("Runtime.evaluate", params);
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("evaluating {expr:?} threw: {ex}");
        }
        r["result"].get("value").cloned().unwrap_or(Value::Null)
    }

    /// A string from the page (`null` and non-strings give "").
    pub fn text(&mut self, expr: &str) -> String {
        match self.eval(expr) {
            Value::String(s) => s,
            Value::Null => String::new(),
            v => v.to_string(),
        }
    }

    /// Polls `expr` (`wait_until`) until it is truthy or `timeout` passes.
    pub fn wait_for(&mut self, expr: &str, timeout: Duration) -> bool {
        let truthy = format!("!!({expr})");
        super::wait_until(timeout, || self.eval(&truthy) == Value::Bool(true))
    }

    /// Saves a PNG of the page's viewport as `target/screenshots/NAME.png`.
    pub fn screenshot(&mut self, name: &str) -> PathBuf {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let data = r["data"].as_str().expect("screenshot data");
        let png = base64::engine::general_purpose::STANDARD.decode(data).expect("screenshot is base64");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// A CDP command to the page's session; returns its `result`.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(Some(&session), method, params)
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(None, method, params)
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap_or_else(|e| panic!("send {method}: {e}"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no answer to {method} within {COMMAND_TIMEOUT:?}");
            let frame = match self.ws.read() {
                Ok(Message::Text(t)) => t,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    continue
                }
                Err(e) => panic!("DevTools connection lost during {method}: {e}"),
            };
            let v: Value = serde_json::from_str(frame.as_str()).expect("DevTools sends JSON");
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("{method} failed: {err}");
                }
                return v["result"].clone();
            }
            self.note_event(&v);
        }
    }

    fn note_event(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &v["params"]["exceptionDetails"];
                let text = d["exception"]["description"].as_str().or(d["text"].as_str()).unwrap_or("?");
                self.errors.push(format!("exception: {text}"));
            }
            Some("Runtime.consoleAPICalled") if v["params"]["type"] == "error" => {
                self.errors.push(format!("console.error: {}", v["params"]["args"]));
            }
            _ => {}
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Kills Chromium's process group (its pid is the group id) and reaps it.
fn kill_group(child: &mut Child) {
    let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills a Chromium that fails before it is attached.
struct Launching {
    child: Option<Child>,
    profile: Option<tempfile::TempDir>,
}

impl Launching {
    /// Waits for Chromium to write `DevToolsActivePort`: port, then the
    /// browser's WebSocket path.
    fn devtools_port(&mut self) -> (u16, String) {
        let dir = self.profile.as_ref().unwrap().path().to_path_buf();
        let file = dir.join("DevToolsActivePort");
        let child = self.child.as_mut().unwrap();
        let (mut found, mut exited) = (None, None);
        let read = |file: &Path| -> Option<(u16, String)> {
            let text = std::fs::read_to_string(file).ok()?;
            let mut lines = text.lines();
            let (port, path) = (lines.next()?.trim().parse().ok()?, lines.next()?);
            Some((port, path.trim().to_string()))
        };
        let up = super::wait_until(Duration::from_secs(90), || {
            found = read(&file);
            exited = child.try_wait().ok().flatten();
            found.is_some() || exited.is_some()
        });
        if let Some(found) = found {
            return found;
        }
        if let Some(status) = exited {
            let log = std::fs::read_to_string(dir.join("chromium.log")).unwrap_or_default();
            panic!("chromium exited ({status}) before it listened:\n{log}");
        }
        assert!(up, "chromium never wrote {}", file.display());
        unreachable!("waited until found or exited")
    }

    fn disarm(&mut self) -> (Child, tempfile::TempDir) {
        (self.child.take().unwrap(), self.profile.take().unwrap())
    }
}

impl Drop for Launching {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill_group(c);
        }
    }
}

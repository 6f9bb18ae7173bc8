//! The status page in a real headless Chromium: the driver itself (against a
//! page served by the test), then the page against real scheduler processes.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::browser::Browser;

/// Launches Chromium, or says why this machine skips the test.
macro_rules! browser_or_skip {
    ($w:expr, $h:expr) => {
        match Browser::launch($w, $h) {
            Ok(b) => b,
            Err(why) => {
                eprintln!("SKIPPED: no Chromium here and it cannot be installed: {why}");
                return;
            }
        }
    };
}

/// One HTML page on 127.0.0.1:port0, served by a thread until dropped.
struct StaticPage {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StaticPage {
    fn serve(html: &'static str) -> StaticPage {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => answer(s, html),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        StaticPage { addr, stop, thread: Some(thread) }
    }
}

fn answer(stream: std::net::TcpStream, html: &str) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    let _ = reader.read_line(&mut request);
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let (status, body) = if request.starts_with("GET / ") { ("200 OK", html) } else { ("404 Not Found", "") };
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = reader.get_mut().write_all(reply.as_bytes());
}

impl Drop for StaticPage {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const COUNTER_PAGE: &str = r#"<!doctype html><html><body data-ticks="0">
<h1 id="t">counter</h1><input id="v" value="typed">
<script>
let n = 0;
setInterval(() => { n++; document.body.dataset.ticks = String(n); }, 20);
</script></body></html>"#;

#[test]
fn driver_navigates_evaluates_and_screenshots_a_served_page() {
    let page = StaticPage::serve(COUNTER_PAGE);
    let mut b = browser_or_skip!(800, 600);
    let pid = b.pid();
    b.navigate(&format!("http://{}/", page.addr));
    assert_eq!(b.text("document.getElementById('t').textContent"), "counter");
    assert_eq!(b.text("document.getElementById('v').value"), "typed");
    // Page state moves: a data attribute written by a timer is read back live.
    let first: u64 = b.text("document.body.dataset.ticks").parse().unwrap();
    assert!(b.wait_for(&format!("+document.body.dataset.ticks > {first} + 5"), Duration::from_secs(10)));
    let shot = b.screenshot("driver-static-page");
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{} is a PNG", shot.display());
    assert!(png.len() > 1000, "a real picture, not an empty file");
    assert!(b.errors.is_empty(), "page errors: {:?}", b.errors);
    drop(b);
    assert!(
        common::wait_until(Duration::from_secs(5), || !common::pid_alive(pid)),
        "chromium {pid} outlived its guard"
    );
}

//! Headless Chromium driven over the Chrome DevTools Protocol, for the console's browser
//! tests: launch with a throwaway profile on a free debugging port, attach to one page, and
//! send commands one at a time over the WebSocket (events are skipped, replies matched by id).
//! Chromium missing is a failure with the install command, never a skip.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Where Debian's `chromium` package puts the browser; `ADGATE_TEST_CHROMIUM` overrides.
pub const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// How long one CDP command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    /// Chromium's stderr, for failure messages.
    stderr: Arc<Mutex<Vec<String>>>,
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

impl Browser {
    /// Start headless Chromium with a `width`×`height` viewport and attach to a blank page.
    pub async fn launch(width: u32, height: u32) -> Self {
        let chromium =
            std::env::var("ADGATE_TEST_CHROMIUM").unwrap_or_else(|_| DEFAULT_CHROMIUM.to_owned());
        assert!(
            Path::new(&chromium).exists(),
            "Chromium is not installed at {chromium}: the console browser test needs it \
             (`apt-get install -y chromium`, or set ADGATE_TEST_CHROMIUM)"
        );
        let profile = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(&chromium);
        cmd.args([
            "--headless=new",
            "--remote-debugging-port=0",
            &format!("--user-data-dir={}", profile.path().display()),
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--hide-scrollbars",
            "--mute-audio",
            &format!("--window-size={width},{height}"),
        ]);
        // Chromium refuses to run as root with its sandbox (CI containers run as root).
        if running_as_root() {
            cmd.arg("--no-sandbox");
        }
        cmd.arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {chromium}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let pipe = child.stderr.take().unwrap();
            let stderr = stderr.clone();
            // Keeps draining after the address is found, so Chromium never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        let _ = tx.send(url.trim().to_owned());
                    }
                    stderr.lock().unwrap().push(line);
                }
            });
        }
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "Chromium printed no \"DevTools listening on ws://…\" within 30 s; stderr:\n{}",
                    stderr.lock().unwrap().join("\n")
                );
            }
        };
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot open the DevTools WebSocket {url}: {e}"));
        let mut b = Self {
            child,
            _profile: profile,
            ws,
            session: String::new(),
            next_id: 0,
            stderr,
        };
        let target = b
            .browser_call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = b
            .browser_call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b.call("Page.enable", json!({})).await;
        b.call("Runtime.enable", json!({})).await;
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        b
    }

    /// A command to the browser itself.
    async fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None).await
    }

    /// A command to the attached page.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(session)).await
    }

    async fn send(&mut self, method: &str, params: Value, session: Option<String>) -> Value {
        match self.send_checked(method, params, session).await {
            Ok(result) => result,
            Err(err) => panic!("CDP {method} failed: {err}"),
        }
    }

    /// [`Browser::send`] with the browser's error object returned instead of failing the test.
    async fn send_checked(
        &mut self,
        method: &str,
        params: Value,
        session: Option<String>,
    ) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = Value::String(s);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap_or_else(|e| panic!("CDP {method}: send failed: {e}"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("CDP {method}: no reply within {COMMAND_TIMEOUT:?}"));
            let text = match next {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("CDP {method}: WebSocket error: {e}"),
                None => panic!(
                    "CDP {method}: Chromium closed the connection; stderr:\n{}",
                    self.stderr.lock().unwrap().join("\n")
                ),
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"].as_u64() != Some(id) {
                continue; // an event, or a reply to nothing we wait for
            }
            if let Some(err) = v.get("error") {
                return Err(err.clone());
            }
            return Ok(v["result"].clone());
        }
    }

    /// Open `url` in the page (returns once navigation is committed, not loaded).
    pub async fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url})).await;
        assert!(
            r.get("errorText").is_none(),
            "navigating to {url} failed: {r}"
        );
    }

    /// The value of a JavaScript expression in the page (promises awaited). A thrown
    /// exception is a test failure with its text.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("script threw: {ex}\n{expression}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluate `expression` until `done` accepts its value; panics with `what` and the last
    /// value after `within`.
    pub async fn wait_until(
        &mut self,
        what: &str,
        within: Duration,
        expression: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        let session = self.session.clone();
        loop {
            let evaluated = self
                .send_checked(
                    "Runtime.evaluate",
                    json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
                    Some(session.clone()),
                )
                .await;
            let v = match evaluated {
                Ok(r) => {
                    if let Some(ex) = r.get("exceptionDetails") {
                        panic!("script threw: {ex}\n{expression}");
                    }
                    r["result"]["value"].clone()
                }
                // What is awaited is often a navigation, and an evaluation that meets the page
                // between two documents fails; the next one runs in the new document.
                Err(err) if between_documents(&err) => Value::Null,
                Err(err) => panic!("CDP Runtime.evaluate failed: {err}"),
            };
            if done(&v) {
                return v;
            }
            assert!(
                start.elapsed() < within,
                "timed out after {within:?} waiting for {what}; last value: {v}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A PNG of the whole page (beyond the viewport).
    pub async fn screenshot_full_page(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let m = self.call("Page.getLayoutMetrics", json!({})).await;
        let size = &m["cssContentSize"];
        let (w, h) = (
            size["width"].as_f64().unwrap(),
            size["height"].as_f64().unwrap(),
        );
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true,
                       "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}}),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CDP error meaning the page was navigating when a command reached it.
fn between_documents(err: &Value) -> bool {
    let message = err["message"].as_str().unwrap_or_default();
    message.contains("navigated or closed")
        || message.contains("Cannot find context")
        || message.contains("Execution context was destroyed")
}

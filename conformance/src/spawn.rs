//! Spawn mode: start the implementation as a child process with the spawn-contract
//! environment, capture its stdout/stderr, restart it after a crash.

use crate::attach::wait_ready;
use crate::peer::Peer;
use crate::session::{TargetControl, VariantRun};
use futures::future::BoxFuture;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Captured output is capped per stream (older text is dropped first).
const OUTPUT_CAP: usize = 256 * 1024;

pub struct SpawnControl {
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// JID to ping for readiness.
    pub ready_jid: String,
    pub ready_budget: Duration,
    child: tokio::sync::Mutex<Option<Child>>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    exit: Arc<Mutex<Option<String>>>,
    /// The harness identity used to ping (set after the session is connected).
    pub pinger: Mutex<Option<Peer>>,
    /// Full JID of the second instance ([`TargetControl::start_aux`]), when offered.
    pub aux_jid: Option<String>,
    aux: tokio::sync::Mutex<Option<Child>>,
    /// VERTEBRA_TEST_PROFILE of the running aux instance and when it started.
    aux_variant: Mutex<Option<(Option<String>, std::time::Instant)>>,
}

fn push_capped(buf: &Mutex<String>, line: &str) {
    let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
    b.push_str(line);
    b.push('\n');
    if b.len() > OUTPUT_CAP {
        let mut cut = b.len() - OUTPUT_CAP;
        while !b.is_char_boundary(cut) {
            cut += 1;
        }
        b.drain(..cut);
    }
}

impl SpawnControl {
    pub fn new(
        command: Vec<String>,
        env: Vec<(String, String)>,
        ready_jid: String,
        ready_budget: Duration,
    ) -> SpawnControl {
        SpawnControl {
            command,
            env,
            ready_jid,
            ready_budget,
            child: tokio::sync::Mutex::new(None),
            stdout: Arc::new(Mutex::new(String::new())),
            stderr: Arc::new(Mutex::new(String::new())),
            exit: Arc::new(Mutex::new(None)),
            pinger: Mutex::new(None),
            aux_jid: None,
            aux: tokio::sync::Mutex::new(None),
            aux_variant: Mutex::new(None),
        }
    }

    /// Offer a second instance logging in as `jid` (same password).
    pub fn with_aux(mut self, jid: String) -> SpawnControl {
        self.aux_jid = Some(jid);
        self
    }

    async fn start_aux_inner(
        &self,
        test_profile: Option<String>,
    ) -> Result<(String, std::time::Instant), String> {
        let current = self
            .aux_variant
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((v, at)) = current {
            if v == test_profile && self.aux_running().await {
                return Ok((self.aux_jid_str(), at));
            }
        }
        let started = std::time::Instant::now();
        let jid = self
            .aux_jid
            .clone()
            .ok_or("no account for a second instance")?;
        self.stop_aux_inner().await;
        let (prog, args) = self.command.split_first().ok_or("no command")?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.env("VERTEBRA_JID", &jid);
        cmd.env_remove("VERTEBRA_TEST_PROFILE");
        if let Some(v) = &test_profile {
            cmd.env("VERTEBRA_TEST_PROFILE", v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {prog:?}: {e}"))?;
        *self.aux.lock().await = Some(child);
        let pinger = self
            .pinger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match pinger {
            Some(p) => wait_ready(&p, &jid, self.ready_budget).await?,
            None => return Err("no harness identity to ping with".into()),
        }
        *self.aux_variant.lock().unwrap_or_else(|e| e.into_inner()) = Some((test_profile, started));
        Ok((jid, started))
    }

    fn aux_jid_str(&self) -> String {
        self.aux_jid.clone().unwrap_or_default()
    }

    async fn aux_running(&self) -> bool {
        let mut g = self.aux.lock().await;
        match g.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    async fn stop_aux_inner(&self) {
        *self.aux_variant.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut g = self.aux.lock().await;
        if let Some(mut c) = g.take() {
            let _ = c.kill().await;
        }
    }

    /// Start the process (no readiness wait).
    pub async fn start(&self) -> Result<(), String> {
        let (prog, args) = self
            .command
            .split_first()
            .ok_or_else(|| "spawn mode needs a command after --".to_string())?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {prog:?}: {e}"))?;
        *self.exit.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Some(out) = child.stdout.take() {
            let buf = self.stdout.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    push_capped(&buf, &l);
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let buf = self.stderr.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    push_capped(&buf, &l);
                }
            });
        }
        *self.child.lock().await = Some(child);
        Ok(())
    }

    fn poll_exit(&self) {
        if let Ok(mut g) = self.child.try_lock() {
            if let Some(c) = g.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    *self.exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(st.to_string());
                    *g = None;
                }
            }
        }
    }

    /// Send SIGTERM (via `kill`) and wait up to `budget` for the exit status.
    pub async fn terminate(&self, budget: Duration) -> Result<Option<i32>, String> {
        let mut g = self.child.lock().await;
        let Some(child) = g.as_mut() else {
            return Err("process not running".into());
        };
        let pid = child.id().ok_or("process already gone")?;
        let st = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .map_err(|e| format!("cannot run kill: {e}"))?;
        if !st.success() {
            return Err("kill -TERM failed".into());
        }
        match tokio::time::timeout(budget, child.wait()).await {
            Ok(Ok(st)) => {
                *g = None;
                Ok(st.code())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Ok(None),
        }
    }
}

impl TargetControl for SpawnControl {
    fn start_aux(
        &self,
        test_profile: Option<String>,
    ) -> BoxFuture<'_, Result<(String, std::time::Instant), String>> {
        Box::pin(self.start_aux_inner(test_profile))
    }

    fn stop_aux(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop_aux_inner())
    }

    fn terminate(&self, budget: Duration) -> BoxFuture<'_, Result<Option<i32>, String>> {
        Box::pin(SpawnControl::terminate(self, budget))
    }

    fn run_variant(
        &self,
        env: Vec<(String, String)>,
        budget: Duration,
    ) -> BoxFuture<'_, Result<VariantRun, String>> {
        Box::pin(async move {
            let (prog, args) = self.command.split_first().ok_or("no command")?;
            let mut cmd = Command::new(prog);
            cmd.args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            for (k, v) in &self.env {
                cmd.env(k, v);
            }
            for (k, v) in &env {
                cmd.env(k, v);
            }
            let child = cmd
                .spawn()
                .map_err(|e| format!("cannot start {prog:?}: {e}"))?;
            match tokio::time::timeout(budget, child.wait_with_output()).await {
                Ok(Ok(o)) => Ok((
                    o.status.code(),
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                )),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Ok((None, String::new(), String::new())),
            }
        })
    }

    fn restart(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            {
                let mut g = self.child.lock().await;
                if let Some(mut c) = g.take() {
                    let _ = c.kill().await;
                }
            }
            self.start().await?;
            let pinger = self
                .pinger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            match pinger {
                Some(p) => wait_ready(&p, &self.ready_jid, self.ready_budget).await,
                None => Ok(()),
            }
        })
    }

    fn kill(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut g = self.child.lock().await;
            match g.take() {
                Some(mut c) => c.kill().await.map_err(|e| e.to_string()),
                None => Err("process not running".into()),
            }
        })
    }

    fn take_output(&self) -> (String, String) {
        self.poll_exit();
        let o = std::mem::take(&mut *self.stdout.lock().unwrap_or_else(|e| e.into_inner()));
        let e = std::mem::take(&mut *self.stderr.lock().unwrap_or_else(|e| e.into_inner()));
        (o, e)
    }

    fn exited(&self) -> Option<String> {
        self.poll_exit();
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

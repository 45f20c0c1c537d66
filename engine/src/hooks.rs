//! Hooks: run a program, or an Ansible playbook, before or after the transfers of a plan.
//!
//! A hook runs in a process group of its own with stdin closed and its stdout and stderr read
//! line by line (handed to a callback as they come, the last [`TAIL_LINES`] kept for the error
//! report). Success or failure is its exit status, as with MTC's hook Jobs. When the timeout
//! passes, the whole process group is killed with `SIGKILL` (ansible-playbook starts workers of
//! its own), and so is whatever the hook left running after it exited, as a Job's pod would be.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

/// How many of a hook's last output lines a failure report carries.
pub const TAIL_LINES: usize = 20;

/// How long output may still arrive after the hook exited (from what it left running).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// The program `playbook:` hooks run.
pub const ANSIBLE_PLAYBOOK: &str = "ansible-playbook";

/// What to run.
#[derive(Debug, Clone)]
pub struct HookCommand {
    /// The program: a name looked up in `PATH`, or a path.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Variables added to the inherited environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub dir: PathBuf,
    /// How long it may run before it is killed.
    pub timeout: Duration,
}

impl HookCommand {
    /// `program args...`, run in `dir`. A relative program path with a `/` (`./hooks/x.sh`)
    /// is taken relative to `dir`; a bare name is looked up in `PATH`.
    #[must_use]
    pub fn command(argv: &[String], dir: &Path, timeout: Duration) -> HookCommand {
        let program = match argv.first() {
            Some(program) if program.contains('/') && Path::new(program).is_relative() => {
                dir.join(program).into_os_string()
            }
            Some(program) => OsString::from(program),
            None => OsString::new(),
        };
        HookCommand {
            program,
            args: argv.iter().skip(1).map(OsString::from).collect(),
            env: Vec::new(),
            dir: dir.to_owned(),
            timeout,
        }
    }

    /// `ansible-playbook -i localhost, -c local PLAYBOOK`: the playbook's `hosts: localhost`
    /// runs on this machine, with no inventory file and no SSH.
    #[must_use]
    pub fn playbook(playbook: &Path, dir: &Path, timeout: Duration) -> HookCommand {
        HookCommand {
            program: ANSIBLE_PLAYBOOK.into(),
            args: vec!["-i".into(), "localhost,".into(), "-c".into(), "local".into(), playbook.as_os_str().to_owned()],
            env: Vec::new(),
            dir: dir.to_owned(),
            timeout,
        }
    }

    /// Passes variables to a playbook as Ansible extra vars (`--extra-vars JSON`), where
    /// playbooks read them as `{{ name }}`; the values stay strings.
    #[must_use]
    pub fn with_extra_vars(mut self, vars: &[(String, String)]) -> HookCommand {
        let map: serde_json::Map<String, serde_json::Value> =
            vars.iter().map(|(name, value)| (name.clone(), serde_json::Value::String(value.clone()))).collect();
        self.args.push("--extra-vars".into());
        self.args.push(serde_json::Value::Object(map).to_string().into());
        self
    }

    /// Adds environment variables.
    #[must_use]
    pub fn with_env(mut self, env: impl IntoIterator<Item = (String, String)>) -> HookCommand {
        self.env.extend(env);
        self
    }
}

/// Why a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The program could not be started.
    #[error("cannot start `{program}`")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It ended with a non-zero status or a signal.
    #[error("{status}{}", tail_text(.tail))]
    Failed {
        /// `exited with status 2`, `was killed by signal 9`.
        status: String,
        /// The exit code, when it exited.
        code: Option<i32>,
        /// Its last output lines.
        tail: Vec<String>,
    },
    /// It ran past its timeout and was killed with its process group.
    #[error("did not finish within {}: it was killed with its process group{}", format_duration(*.timeout), tail_text(.tail))]
    TimedOut {
        /// The timeout.
        timeout: Duration,
        /// Its last output lines.
        tail: Vec<String>,
    },
    /// Waiting for it failed.
    #[error("lost track of the hook process")]
    Wait(#[source] std::io::Error),
    /// It ran somewhere else (a front end's runner: a Kubernetes Job) and did not succeed, or
    /// could not be started there; `message` says where and what happened.
    #[error("{message}{}", if .tail.is_empty() { String::new() } else { tail_text(.tail) })]
    Remote {
        /// Where it ran and what happened.
        message: String,
        /// It ran past its time limit.
        timed_out: bool,
        /// The exit code of its last try, when it exited.
        code: Option<i32>,
        /// Its last output lines.
        tail: Vec<String>,
    },
}

impl HookError {
    /// The last output lines, when it ran.
    #[must_use]
    pub fn tail(&self) -> &[String] {
        match self {
            HookError::Failed { tail, .. } | HookError::TimedOut { tail, .. } | HookError::Remote { tail, .. } => tail,
            _ => &[],
        }
    }
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        return "; it printed nothing".to_owned();
    }
    let mut text = format!("; its last {} lines of output:", tail.len());
    for line in tail {
        text.push_str("\n    | ");
        text.push_str(line);
    }
    text
}

/// `90s`, `5m`, `1h30m`.
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match (seconds / 3600, seconds % 3600 / 60, seconds % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// What a successful hook did.
#[derive(Debug, Clone)]
pub struct HookOutcome {
    /// How long it ran.
    pub elapsed: Duration,
    /// Its last output lines.
    pub tail: Vec<String>,
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

fn read_lines(pipe: impl AsyncRead + Unpin + Send + 'static, lines: mpsc::UnboundedSender<String>) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while let Ok(n) = reader.read_until(b'\n', &mut line).await {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_owned();
            if lines.send(text).is_err() {
                break;
            }
            line.clear();
        }
    });
}

struct Output<'a> {
    on_line: &'a (dyn Fn(&str) + Send + Sync),
    tail: VecDeque<String>,
}

impl Output<'_> {
    fn push(&mut self, line: String) {
        (self.on_line)(&line);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }
}

fn kill_group(leader: Option<u32>) {
    let Some(group) = leader.and_then(|id| rustix::process::Pid::from_raw(id.cast_signed())) else { return };
    // ESRCH (nothing left in the group) is the common, fine case.
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
}

/// Kills a hook's process group when the run is dropped half way (the plan was cancelled):
/// `kill_on_drop` reaches only the hook's own process, not what it started.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

/// Runs a hook to its end, or kills it at its timeout. `on_line` sees every output line.
pub async fn run_hook(command: &HookCommand, on_line: &(dyn Fn(&str) + Send + Sync)) -> Result<HookOutcome, HookError> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&command.program)
        .args(&command.args)
        .envs(command.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&command.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookError::Spawn { program: command.program.to_string_lossy().into_owned(), source })?;
    let pgid = child.id();
    let _group = GroupGuard(pgid);
    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    if let Some(stdout) = child.stdout.take() {
        read_lines(stdout, lines_tx.clone());
    }
    if let Some(stderr) = child.stderr.take() {
        read_lines(stderr, lines_tx);
    }
    let mut output = Output { on_line, tail: VecDeque::new() };
    let finished = tokio::time::timeout(command.timeout, async {
        let status = loop {
            tokio::select! {
                Some(line) = lines.recv() => output.push(line),
                status = child.wait() => break status,
            }
        };
        // Whatever the hook left behind goes with it, which also closes the pipes.
        kill_group(pgid);
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
            while let Some(line) = lines.recv().await {
                output.push(line);
            }
        })
        .await;
        status
    })
    .await;
    let Ok(status) = finished else {
        kill_group(pgid);
        let _ = child.wait().await;
        while let Ok(line) = lines.try_recv() {
            output.push(line);
        }
        return Err(HookError::TimedOut { timeout: command.timeout, tail: output.tail.into_iter().collect() });
    };
    let status = status.map_err(HookError::Wait)?;
    let tail: Vec<String> = output.tail.into_iter().collect();
    if status.success() {
        Ok(HookOutcome { elapsed: started.elapsed(), tail })
    } else {
        Err(HookError::Failed { status: describe(status), code: status.code(), tail })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn sh(script: &str, timeout: Duration) -> HookCommand {
        HookCommand::command(&["/bin/sh".into(), "-c".into(), script.into()], Path::new("/"), timeout)
    }

    #[tokio::test]
    async fn streams_lines_and_passes_the_environment() {
        let seen = Mutex::new(Vec::new());
        let on_line = |line: &str| seen.lock().unwrap().push(line.to_owned());
        let command = sh("echo \"$migplan_name\"; echo err >&2; pwd", Duration::from_secs(10))
            .with_env([("migplan_name".to_owned(), "plan-x".to_owned())]);
        let outcome = run_hook(&command, &on_line).await.unwrap();
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, ["/", "err", "plan-x"]);
        assert_eq!(outcome.tail.len(), 3);
    }

    #[tokio::test]
    async fn failure_carries_status_and_the_last_lines() {
        let error = run_hook(&sh("seq 1 50; exit 3", Duration::from_secs(10)), &|_| {}).await.unwrap_err();
        let HookError::Failed { code, tail, .. } = &error else { panic!("{error:?}") };
        assert_eq!(*code, Some(3));
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.last().unwrap(), "50");
        assert_eq!(tail.first().unwrap(), "31");
        assert!(error.to_string().starts_with("exited with status 3; its last 20 lines"), "{error}");
    }

    #[tokio::test]
    async fn a_dropped_run_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        let script = format!("(sleep 2; touch {}) & sleep 60", marker.display());
        let command = sh(&script, Duration::from_secs(60));
        let run = run_hook(&command, &|_| {});
        // The plan is cancelled half a second in: the run is dropped.
        assert!(tokio::time::timeout(Duration::from_millis(500), run).await.is_err());
        std::thread::sleep(Duration::from_secs(3));
        assert!(!marker.exists(), "a grandchild of a cancelled hook lived on");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survivor");
        // A grandchild that would write the marker after 2 s, unless it is killed with the group.
        let script = format!("(sleep 2; touch {}) & echo started; sleep 60", marker.display());
        let started = Instant::now();
        let error = run_hook(&sh(&script, Duration::from_millis(500)), &|_| {}).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert!(matches!(&error, HookError::TimedOut { tail, .. } if tail == &["started"]), "{error:?}");
        std::thread::sleep(Duration::from_secs(3));
        assert!(!marker.exists(), "a process of the hook's group survived the timeout");
    }

    #[tokio::test]
    async fn relative_program_paths_start_at_the_hook_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("hooks")).unwrap();
        let script = dir.path().join("hooks/hello.sh");
        std::fs::write(&script, "#!/bin/sh\necho hello\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let command = HookCommand::command(&["./hooks/hello.sh".into()], dir.path(), Duration::from_secs(10));
        assert_eq!(run_hook(&command, &|_| {}).await.unwrap().tail, ["hello"]);
    }

    #[tokio::test]
    async fn a_missing_program_is_named() {
        let command = HookCommand::command(&["/nonexistent/hook".into()], Path::new("/"), Duration::from_secs(1));
        let error = run_hook(&command, &|_| {}).await.unwrap_err();
        assert!(matches!(error, HookError::Spawn { .. }));
        assert_eq!(error.to_string(), "cannot start `/nonexistent/hook`");
    }

    #[test]
    fn extra_vars_are_one_json_object() {
        let command = HookCommand::playbook(Path::new("/p.yml"), Path::new("/"), Duration::from_secs(1))
            .with_extra_vars(&[("migplan_name".into(), "x \"y\"".into()), ("N".into(), "a,b".into())]);
        assert_eq!(command.args[command.args.len() - 2], "--extra-vars");
        assert_eq!(command.args[command.args.len() - 1], r#"{"N":"a,b","migplan_name":"x \"y\""}"#);
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(Duration::from_secs(1800)), "30m");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(1)), "1s");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }
}

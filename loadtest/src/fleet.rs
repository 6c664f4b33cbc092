//! The engines of one run: a thread in this process, or child processes when the
//! connection count exceeds what one process may open.
//!
//! # Child protocol
//!
//! A child is this executable re-run with the parent's arguments plus the hidden
//! `--child-index I --child-count N --run-start-unix-ns T`. It writes one JSON
//! [`EngineEvent`] per line on stdout and reads one JSON [`Command`] per line on stdin.
//! When stdin closes (the parent died) the child finishes on its own; when a child's
//! stdout closes before its `finished` line, the parent counts the child as dead.

use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};

use mio::Waker;

use crate::engine::{Command, Engine, EngineEvent};
use crate::plan::Plan;

/// A message from engine `index`.
#[derive(Debug)]
pub enum FleetEvent {
    /// An event the engine emitted.
    Engine(EngineEvent),
    /// The engine stopped (its thread returned or its process closed stdout);
    /// `detail` says how.
    Exited {
        /// How it ended ("exit status 0", an I/O error, ...).
        detail: String,
    },
}

#[derive(Debug)]
enum Member {
    Local {
        commands: Sender<Command>,
        waker: Arc<Waker>,
        thread: Option<JoinHandle<()>>,
    },
    Child {
        child: Child,
        stdin: Option<ChildStdin>,
        reader: Option<JoinHandle<()>>,
    },
}

/// The running engines and the channel their events arrive on.
#[derive(Debug)]
pub struct Fleet {
    members: Vec<Member>,
    /// `(engine index, event)`.
    pub events: Receiver<(usize, FleetEvent)>,
}

impl Fleet {
    /// Starts `plan.processes` engines: a thread when it is 1, otherwise children.
    pub fn start(plan: &Plan) -> Result<Self, String> {
        let (events_tx, events) = mpsc::channel();
        let members = if plan.processes == 1 {
            vec![start_local(plan, events_tx)?]
        } else {
            let exe =
                std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
            let mut members = Vec::with_capacity(plan.processes);
            for index in 0..plan.processes {
                match start_child(&exe, plan, index, events_tx.clone()) {
                    Ok(member) => members.push(member),
                    Err(e) => {
                        let mut fleet = Self { members, events };
                        fleet.kill();
                        return Err(format!("cannot start child process {index}: {e}"));
                    }
                }
            }
            members
        };
        Ok(Self { members, events })
    }

    /// Number of engines.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no engines (never true for a started fleet).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether the engines run in child processes.
    pub fn uses_children(&self) -> bool {
        matches!(self.members.first(), Some(Member::Child { .. }))
    }

    /// PIDs of the child processes.
    pub fn child_pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| match m {
                Member::Child { child, .. } => Some(child.id()),
                Member::Local { .. } => None,
            })
            .collect()
    }

    /// Sends `command` to every engine. An engine that is gone is skipped: its death
    /// was or will be reported as [`FleetEvent::Exited`].
    pub fn broadcast(&mut self, command: Command) {
        for member in &mut self.members {
            match member {
                Member::Local {
                    commands, waker, ..
                } => {
                    if commands.send(command).is_ok() {
                        let _ = waker.wake();
                    }
                }
                Member::Child { stdin, .. } => {
                    let Some(pipe) = stdin.as_mut() else { continue };
                    let mut line = serde_json::to_string(&command).unwrap_or_default();
                    line.push('\n');
                    if pipe
                        .write_all(line.as_bytes())
                        .and_then(|()| pipe.flush())
                        .is_err()
                    {
                        *stdin = None;
                    }
                }
            }
        }
    }

    /// Kills the child processes this fleet started (by their PIDs, via `Child::kill`).
    pub fn kill(&mut self) {
        for member in &mut self.members {
            if let Member::Child { child, stdin, .. } = member {
                *stdin = None;
                let _ = child.kill();
            }
        }
    }

    /// Waits for every engine thread or process to end; returns how each ended
    /// (`"thread"`, `"exit status 0"`, `"signal 9"`, ...).
    pub fn wait(&mut self) -> Vec<String> {
        use std::os::unix::process::ExitStatusExt;
        let mut endings = Vec::with_capacity(self.members.len());
        for member in &mut self.members {
            match member {
                Member::Local { thread, .. } => {
                    if let Some(thread) = thread.take() {
                        let _ = thread.join();
                    }
                    endings.push("thread".to_owned());
                }
                Member::Child {
                    child,
                    stdin,
                    reader,
                } => {
                    *stdin = None;
                    let ending = match child.wait() {
                        Ok(status) => match (status.code(), status.signal()) {
                            (Some(code), _) => format!("exit status {code}"),
                            (None, Some(signal)) => format!("signal {signal}"),
                            (None, None) => status.to_string(),
                        },
                        Err(e) => format!("wait failed: {e}"),
                    };
                    if let Some(reader) = reader.take() {
                        let _ = reader.join();
                    }
                    endings.push(ending);
                }
            }
        }
        endings
    }
}

fn start_local(plan: &Plan, events: Sender<(usize, FleetEvent)>) -> Result<Member, String> {
    let (commands, command_rx) = mpsc::channel();
    let (engine, waker) = Engine::new(plan.engine_config(0, 1), command_rx)
        .map_err(|e| format!("cannot create the event loop: {e}"))?;
    let thread = thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let result = engine.run(&mut |event| {
                let _ = events.send((0, FleetEvent::Engine(event)));
            });
            let detail = match result {
                Ok(()) => "finished".to_owned(),
                Err(e) => format!("event loop failed: {e}"),
            };
            let _ = events.send((0, FleetEvent::Exited { detail }));
        })
        .map_err(|e| format!("cannot start the engine thread: {e}"))?;
    Ok(Member::Local {
        commands,
        waker,
        thread: Some(thread),
    })
}

fn start_child(
    exe: &std::path::Path,
    plan: &Plan,
    index: usize,
    events: Sender<(usize, FleetEvent)>,
) -> io::Result<Member> {
    let mut command = Process::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .arg("--child-index")
        .arg(index.to_string())
        .arg("--child-count")
        .arg(plan.processes.to_string())
        .arg("--run-start-unix-ns")
        .arg(plan.run_start_unix_ns.to_string());
    if let Some(positions) = &plan.recover_positions {
        command
            .arg("--recover-positions")
            .arg(crate::settings::RecoverPlan::positions_arg(positions));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout pipe"))?;
    let stdin = child.stdin.take();
    let reader = thread::Builder::new()
        .name(format!("child-{index}"))
        .spawn(move || {
            let mut detail = "closed its output".to_owned();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) if line.trim().is_empty() => {}
                    Ok(line) => match serde_json::from_str::<EngineEvent>(&line) {
                        Ok(event) => {
                            let _ = events.send((index, FleetEvent::Engine(event)));
                        }
                        Err(e) => {
                            detail = format!("sent an unreadable line ({e})");
                            break;
                        }
                    },
                    Err(e) => {
                        detail = format!("output failed: {e}");
                        break;
                    }
                }
            }
            let _ = events.send((index, FleetEvent::Exited { detail }));
        })?;
    Ok(Member::Child {
        child,
        stdin,
        reader: Some(reader),
    })
}

/// Runs this process as child `index` of `count`: the engine on this thread, commands
/// from stdin, events as JSON lines on stdout. Returns the process exit status.
pub fn run_child(plan: &Plan, index: usize, count: usize) -> u8 {
    let (commands, command_rx) = mpsc::channel();
    let (engine, waker) = match Engine::new(plan.engine_config(index, count), command_rx) {
        Ok(created) => created,
        Err(e) => {
            eprintln!("pingwheel-loadtest child {index}: cannot create the event loop: {e}");
            return 2;
        }
    };
    let stdin_waker = Arc::clone(&waker);
    // Detached on purpose: it ends when stdin closes or the process exits.
    let _stdin_thread = thread::Builder::new().name("stdin".into()).spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Command>(&line) {
                Ok(command) => {
                    if commands.send(command).is_err() {
                        break;
                    }
                    let _ = stdin_waker.wake();
                }
                Err(e) => eprintln!("pingwheel-loadtest child: ignoring bad command ({e})"),
            }
        }
        // The parent is gone or done: dropping `commands` makes the engine finish.
        drop(commands);
        let _ = stdin_waker.wake();
    });
    let stdout = io::stdout();
    let result = engine.run(&mut |event| {
        let mut out = stdout.lock();
        if let Ok(line) = serde_json::to_string(&event) {
            // If the parent is gone there is nobody to tell; keep running to the end.
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        }
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("pingwheel-loadtest child {index}: event loop failed: {e}");
            2
        }
    }
}

//! `kubectl exec` on the node: `/exec/{namespace}/{pod}/{container}?command=…&stdin=1…`,
//! upgraded to a WebSocket speaking kube's channel protocols (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`): each binary message starts with its channel, 0 stdin, 1 stdout,
//! 2 stderr, 3 the error channel (the command's outcome as a `metav1.Status`, as kubelet
//! writes it), 4 terminal resize (`{"Width":…,"Height":…}`); v5 adds 255, by which the client
//! closes a stream (`[255, 0]`: no more stdin).
//!
//! The command runs as `skiff-agent exec-in --pid <container's pid>`: the container's
//! namespaces, cgroup and environment. Without a TTY its stdio are pipes; with one it gets
//! the slave side of a pseudo-terminal as its controlling terminal, and its output comes back
//! on stdout only, as with kubelet.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::ws::{self, Message};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5's close signal: `[255, <channel>]`.
pub const CLOSE: u8 = 255;

/// The subprotocols served, preferred first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// A negotiated channel protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    V4,
    V5,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V5 => PROTOCOLS[0],
            Protocol::V4 => PROTOCOLS[1],
        }
    }
}

/// The protocol to answer a client offering `offered` (`Sec-WebSocket-Protocol` values,
/// comma-separated, possibly in several headers): ours that the client lists, v5 first.
pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Protocol> {
    let offered: Vec<String> = offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    [Protocol::V5, Protocol::V4]
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p.name()))
}

/// kube's `remotecommand` options from an exec query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecOptions {
    /// `command` (repeated), and the flags `stdin`, `stdout`, `stderr`, `tty` (`1`/`true`).
    /// Errors are kubelet's texts.
    pub fn from_query(query: Option<&str>) -> Result<ExecOptions, String> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|e| format!("invalid query string: {e}"))?;
        let flag = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .is_some_and(|(_, v)| v == "1" || v.eq_ignore_ascii_case("true"))
        };
        let opts = ExecOptions {
            command: pairs
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            // With a TTY, stderr is the terminal: kubelet never opens a stderr stream then.
            stderr: flag("stderr") && !flag("tty"),
            tty: flag("tty"),
        };
        if !(opts.stdin || opts.stdout || opts.stderr) {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        Ok(opts)
    }
}

/// The error channel's message for a command that exited with `code`: kubelet's
/// `metav1.Status` (Success, or Failure `NonZeroExitCode` with the code as an `ExitCode`
/// cause, which clients turn into their own exit code).
pub fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The error channel's message when the command could not be run at all.
pub fn failure_status(message: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
}

/// A message on `channel`, as a WebSocket frame.
pub fn channel_frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(data.len() + 1);
    payload.push(channel);
    payload.extend_from_slice(data);
    ws::encode(ws::OP_BINARY, &payload)
}

/// What a client's data message asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent<'a> {
    Stdin(&'a [u8]),
    /// v5 `[255, 0]`: stdin is done.
    CloseStdin,
    Resize {
        width: u16,
        height: u16,
    },
    /// Anything else (a stream this protocol does not know, an unparsable resize): dropped,
    /// as kubelet drops it.
    Ignored,
}

/// A client's binary message under `protocol`.
pub fn client_event(protocol: Protocol, data: &[u8]) -> ClientEvent<'_> {
    match data.split_first() {
        Some((&STDIN, rest)) => ClientEvent::Stdin(rest),
        Some((&CLOSE, [STDIN])) if protocol == Protocol::V5 => ClientEvent::CloseStdin,
        Some((&RESIZE, rest)) => {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Size {
                width: u16,
                height: u16,
            }
            match serde_json::from_slice::<Size>(rest) {
                Ok(s) => ClientEvent::Resize {
                    width: s.width,
                    height: s.height,
                },
                Err(_) => ClientEvent::Ignored,
            }
        }
        _ => ClientEvent::Ignored,
    }
}

/// What runs a session's command: the agent binary and the container's main process.
pub struct Target {
    pub agent_exe: PathBuf,
    pub pid: i32,
}

/// Run `opts.command` in `target` and speak `protocol` with the client on `io` until the
/// command is done (its output drained, its status sent) or the client goes away (the
/// command is then killed).
pub async fn session<S>(io: S, protocol: Protocol, opts: ExecOptions, target: Target)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(32);
    let writer = tokio::spawn(write_frames(wr, rx));
    let status = match Process::spawn(&opts, &target) {
        Ok(process) => process.run(ws::Reader::new(rd), protocol, &tx).await,
        Err(e) => Some(failure_status(&e)),
    };
    if let Some(status) = status {
        let _ = tx
            .send(channel_frame(
                ERROR,
                &serde_json::to_vec(&status).unwrap_or_default(),
            ))
            .await;
        let _ = tx.send(ws::close_frame(1000, "")).await;
    }
    drop(tx);
    let _ = writer.await;
}

async fn write_frames<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = rx.recv().await {
        if wr.write_all(&frame).await.is_err() || wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// The session's end of a command's stdin, and of one of its outputs.
pub(super) type Input = Box<dyn AsyncWrite + Send + Unpin>;
pub(super) type Output = Box<dyn AsyncRead + Send + Unpin>;

/// A running command and the ends of its stdio the session holds.
pub(super) struct Process {
    pub(super) child: tokio::process::Child,
    pub(super) command: Vec<String>,
    pub(super) stdin: Option<Input>,
    pub(super) outputs: Vec<(u8, Output)>,
    /// The pseudo-terminal's master, for resizes.
    pub(super) tty: Option<OwnedFd>,
}

impl Process {
    pub(super) fn spawn(opts: &ExecOptions, target: &Target) -> Result<Process, String> {
        let mut cmd = tokio::process::Command::new(&target.agent_exe);
        cmd.arg("exec-in").arg("--pid").arg(target.pid.to_string());
        if opts.tty {
            cmd.arg("--tty");
        }
        cmd.arg("--").args(&opts.command).kill_on_drop(true);
        if opts.tty {
            Self::spawn_tty(cmd, opts)
        } else {
            Self::spawn_piped(cmd, opts)
        }
    }

    fn spawn_piped(
        mut cmd: tokio::process::Command,
        opts: &ExecOptions,
    ) -> Result<Process, String> {
        let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(pipe(opts.stdin))
            .stdout(pipe(opts.stdout))
            .stderr(pipe(opts.stderr));
        let mut child = cmd.spawn().map_err(|e| format!("starting exec-in: {e}"))?;
        let mut outputs: Vec<(u8, Output)> = Vec::new();
        if let Some(out) = child.stdout.take() {
            outputs.push((STDOUT, Box::new(out)));
        }
        if let Some(err) = child.stderr.take() {
            outputs.push((STDERR, Box::new(err)));
        }
        let stdin = child.stdin.take().map(|s| Box::new(s) as Input);
        Ok(Process {
            child,
            command: opts.command.clone(),
            stdin,
            outputs,
            tty: None,
        })
    }

    fn spawn_tty(mut cmd: tokio::process::Command, opts: &ExecOptions) -> Result<Process, String> {
        let pty = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup: {e}"));
        cmd.stdin(Stdio::from(dup(&pty.slave)?))
            .stdout(Stdio::from(dup(&pty.slave)?))
            .stderr(Stdio::from(pty.slave));
        let child = cmd.spawn().map_err(|e| format!("starting exec-in: {e}"))?;
        // The command holds the only slave ends now (ours went with `cmd`): once it and its
        // children are gone, reading the master ends.
        drop(cmd);
        let reader = tokio::fs::File::from_std(std::fs::File::from(dup(&pty.master)?));
        let writer = tokio::fs::File::from_std(std::fs::File::from(dup(&pty.master)?));
        Ok(Process {
            child,
            command: opts.command.clone(),
            stdin: opts.stdin.then(|| Box::new(writer) as Input),
            outputs: if opts.stdout {
                vec![(STDOUT, Box::new(reader) as Output)]
            } else {
                Vec::new()
            },
            tty: Some(pty.master),
        })
    }

    /// Pump stdio until the command is done: its status, or `None` when the client left.
    async fn run<R>(
        self,
        mut reader: ws::Reader<R>,
        protocol: Protocol,
        tx: &mpsc::Sender<Vec<u8>>,
    ) -> Option<Value>
    where
        R: AsyncRead + Unpin,
    {
        let Process {
            mut child,
            command,
            mut stdin,
            outputs,
            tty,
        } = self;
        let pumps: Vec<_> = outputs
            .into_iter()
            .map(|(channel, out)| tokio::spawn(pump(channel, out, tx.clone())))
            .collect();
        let done = async move {
            for p in pumps {
                let _ = p.await;
            }
            child.wait().await
        };
        let input = async {
            loop {
                let data = match reader.next().await {
                    Ok(Message::Binary(data)) => data,
                    Ok(Message::Ping(p)) => {
                        let _ = tx.send(ws::encode(ws::OP_PONG, &p)).await;
                        continue;
                    }
                    Ok(Message::Text(_)) => continue,
                    Ok(Message::Close) | Err(_) => return,
                };
                match client_event(protocol, &data) {
                    ClientEvent::Stdin(bytes) => {
                        if let Some(s) = stdin.as_mut()
                            && (s.write_all(bytes).await.is_err() || s.flush().await.is_err())
                        {
                            stdin = None;
                        }
                    }
                    ClientEvent::CloseStdin => {
                        if let Some(mut s) = stdin.take() {
                            let _ = s.shutdown().await;
                        }
                    }
                    ClientEvent::Resize { width, height } => {
                        if let Some(master) = &tty {
                            resize(master, width, height);
                        }
                    }
                    ClientEvent::Ignored => {}
                }
            }
        };
        tokio::select! {
            status = done => Some(match status {
                Ok(s) => exit_status(&command, exit_code(s)),
                Err(e) => failure_status(&format!("waiting for the command: {e}")),
            }),
            () = input => None,
        }
    }
}

/// The code a shell would report: the exit code, or 128 + the signal that ended it.
pub(super) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Copy one output of the command to its channel; a pseudo-terminal's master reading EIO
/// (no slave left) is its end.
async fn pump(channel: u8, mut out: Output, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match out.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(channel_frame(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Set the terminal's size, which the kernel signals to its foreground process group.
pub(super) fn resize(master: &OwnedFd, width: u16, height: u16) {
    let size = nix::libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `master` is an open pseudo-terminal fd and `size` a valid winsize that
    // outlives the call; TIOCSWINSZ only reads it.
    let rc = unsafe {
        nix::libc::ioctl(
            master.as_raw_fd(),
            nix::libc::TIOCSWINSZ,
            std::ptr::from_ref(&size),
        )
    };
    if rc != 0 {
        tracing::debug!(error = %nix::errno::Errno::last(), "resizing the terminal");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_v5_before_v4() {
        assert_eq!(
            negotiate(["v4.channel.k8s.io, v5.channel.k8s.io"]),
            Some(Protocol::V5)
        );
        assert_eq!(
            negotiate(["channel.k8s.io", "v4.channel.k8s.io"]),
            Some(Protocol::V4)
        );
        assert_eq!(
            negotiate(["v3.channel.k8s.io, base64.channel.k8s.io"]),
            None
        );
        assert_eq!(negotiate([]), None);
    }

    #[test]
    fn parses_exec_queries() {
        let o = ExecOptions::from_query(Some(
            "command=sh&command=-c&command=echo+a%26b&stdin=1&stdout=true&stderr=1",
        ))
        .unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo a&b"]);
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        let o = ExecOptions::from_query(Some("command=sh&stdout=1&stderr=1&tty=1")).unwrap();
        assert!(o.tty && o.stdout && !o.stderr);
        assert_eq!(
            ExecOptions::from_query(Some("command=ls&stdin=0")),
            Err("you must specify at least 1 of stdin, stdout, stderr".to_string())
        );
    }

    #[test]
    fn statuses_as_kubelet_writes_them() {
        let cmd = ["sh".to_string(), "-c".into(), "exit 3".into()];
        assert_eq!(
            serde_json::to_string(&exit_status(&cmd, 0)).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let s = exit_status(&cmd, 3);
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(
            s["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        assert_eq!(
            s["details"]["causes"],
            json!([{"reason": "ExitCode", "message": "3"}])
        );
    }

    #[test]
    fn frames_and_client_events() {
        assert_eq!(channel_frame(STDOUT, b"hi"), b"\x82\x03\x01hi");
        assert_eq!(channel_frame(ERROR, b""), b"\x82\x01\x03");
        assert_eq!(
            client_event(Protocol::V5, b"\x00abc"),
            ClientEvent::Stdin(b"abc")
        );
        assert_eq!(
            client_event(Protocol::V5, &[255, 0]),
            ClientEvent::CloseStdin
        );
        assert_eq!(client_event(Protocol::V4, &[255, 0]), ClientEvent::Ignored);
        assert_eq!(
            client_event(Protocol::V4, b"\x04{\"Width\":120,\"Height\":40}"),
            ClientEvent::Resize {
                width: 120,
                height: 40
            }
        );
        assert_eq!(
            client_event(Protocol::V4, b"\x04{\"Width\":-1}"),
            ClientEvent::Ignored
        );
        assert_eq!(client_event(Protocol::V4, b""), ClientEvent::Ignored);
        assert_eq!(client_event(Protocol::V4, b"\x01out"), ClientEvent::Ignored);
    }

    /// A whole session over an in-memory socket, the command a shell script standing in
    /// for `skiff-agent exec-in` (which needs root): stdin is echoed back, v5's close
    /// signal ends it, the exit code comes back as a Status.
    #[tokio::test]
    async fn a_session_pipes_stdio_and_reports_the_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-agent");
        // Drops `exec-in --pid N --`, then runs the rest.
        std::fs::write(&fake, "#!/bin/sh\nshift 4\nexec \"$@\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (client, server) = tokio::io::duplex(1 << 16);
        let opts = ExecOptions::from_query(Some(
            "command=sh&command=-c&command=cat;+echo+err+>%262;+exit+3&stdin=1&stdout=1&stderr=1",
        ))
        .unwrap();
        let target = Target {
            agent_exe: fake,
            pid: 1,
        };
        let task = tokio::spawn(session(server, Protocol::V5, opts, target));
        let (mut rd, mut wr) = tokio::io::split(client);
        let masked = |payload: &[u8]| {
            let mut f = vec![0x82, 0x80 | payload.len() as u8, 0, 0, 0, 0];
            f.extend_from_slice(payload);
            f
        };
        wr.write_all(&masked(b"\x00hello\n")).await.unwrap();
        wr.write_all(&masked(&[255, 0])).await.unwrap();
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        task.await.unwrap();
        // Frames as sent (the test's are shorter than 64 KiB).
        let mut frames: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut rest = &got[..];
        while let [op, len, tail @ ..] = rest {
            let (len, tail) = match *len {
                126 => (
                    usize::from(u16::from_be_bytes([tail[0], tail[1]])),
                    &tail[2..],
                ),
                n => (usize::from(n), tail),
            };
            frames.push((*op, tail[..len].to_vec()));
            rest = &tail[len..];
        }
        let data = |ch: u8| -> Vec<u8> {
            frames
                .iter()
                .filter(|(op, p)| *op == 0x82 && p[0] == ch)
                .flat_map(|(_, p)| p[1..].to_vec())
                .collect()
        };
        assert_eq!(data(STDOUT), b"hello\n");
        assert_eq!(data(STDERR), b"err\n");
        let status: Value = serde_json::from_slice(&data(ERROR)).unwrap();
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        assert_eq!(frames.last().unwrap(), &(0x88, vec![0x03, 0xe8]));
    }
}

//! `kubectl exec` over SPDY/3.1 (kubectl 1.29 and older), remotecommand's
//! `v4.channel.k8s.io`: the client opens one SPDY stream per stdio stream, named by its
//! `streamType` header (`error`, `stdin`, `stdout`, `stderr`, `resize`); once the streams the
//! request's flags call for are there, the command runs as for the WebSocket protocols
//! ([`super::exec`]), its outputs on their streams, and its outcome written on the error stream
//! as the same `metav1.Status` before the streams are closed.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::exec::{self, ExecOptions, Process, Target};
use super::spdy::{self, Stream, StreamWriter};

/// The remotecommand protocol served over SPDY.
pub const PROTOCOL: &str = "v4.channel.k8s.io";

/// How long the client has to open the streams (kubelet's stream creation timeout).
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);

/// The stream protocol for a client offering `offered` (`X-Stream-Protocol-Version`), or
/// kubelet's refusal.
pub fn negotiate(offered: &[String]) -> Result<&'static str, String> {
    if offered.iter().any(|v| v == PROTOCOL) {
        return Ok(PROTOCOL);
    }
    Err(format!(
        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports [\"{PROTOCOL}\"]"
    ))
}

/// The stream types a request with `opts` waits for.
fn expected(opts: &ExecOptions) -> Vec<&'static str> {
    let mut want = vec!["error"];
    if opts.stdin {
        want.push("stdin");
    }
    if opts.stdout {
        want.push("stdout");
    }
    if opts.stderr && !opts.tty {
        want.push("stderr");
    }
    if opts.tty {
        want.push("resize");
    }
    want
}

/// Serve one SPDY exec session on `io`.
pub async fn session<S>(io: S, opts: ExecOptions, target: Target)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Stream>(8);
    let serve = spdy::serve(io, tx);
    let run = async move {
        let Some(streams) = gather(rx, &expected(&opts)).await else {
            return;
        };
        run(streams, &opts, &target).await;
        // The client closes the connection once it has read the status.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = serve => {}
        () = run => {}
    }
}

/// The streams named by `want`, as they arrive; `None` if the client does not open them in
/// time (or leaves). Streams of other types are reset, as kubelet does.
async fn gather(mut rx: mpsc::Receiver<Stream>, want: &[&str]) -> Option<HashMap<String, Stream>> {
    let mut got: HashMap<String, Stream> = HashMap::new();
    let collect = async {
        while got.len() < want.len() {
            let s = rx.recv().await?;
            let kind = s.headers.get("streamtype").unwrap_or_default().to_string();
            if want.contains(&kind.as_str()) && !got.contains_key(&kind) {
                got.insert(kind, s);
            } else {
                tracing::debug!(%kind, "exec: unexpected stream");
                s.out.reset().await;
            }
        }
        Some(())
    };
    match tokio::time::timeout(STREAMS_TIMEOUT, collect).await {
        Ok(Some(())) => Some(got),
        _ => {
            tracing::debug!("exec: timed out waiting for the client's streams");
            None
        }
    }
}

/// Run the command with the streams, then write its status and close them.
async fn run(mut streams: HashMap<String, Stream>, opts: &ExecOptions, target: &Target) {
    let Some(error) = streams.remove("error") else {
        return;
    };
    let status = match Process::spawn(opts, target) {
        Ok(p) => drive(p, &mut streams).await,
        Err(e) => exec::failure_status(&e),
    };
    let _ = error
        .out
        .write(&serde_json::to_vec(&status).unwrap_or_default())
        .await;
    error.out.close().await;
    for s in streams.values() {
        s.out.close().await;
    }
}

/// Pump stdio between the command and the streams until it is done: its status.
async fn drive(process: Process, streams: &mut HashMap<String, Stream>) -> serde_json::Value {
    let Process {
        mut child,
        command,
        stdin,
        outputs,
        tty,
    } = process;
    let pumps: Vec<_> = outputs
        .into_iter()
        .filter_map(|(channel, out)| {
            let name = if channel == exec::STDERR {
                "stderr"
            } else {
                "stdout"
            };
            let writer = streams.get(name)?.out.clone();
            Some(tokio::spawn(pump(out, writer)))
        })
        .collect();
    if let (Some(mut input), Some(s)) = (stdin, streams.get_mut("stdin")) {
        let mut incoming = std::mem::replace(&mut s.incoming, mpsc::channel(1).1);
        tokio::spawn(async move {
            while let Some(chunk) = incoming.recv().await {
                if input.write_all(&chunk).await.is_err() || input.flush().await.is_err() {
                    return;
                }
            }
            let _ = input.shutdown().await;
        });
    }
    if let (Some(master), Some(s)) = (tty, streams.get_mut("resize")) {
        let mut incoming = std::mem::replace(&mut s.incoming, mpsc::channel(1).1);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(chunk) = incoming.recv().await {
                buf.extend_from_slice(&chunk);
                for (width, height) in take_sizes(&mut buf) {
                    exec::resize(&master, width, height);
                }
            }
        });
    }
    for p in pumps {
        let _ = p.await;
    }
    match child.wait().await {
        Ok(s) => exec::exit_status(&command, exec::exit_code(s)),
        Err(e) => exec::failure_status(&format!("waiting for the command: {e}")),
    }
}

/// The complete `{"Width":…,"Height":…}` objects at the start of `buf` (the client's JSON
/// encoder writes them one after another), removed from it.
fn take_sizes(buf: &mut Vec<u8>) -> Vec<(u16, u16)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Size>();
    loop {
        match it.next() {
            Some(Ok(s)) => {
                out.push((s.width, s.height));
                consumed = it.byte_offset();
            }
            // An object cut short: the rest comes in a later chunk.
            Some(Err(e)) if e.is_eof() => break,
            // Not a size at all: dropped, as kubelet drops what it cannot decode.
            Some(Err(_)) => {
                consumed = buf.len();
                break;
            }
            None => break,
        }
    }
    buf.drain(..consumed);
    out
}

async fn pump(mut out: exec::Output, writer: StreamWriter) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match out.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if writer.write(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    writer.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_expected_from_the_flags() {
        let opts = |stdin, stdout, stderr, tty| ExecOptions {
            command: vec!["sh".into()],
            stdin,
            stdout,
            stderr,
            tty,
        };
        assert_eq!(
            expected(&opts(false, true, true, false)),
            ["error", "stdout", "stderr"]
        );
        assert_eq!(
            expected(&opts(true, true, true, true)),
            ["error", "stdin", "stdout", "resize"]
        );
    }

    #[test]
    fn negotiates_v4_only() {
        assert_eq!(
            negotiate(&["v4.channel.k8s.io".into(), "v3.channel.k8s.io".into()]),
            Ok(PROTOCOL)
        );
        assert!(
            negotiate(&["channel.k8s.io".into()])
                .unwrap_err()
                .contains("unable to negotiate")
        );
    }

    #[test]
    fn sizes_split_across_chunks() {
        let mut buf = br#"{"Width":80,"Height":24}{"Width":100,"#.to_vec();
        assert_eq!(take_sizes(&mut buf), [(80, 24)]);
        buf.extend_from_slice(br#""Height":30}"#);
        assert_eq!(take_sizes(&mut buf), [(100, 30)]);
        assert!(buf.is_empty());
        let mut junk = br#"{"Depth":3}"#.to_vec();
        assert_eq!(take_sizes(&mut junk), []);
        assert!(junk.is_empty());
    }
}

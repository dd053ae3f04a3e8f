//! Running `helm` and `kubectl` (the install paths users take), with a deadline.

use std::process::Stdio;
use std::time::Duration;

use crate::report::{Error, Result};

/// Output of a finished command.
#[derive(Debug, Clone)]
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args` (stdin: `input`), killing it after `timeout`.
pub async fn run(program: &str, args: &[&str], input: Option<&str>, timeout: Duration) -> Result<Output> {
    let cmdline = format!("{program} {}", args.join(" "));
    let err = |msg: String| Error::Command { cmd: cmdline.clone(), msg };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| err(format!("cannot start: {e}")))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(text.as_bytes()).await.map_err(|e| err(format!("writing stdin: {e}")))?;
    }
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| err(format!("no exit within {} s", timeout.as_secs())))?
        .map_err(|e| err(e.to_string()))?;
    Ok(Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs a command that must succeed; returns its stdout.
pub async fn must(program: &str, args: &[&str], input: Option<&str>, timeout: Duration) -> Result<String> {
    let out = run(program, args, input, timeout).await?;
    if out.ok {
        Ok(out.stdout)
    } else {
        Err(Error::Command {
            cmd: format!("{program} {}", args.join(" ")),
            msg: format!("failed:\n{}{}", out.stdout, out.stderr),
        })
    }
}

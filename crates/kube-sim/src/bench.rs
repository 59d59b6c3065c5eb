//! `kube-sim --bench-list`: what serving a big list costs the server, against what decoding it
//! costs a client. The server runs as a child process so its CPU time is measured alone
//! (from /proc), while this process fetches the list and decodes it into `serde_json::Value`.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ListBenchRound {
    pub bytes: usize,
    pub items: usize,
    pub server_cpu_ms: f64,
    pub fetch_wall_ms: f64,
    pub client_decode_cpu_ms: f64,
}

/// CPU time (user+system) of a process, from /proc/PID/stat.
fn cpu_ms(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    Ok(ticks * 10.0)
}

async fn fetch(addr: &str, path: &str) -> anyhow::Result<bytes::Bytes> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr)
        .header(hyper::header::ACCEPT, "application/json")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    if resp.status() != 200 {
        bail!("HTTP {}", resp.status());
    }
    Ok(resp.into_body().collect().await?.to_bytes())
}

/// Starts `exe` with `--pods pods --object-bytes object_bytes`, then lists all pods `rounds` times.
pub async fn run(
    exe: &std::path::Path,
    pods: usize,
    object_bytes: usize,
    rounds: usize,
) -> anyhow::Result<Vec<ListBenchRound>> {
    let mut child = Command::new(exe)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--pods",
            &pods.to_string(),
            "--object-bytes",
            &object_bytes.to_string(),
            "--history",
            "1000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the server")?;
    let pid = child.id().to_string();
    let stdout = child.stdout.take().context("server stdout")?;
    let line = tokio::task::spawn_blocking(move || {
        let mut l = String::new();
        BufReader::new(stdout).read_line(&mut l).map(|_| l)
    })
    .await??;
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .filter(|_| line.contains("listening on http://"))
        .context("unexpected first line from the server")?
        .to_string();
    let result = async {
        // Let the server settle after the preload.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut out = Vec::new();
        for _ in 0..rounds {
            let c0 = cpu_ms(&pid)?;
            let t = Instant::now();
            let body = fetch(&addr, "/api/v1/pods").await?;
            let fetch_wall_ms = t.elapsed().as_secs_f64() * 1e3;
            let server_cpu_ms = cpu_ms(&pid)? - c0;
            let me = std::process::id().to_string();
            let d0 = cpu_ms(&me)?;
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            let client_decode_cpu_ms = cpu_ms(&me)? - d0;
            out.push(ListBenchRound {
                bytes: body.len(),
                items: v["items"].as_array().map_or(0, Vec::len),
                server_cpu_ms,
                fetch_wall_ms,
                client_decode_cpu_ms,
            });
            drop(v);
        }
        anyhow::Ok(out)
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

//! A TCP proxy a test can cut: "the database went away" without stopping the machine's
//! shared PostgreSQL. While cut, open connections are closed and new ones refused. It can also
//! move to another target ([`TcpProxy::retarget`]): a read-write service whose endpoint
//! changes, as an operator moves it at a switchover.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct TcpProxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    target: Arc<Mutex<SocketAddr>>,
    delay_ms: Arc<AtomicU64>,
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> anyhow::Result<TcpProxy> {
        Self::start_inner(target, None).await
    }

    /// A proxy that also holds every byte coming back from `target` by `delay` (latency, not
    /// a bandwidth limit: bytes keep flowing, each arrives `delay` late); [`Self::set_delay`]
    /// changes it for the bytes read from then on.
    pub async fn start_delayed(target: SocketAddr, delay: Duration) -> anyhow::Result<TcpProxy> {
        Self::start_inner(target, Some(delay)).await
    }

    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    async fn start_inner(target: SocketAddr, delay: Option<Duration>) -> anyhow::Result<TcpProxy> {
        let delay_ms = Arc::new(AtomicU64::new(delay.map_or(0, |d| d.as_millis() as u64)));
        let delayed = delay.is_some();
        let delay_ms2 = delay_ms.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let up2 = up.clone();
        let target = Arc::new(Mutex::new(target));
        let target2 = target.clone();
        let gen2 = generation.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = gen2.subscribe();
                let delay_ms = delay_ms2.clone();
                let target = match target2.lock() {
                    Ok(t) => *t,
                    Err(poisoned) => *poisoned.into_inner(),
                };
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    if !delayed {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.changed() => {}
                        }
                    } else {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::select! {
                            _ = copy(in_read, out_write, None) => {}
                            _ = copy(out_read, in_write, Some(delay_ms)) => {}
                            _ = cut.changed() => {}
                        }
                    }
                });
            }
        });
        Ok(TcpProxy {
            port,
            up,
            target,
            delay_ms,
            generation,
            task,
        })
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Moves to `to`: open connections are closed (as when a service's endpoint moves, the
    /// clients see their connections end) and new ones reach `to`.
    pub fn retarget(&self, to: SocketAddr) {
        match self.target.lock() {
            Ok(mut t) => *t = to,
            Err(poisoned) => *poisoned.into_inner() = to,
        }
        self.generation.send_modify(|g| *g += 1);
    }
}

/// Copies `from` to `to`, each chunk `delay_ms` after it was read (reading goes on meanwhile).
async fn copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay_ms: Option<Arc<AtomicU64>>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let delay = delay_ms.as_ref().map_or(0, |d| d.load(Ordering::SeqCst));
                    let at = tokio::time::Instant::now() + Duration::from_millis(delay);
                    if tx.send((at, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

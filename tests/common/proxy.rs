//! A TCP proxy of the test's own between broker-bridge and a broker, so a test can cut
//! the connection (outage) or silently drop the broker's replies (lost confirms) without
//! touching the shared broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    replies: Arc<AtomicBool>,
    // Bumped on `cut` so open connections close.
    generation: watch::Sender<u64>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` while up.
    pub async fn start(target: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let replies = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let (accept_up, accept_replies, accept_generation) =
            (up.clone(), replies.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !accept_up.load(Ordering::SeqCst) {
                    drop(inbound); // refused while cut
                    continue;
                }
                let mut cut = accept_generation.subscribe();
                let replies = accept_replies.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut server_read, mut server_write) = outbound.into_split();
                    let requests = tokio::io::copy(&mut client_read, &mut server_write);
                    let answers = async {
                        let mut buffer = vec![0u8; 64 * 1024];
                        loop {
                            let n = server_read.read(&mut buffer).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            if replies.load(Ordering::SeqCst) {
                                client_write.write_all(&buffer[..n]).await?;
                            }
                        }
                    };
                    tokio::select! {
                        _ = requests => {}
                        _ = answers => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            up,
            replies,
            generation,
        }
    }

    /// Closes every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again (and passes replies again).
    pub fn restore(&self) {
        self.replies.store(true, Ordering::SeqCst);
        self.up.store(true, Ordering::SeqCst);
    }

    /// Keeps connections open and forwards requests, but drops everything the broker
    /// answers: publishes reach the broker, their confirms never come back.
    pub fn drop_replies(&self) {
        self.replies.store(false, Ordering::SeqCst);
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

//! A TCP relay to put between a process and PostgreSQL, to play a network that misbehaves
//! without ever closing a connection: it can lose every byte in flight (a host that vanished),
//! hold them back (a partition that heals), or wait for a session to be inside a transaction
//! and cut it right there (reading the server's `ReadyForQuery` messages, whose status byte
//! says `T` inside a transaction). While it is not forwarding, a close on one side is not
//! passed on to the other, so neither end learns anything from TCP: only timeouts can tell.
//!
//! Use `sslmode=disable` in URLs that go through it, so the server's stream is framed from its
//! first byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Forward = 0,
    /// Read both ways and discard: bytes in flight are lost, connections stay open.
    Blackhole = 1,
    /// Read nothing: bytes wait in the kernel's buffers until the mode changes.
    Pause = 2,
}

struct Shared {
    mode: AtomicU8,
    /// 0: not armed; n > 0: cut (go [`Mode::Blackhole`] for good) when a session is about
    /// to hear that it is inside a transaction that has updated rows n times.
    cut_at_statement: AtomicUsize,
    cuts: AtomicUsize,
}

pub struct Relay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(Mode::Forward as u8),
            cut_at_statement: AtomicUsize::new(0),
            cuts: AtomicUsize::new(0),
        });
        let state = shared.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        pipe(client, server, state);
                    }
                });
            }
        });
        Relay { addr, shared }
    }

    pub fn set(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn mode(&self) -> Mode {
        mode_of(&self.shared)
    }

    /// Loses bytes for `down`, forwards for `up`, `times` times.
    pub async fn flap(&self, times: usize, down: Duration, up: Duration) {
        for _ in 0..times {
            self.set(Mode::Blackhole);
            tokio::time::sleep(down).await;
            self.set(Mode::Forward);
            tokio::time::sleep(up).await;
        }
    }

    /// From now on, the first session whose transaction has completed `updates` `UPDATE`s
    /// that changed rows makes the relay lose every byte, for good, before the answer to the
    /// last of them reaches the client: the server is left idle in a transaction that holds
    /// the row locks of those statements.
    pub fn cut_inside_transaction(&self, updates: usize) {
        self.shared
            .cut_at_statement
            .store(updates.max(1), Ordering::SeqCst);
    }

    /// Whether an armed cut has happened.
    pub fn has_cut(&self) -> bool {
        self.shared.cuts.load(Ordering::SeqCst) > 0
    }
}

fn mode_of(shared: &Shared) -> Mode {
    match shared.mode.load(Ordering::SeqCst) {
        0 => Mode::Forward,
        1 => Mode::Blackhole,
        _ => Mode::Pause,
    }
}

fn pipe(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::spawn(pump(client_read, server_write, shared.clone(), None));
    tokio::spawn(pump(
        server_read,
        client_write,
        shared,
        Some(Framing::default()),
    ));
}

/// Reads the server's messages (type byte, then a big-endian length that counts itself) to
/// follow the session's transaction state. Gives up for good once bytes were lost.
#[derive(Default)]
struct Framing {
    buf: Vec<u8>,
    lost_sync: bool,
    /// `UPDATE`s that changed rows in the current transaction (reset by a `ReadyForQuery`
    /// that says the session is idle).
    updates: usize,
}

impl Framing {
    /// Feeds bytes; returns true when, among them, the session is told it is inside a
    /// transaction that has made `cut_at` row-changing `UPDATE`s.
    fn feed(&mut self, bytes: &[u8], cut_at: usize) -> bool {
        if self.lost_sync {
            return false;
        }
        self.buf.extend_from_slice(bytes);
        let mut hit = false;
        loop {
            if self.buf.len() < 5 {
                break;
            }
            let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
            if !(4..=64 * 1024 * 1024).contains(&len) {
                self.lost_sync = true;
                return false;
            }
            if self.buf.len() < 1 + len {
                break;
            }
            match self.buf[0] {
                // CommandComplete: a tag such as "UPDATE 12\0".
                b'C' => {
                    let tag = String::from_utf8_lossy(&self.buf[5..1 + len]);
                    if tag
                        .strip_prefix("UPDATE ")
                        .is_some_and(|n| n.trim_end_matches('\0') != "0")
                    {
                        self.updates += 1;
                    }
                }
                // ReadyForQuery: its status byte is T inside a transaction, I outside.
                b'Z' if len == 5 => match self.buf[5] {
                    b'T' => hit |= cut_at > 0 && self.updates >= cut_at,
                    _ => self.updates = 0,
                },
                _ => {}
            }
            self.buf.drain(..1 + len);
        }
        hit
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<Shared>,
    mut framing: Option<Framing>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if mode_of(&shared) == Mode::Pause {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    if mode_of(&shared) == Mode::Forward {
                        return;
                    }
                    // A host that vanished sends no FIN: the other end must not learn of
                    // the close either. Keep its side open for as long as the test runs.
                    std::future::pending::<()>().await;
                    return;
                }
                Ok(n) => n,
            },
            // Wake up now and then to notice a change to Pause.
            _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
        };
        match mode_of(&shared) {
            Mode::Blackhole => {
                if let Some(f) = framing.as_mut() {
                    f.lost_sync = true;
                }
                continue;
            }
            Mode::Pause | Mode::Forward => {}
        }
        if let Some(f) = framing.as_mut() {
            let cut_at = shared.cut_at_statement.load(Ordering::SeqCst);
            if f.feed(&buf[..n], cut_at)
                && shared
                    .cut_at_statement
                    .compare_exchange(cut_at, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                shared.mode.store(Mode::Blackhole as u8, Ordering::SeqCst);
                shared.cuts.fetch_add(1, Ordering::SeqCst);
                continue;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

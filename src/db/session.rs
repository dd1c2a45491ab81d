//! Bounds on how long a vanished peer can hold anything, applied to every connection.
//!
//! A worker whose host loses power or its network in the middle of a transaction never closes
//! its connection. Left alone, PostgreSQL keeps that session "idle in transaction", holding its
//! row locks, until TCP keepalive gives up on the peer (about 2 h 11 min with Linux defaults),
//! and every other worker that needs those rows waits behind it. So every PostgreSQL session
//! this service opens sets, on the server side:
//!
//! - `idle_in_transaction_session_timeout`: a session that stops talking inside a transaction
//!   is ended and its locks are released;
//! - `lock_timeout`: a statement waiting for a row lock gives up (the caller backs off and
//!   retries) instead of queueing behind a dead session for hours;
//! - `statement_timeout`: no statement runs unbounded;
//! - `tcp_keepalives_idle/_interval/_count` and `tcp_user_timeout`: the server notices a peer
//!   that stopped answering within about [`SessionLimits::keepalive`] × 2.
//!
//! On the client side, the same keepalive and `TCP_USER_TIMEOUT` are set on the socket (so a
//! query to a vanished server fails instead of waiting for the kernel's 15-minute
//! retransmission limit), and queue operations run under a deadline
//! ([`SessionLimits::operation`], see [`super::Db::timed`]) after which their connection is
//! dropped rather than returned to the pool.
//!
//! SQLite is one file on one host: there is no peer to vanish. Its equivalent is
//! `busy_timeout`, the longest a writer waits for the file lock.

use std::time::Duration;

/// The limits every database session runs under. `Duration::ZERO` leaves a setting at the
/// server's default (for a managed PostgreSQL that refuses one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// A session idle inside a transaction this long is ended by the server.
    pub idle_in_transaction: Duration,
    /// A statement waits at most this long for a lock.
    pub lock_wait: Duration,
    /// A statement runs at most this long.
    pub statement: Duration,
    /// TCP keepalive idle time, both ends; probes follow every third of it, and the peer is
    /// declared dead after three unanswered probes (about twice this in all). Unacknowledged
    /// data times out after twice this too (`TCP_USER_TIMEOUT`).
    pub keepalive: Duration,
    /// Client-side deadline of one queue operation (a claim, a heartbeat, a batch of results):
    /// past it the connection is dropped, not reused, and the operation fails as transient.
    pub operation: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            idle_in_transaction: Duration::from_secs(10),
            lock_wait: Duration::from_secs(5),
            statement: Duration::from_secs(60),
            keepalive: Duration::from_secs(10),
            operation: Duration::from_secs(20),
        }
    }
}

impl SessionLimits {
    fn probe_interval(&self) -> Duration {
        (self.keepalive / 3).max(Duration::from_secs(1))
    }

    const PROBES: u32 = 3;

    fn dead_peer_after(&self) -> Duration {
        self.keepalive * 2
    }

    /// The `SET` statements that put these limits in force on a PostgreSQL session (one
    /// simple-protocol batch, sent once per new connection).
    pub fn postgres_settings(&self) -> String {
        let ms = |d: Duration| d.as_millis();
        let secs = |d: Duration| d.as_secs().max(1);
        let mut sql = String::new();
        let mut set = |name: &str, value: String| {
            sql.push_str(&format!("SET {name} = {value}; "));
        };
        if !self.idle_in_transaction.is_zero() {
            set(
                "idle_in_transaction_session_timeout",
                ms(self.idle_in_transaction).to_string(),
            );
        }
        if !self.lock_wait.is_zero() {
            set("lock_timeout", ms(self.lock_wait).to_string());
        }
        if !self.statement.is_zero() {
            set("statement_timeout", ms(self.statement).to_string());
        }
        if !self.keepalive.is_zero() {
            set("tcp_keepalives_idle", secs(self.keepalive).to_string());
            set(
                "tcp_keepalives_interval",
                secs(self.probe_interval()).to_string(),
            );
            set("tcp_keepalives_count", Self::PROBES.to_string());
            set("tcp_user_timeout", ms(self.dead_peer_after()).to_string());
        }
        sql
    }

    /// The `PRAGMA` that bounds a SQLite writer's wait for the file lock.
    pub fn sqlite_busy_timeout(&self) -> String {
        let wait = if self.lock_wait.is_zero() {
            Duration::from_secs(10)
        } else {
            self.lock_wait.max(Duration::from_secs(10))
        };
        format!("PRAGMA busy_timeout = {};", wait.as_millis())
    }

    /// Sets keepalive and `TCP_USER_TIMEOUT` on this process's TCP sockets connected to
    /// `peers` that do not have keepalive on yet: the connection sqlx just opened (sqlx does
    /// not expose its socket, so it is found by its peer address). Returns how many sockets
    /// were configured. Linux only; elsewhere the server-side settings still apply.
    pub fn configure_client_sockets(&self, peers: &[std::net::SocketAddr]) -> usize {
        if self.keepalive.is_zero() || peers.is_empty() {
            return 0;
        }
        client_socket::configure(
            peers,
            self.keepalive,
            self.probe_interval(),
            Self::PROBES,
            self.dead_peer_after(),
        )
    }
}

#[cfg(target_os = "linux")]
mod client_socket {
    use std::net::SocketAddr;
    use std::os::fd::BorrowedFd;
    use std::time::Duration;

    use socket2::{SockRef, TcpKeepalive, Type};

    pub fn configure(
        peers: &[SocketAddr],
        idle: Duration,
        interval: Duration,
        probes: u32,
        user_timeout: Duration,
    ) -> usize {
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return 0;
        };
        let keepalive = TcpKeepalive::new()
            .with_time(idle)
            .with_interval(interval)
            .with_retries(probes);
        let mut configured = 0;
        for entry in entries.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
            if !is_socket {
                continue;
            }
            // SAFETY: the descriptor is open in this process (listed in /proc/self/fd) and is
            // only borrowed for the calls below; if it closes meanwhile, they fail with EBADF.
            // Only TCP sockets whose peer is the database are touched.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = SockRef::from(&fd);
            let ours = socket.r#type().is_ok_and(|t| t == Type::STREAM)
                && socket
                    .peer_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .is_some_and(|a| peers.contains(&a));
            if !ours || socket.keepalive().unwrap_or(true) {
                continue;
            }
            let done = socket.set_tcp_keepalive(&keepalive).is_ok()
                && socket.set_keepalive(true).is_ok()
                && socket.set_tcp_user_timeout(Some(user_timeout)).is_ok();
            if done {
                configured += 1;
            }
        }
        configured
    }
}

#[cfg(not(target_os = "linux"))]
mod client_socket {
    pub fn configure(
        _: &[std::net::SocketAddr],
        _: std::time::Duration,
        _: std::time::Duration,
        _: u32,
        _: std::time::Duration,
    ) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_settings_name_every_limit() {
        let sql = SessionLimits::default().postgres_settings();
        for expected in [
            "SET idle_in_transaction_session_timeout = 10000;",
            "SET lock_timeout = 5000;",
            "SET statement_timeout = 60000;",
            "SET tcp_keepalives_idle = 10;",
            "SET tcp_keepalives_interval = 3;",
            "SET tcp_keepalives_count = 3;",
            "SET tcp_user_timeout = 20000;",
        ] {
            assert!(sql.contains(expected), "{expected} missing from {sql}");
        }
    }

    #[test]
    fn a_zero_limit_is_left_to_the_server() {
        let limits = SessionLimits {
            lock_wait: Duration::ZERO,
            keepalive: Duration::ZERO,
            ..SessionLimits::default()
        };
        let sql = limits.postgres_settings();
        assert!(!sql.contains("lock_timeout"));
        assert!(!sql.contains("tcp_"));
        assert!(sql.contains("idle_in_transaction_session_timeout"));
    }

    #[test]
    fn client_keepalive_is_set_on_sockets_to_the_peer_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let theirs = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let limits = SessionLimits::default();
        let n = limits.configure_client_sockets(&[listener.local_addr().unwrap()]);
        assert!(n >= 1, "configured {n}");
        assert!(SockRefCheck::keepalive(&ours));
        assert!(!SockRefCheck::keepalive(&theirs));
        // Already configured sockets are left alone.
        assert_eq!(
            limits.configure_client_sockets(&[listener.local_addr().unwrap()]),
            0
        );
    }

    struct SockRefCheck;
    impl SockRefCheck {
        fn keepalive(stream: &std::net::TcpStream) -> bool {
            socket2::SockRef::from(stream).keepalive().unwrap()
        }
    }
}

//! Network namespaces for tests: another host, on this machine. [`NetNs::create`] makes a
//! namespace joined to the root namespace by a veth pair, each end with an address of a /30
//! in 198.18.0.0/15 (RFC 2544's range for network tests, never routed on the internet). A
//! process started in the namespace ([`NetNs::command`]) reaches servers bound to `0.0.0.0`
//! (or to [`NetNs::host_addr`]) at `host_addr`, and those servers see it come from
//! [`NetNs::ns_addr`] — not from loopback. A server started in the namespace is reached at
//! `ns_addr` from the root namespace.
//!
//! Names carry the test process's id and a counter, so parallel tests and test binaries never
//! collide; the namespace and both veth ends are removed on drop (a panicking test included),
//! and namespaces left by a killed test process are swept by the next `create`.
//!
//! Needs root (CAP_NET_ADMIN) and iproute2's `ip`. [`NetNs::for_test`] turns their absence
//! into a clear `SKIPPED` line, or into a failure when `RP_REQUIRE_NETNS=1` (CI).

use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Set to `1` where the tests must not skip for want of namespaces (`.ci/run` sets it).
pub const REQUIRE_ENV: &str = "RP_REQUIRE_NETNS";

const NAME_PREFIX: &str = "rptest-";
/// 198.18.0.0/15: 32768 blocks of four addresses.
const RANGE_START: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const BLOCKS: u32 = 1 << 15;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace with a veth link to the root namespace. Removed on drop.
#[derive(Debug)]
pub struct NetNs {
    /// The namespace's name (`ip netns exec NAME …`).
    pub name: String,
    /// The veth end in the root namespace.
    pub host_if: String,
    /// The veth end inside the namespace.
    pub ns_if: String,
    /// The root namespace's address on the link.
    pub host_addr: Ipv4Addr,
    /// The namespace's address on the link.
    pub ns_addr: Ipv4Addr,
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Removes namespaces this helper made in test processes that no longer run.
fn sweep_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A /30 block of 198.18.0.0/15 that no interface of the root namespace uses yet.
fn free_block(seed: u32) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let used = ip(&["-o", "-4", "addr", "show"])?;
    for step in 0..BLOCKS {
        let block = (seed.wrapping_add(step.wrapping_mul(7919))) % BLOCKS;
        let base = RANGE_START + block * 4;
        let host = Ipv4Addr::from(base + 1);
        let ns = Ipv4Addr::from(base + 2);
        if !used.contains(&format!(" {host}/")) && !used.contains(&format!(" {ns}/")) {
            return Ok((host, ns));
        }
    }
    Err("no free /30 left in 198.18.0.0/15".into())
}

impl NetNs {
    /// Makes the namespace, the veth pair and their addresses, and brings everything up.
    pub fn create() -> Result<NetNs, String> {
        if !is_root() {
            return Err("not running as root".into());
        }
        sweep_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Interface names: at most 15 bytes.
        let host_if = format!("rp{pid:x}{n:x}h");
        let ns_if = format!("rp{pid:x}{n:x}n");
        let name = format!("{NAME_PREFIX}{pid}-{n}");
        let (host_addr, ns_addr) = free_block(pid.wrapping_mul(64).wrapping_add(n))?;
        // From here on, drop cleans up whatever was made.
        let netns = NetNs {
            name,
            host_if,
            ns_if,
            host_addr,
            ns_addr,
        };
        netns.set_up()?;
        Ok(netns)
    }

    fn set_up(&self) -> Result<(), String> {
        let (name, host_if, ns_if) = (&self.name, &self.host_if, &self.ns_if);
        let host_cidr = format!("{}/30", self.host_addr);
        let ns_cidr = format!("{}/30", self.ns_addr);
        ip(&["netns", "add", name])?;
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", ns_if,
        ])?;
        ip(&["link", "set", ns_if, "netns", name])?;
        ip(&["addr", "add", &host_cidr, "dev", host_if])?;
        ip(&["link", "set", host_if, "up"])?;
        ip(&["-n", name, "addr", "add", &ns_cidr, "dev", ns_if])?;
        ip(&["-n", name, "link", "set", ns_if, "up"])?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// For a test: the namespace, or `None` after printing `SKIPPED <test> …` when it cannot
    /// be made here. With `RP_REQUIRE_NETNS=1` it panics instead of skipping.
    pub fn for_test(test: &str) -> Option<NetNs> {
        match NetNs::create() {
            Ok(netns) => Some(netns),
            Err(why) if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") => {
                panic!("{test}: {REQUIRE_ENV}=1 but no network namespace could be made: {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED {test}: {why} (needs root for network namespaces)");
                None
            }
        }
    }

    /// `program` to be run inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program ARGS` inside the namespace to its end.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting one veth end deletes both; deleting the namespace ends what runs in it
        // only when the last process leaves, so the link goes first.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

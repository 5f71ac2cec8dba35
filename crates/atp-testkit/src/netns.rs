//! Network faults with Linux network namespaces: [`NetNs`] is a namespace
//! joined to the root namespace by a veth pair on its own /30, so that a
//! process started in it ([`NetNs::command`], [`crate::Atpd::start_in_netns`])
//! reaches the root namespace (etcd, the other nodes, the test) and is
//! reached from it only over that link. [`NetNs::cut`] drops every packet
//! on the link, both ways, and [`NetNs::heal`] lets them through again:
//! a partition in which connections hang (no reset, no "unreachable"), as
//! a pulled cable or a dead switch port would.
//!
//! Addressing: the root side of the link has [`NetNs::host_ip`], the
//! namespace side [`NetNs::ip`]; the namespace's default route goes through
//! the root side, so from inside, every address of the root namespace is
//! reachable (a process listening on `0.0.0.0` in the root namespace, or
//! on `host_ip`). Processes in the root namespace that the namespaced one
//! must call must therefore listen on `0.0.0.0` (or `host_ip`) and
//! advertise `host_ip`; loopback addresses do not cross namespaces. The
//! root-side address stays local to the root namespace during a cut, so
//! processes there keep reaching each other through it.
//!
//! The drop is a `tbf` qdisc with a 10-byte burst and a 1-byte queue on each
//! end of the link: every packet is larger than the burst and is dropped.
//! (`netem loss 100%` or a `matchall` filter would do the same, but need
//! kernel modules that minimal kernels lack; `tbf` is built in more often.)
//!
//! Needs root (`CAP_NET_ADMIN`) and the `ip` and `tc` commands (iproute2).
//! [`NetNs::create_or_skip`] returns `None` with a message when not root,
//! and panics instead when `CI` is set, so CI never skips silently.
//! Dropping a [`NetNs`] deletes the link and the namespace; namespaces left
//! behind by a killed test process (their name carries its pid) are deleted
//! by the next [`NetNs::create`].

use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace this module creates: `atpf-<pid>-<n>`.
const NAME_PREFIX: &str = "atpf-";
/// First address of the pool the /30 links are taken from (10.64.0.0/10).
const POOL_START: u32 = u32::from_be_bytes([10, 64, 0, 0]);
/// Number of /30 subnets in the pool.
const POOL_SUBNETS: u32 = 1 << 20;
/// Namespaces made by this process so far (part of their names).
static CREATED: AtomicU32 = AtomicU32::new(0);

/// Whether this process runs as root (uid 0), read from `/proc/self/status`.
pub fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().next().map(|uid| uid == "0"))
        .unwrap_or(false)
}

/// Whether `CI` is set (`CI=true`); empty, `false` and `0` count as unset.
pub fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.as_str(), "" | "false" | "0"))
}

/// A network namespace linked to the root namespace by one veth pair.
/// Deleted when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    host_link: String,
    ns_link: String,
    host_ip: Ipv4Addr,
    ip: Ipv4Addr,
}

impl NetNs {
    /// A new namespace, or `None` after printing why the test is skipped
    /// (not root); panics when `CI` is set and the test would be skipped.
    pub fn create_or_skip() -> Option<Self> {
        if !running_as_root() {
            assert!(
                !running_in_ci(),
                "network fault tests need root (ip netns, tc); CI must run them as root"
            );
            eprintln!("skipped: network fault tests need root (ip netns, tc)");
            return None;
        }
        Some(Self::create())
    }

    /// Creates the namespace `atpf-<pid>-<n>`, its veth pair and their
    /// addresses, deleting first any `atpf-` namespace whose process is
    /// gone. Panics with the command's output when a step fails.
    pub fn create() -> Self {
        remove_leftovers();
        let pid = std::process::id();
        let number = CREATED.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NAME_PREFIX}{pid}-{number}");
        // Interface names have at most 15 bytes.
        let host_link = format!("ah{pid:x}n{number}");
        let ns_link = "veth0".to_owned();
        let subnet = free_subnet(pid, number);
        let host_ip = Ipv4Addr::from(subnet + 1);
        let ip = Ipv4Addr::from(subnet + 2);
        let netns = Self { name, host_link, ns_link, host_ip, ip };
        netns.set_up();
        netns
    }

    fn set_up(&self) {
        let (name, host, inner) = (self.name.as_str(), self.host_link.as_str(), &self.ns_link);
        run(&["ip", "netns", "add", name]);
        run(&["ip", "link", "add", host, "type", "veth", "peer", "name", inner, "netns", name]);
        run(&["ip", "addr", "add", &format!("{}/30", self.host_ip), "dev", host]);
        run(&["ip", "link", "set", host, "up"]);
        self.run_inside(&["ip", "addr", "add", &format!("{}/30", self.ip), "dev", inner]);
        self.run_inside(&["ip", "link", "set", inner, "up"]);
        self.run_inside(&["ip", "link", "set", "lo", "up"]);
        self.run_inside(&["ip", "route", "add", "default", "via", &self.host_ip.to_string()]);
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace side's address: where a process inside listens.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The root side's address: reachable from inside (and, being an
    /// address of the root namespace, from the root namespace itself).
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// `program` to be run inside the namespace (`ip netns exec NAME
    /// program`; the environment is passed through, the process keeps the
    /// pid `ip` had, so signals reach it).
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Drops every packet on the link, both ways: nothing inside reaches
    /// the root namespace or is reached from it, connections hang.
    pub fn cut(&self) {
        let drop_all = ["root", "tbf", "rate", "8bit", "burst", "10", "limit", "1"];
        let mut outside = vec!["tc", "qdisc", "replace", "dev", self.host_link.as_str()];
        outside.extend(drop_all);
        run(&outside);
        let mut inside = vec!["tc", "qdisc", "replace", "dev", self.ns_link.as_str()];
        inside.extend(drop_all);
        self.run_inside(&inside);
    }

    /// Lets packets through again (undoes [`NetNs::cut`]; healing a link
    /// that is not cut does nothing).
    pub fn heal(&self) {
        let _ = command_output(&["tc", "qdisc", "del", "dev", &self.host_link, "root"]);
        let inside = ["tc", "qdisc", "del", "dev", self.ns_link.as_str(), "root"];
        let _ = command_output(&self.inside(&inside));
    }

    fn inside<'a>(&'a self, arguments: &[&'a str]) -> Vec<&'a str> {
        let mut command = vec!["ip", "netns", "exec", self.name.as_str()];
        command.extend_from_slice(arguments);
        command
    }

    fn run_inside(&self, arguments: &[&str]) {
        run(&self.inside(arguments));
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the root end deletes the pair at once; deleting only the
        // namespace would leave the pair until the kernel's deferred cleanup.
        let _ = command_output(&["ip", "link", "del", &self.host_link]);
        let _ = command_output(&["ip", "netns", "del", &self.name]);
    }
}

/// Runs a command, panicking with its output when it fails.
fn run(arguments: &[&str]) {
    let output = command_output(arguments)
        .unwrap_or_else(|error| panic!("could not run {arguments:?}: {error}"));
    assert!(
        output.status.success(),
        "{arguments:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn command_output(arguments: &[&str]) -> std::io::Result<Output> {
    Command::new(arguments[0])
        .args(&arguments[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
}

/// Deletes the namespaces (and their root-side links) of test processes
/// that are gone: `atpf-<pid>-<n>` with no `/proc/<pid>`.
fn remove_leftovers() {
    let Ok(output) = command_output(&["ip", "netns", "list"]) else { return };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else { continue };
        let Some((pid, number)) = rest.split_once('-') else { continue };
        let (Ok(pid), Ok(number)) = (pid.parse::<u32>(), number.parse::<u32>()) else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = command_output(&["ip", "link", "del", &format!("ah{pid:x}n{number}")]);
        let _ = command_output(&["ip", "netns", "del", name]);
    }
}

/// The first address of a /30 in 10.64.0.0/10 that no interface of the
/// root namespace uses, starting from one derived from `pid` and `number`
/// (so concurrent test processes start far apart).
fn free_subnet(pid: u32, number: u32) -> u32 {
    let used = command_output(&["ip", "-o", "-4", "addr", "show"])
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    let start = pid.wrapping_mul(64).wrapping_add(number) % POOL_SUBNETS;
    (0..POOL_SUBNETS)
        .map(|offset| POOL_START + ((start + offset) % POOL_SUBNETS) * 4)
        .find(|subnet| {
            let (first, second) = (Ipv4Addr::from(subnet + 1), Ipv4Addr::from(subnet + 2));
            !used.contains(&format!(" {first}/")) && !used.contains(&format!(" {second}/"))
        })
        .expect("a free /30 in 10.64.0.0/10")
}

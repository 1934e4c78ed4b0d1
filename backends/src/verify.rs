//! `kscratch verify`, the node side: probe endpoints made the way the
//! runtime makes pods, real TCP connections between them, and cleanup.
//!
//! A probe is a network namespace attached by the node's **own** CNI
//! configuration and plugins: the conflist kscratch wrote
//! (`/etc/cni/net.d/10-kscratch.conflist`) and the `bridge` and
//! `host-local` plugins found in `/opt/cni/bin` (containerd's `bin_dir`, as
//! the plan configures it) or else `/usr/lib/cni` (Debian's
//! `containernetworking-plugins`). The plugin is run with the CNI
//! environment protocol (`CNI_COMMAND=ADD`, the network config on stdin),
//! exactly as libcni runs it for a pod; it is the chain's first plugin, the
//! one that wires pods (`portmap` has no port mappings for a probe and is not
//! called). At the end every probe gets `CNI_COMMAND=DEL` (which releases its
//! host-local address) and its namespace is deleted.
//!
//! The probe agent is `socat`, not an uploaded helper: nothing is copied to
//! the node, and `socat` does what a probe needs with one command each way.
//! Each probe runs one listener (`TCP-LISTEN` with `fork`) that reads the
//! client's line and answers `peer=ADDRESS`, the source address it saw
//! (`SOCAT_PEERADDR`; a backlog of 256, since every probe of the cluster
//! connects at once and a full accept queue drops the handshake's last ACK,
//! which the client takes for a connection that never answers); a
//! connector sends one line and reads the answer, so a
//! cell reaches only when the handshake, the request line and the reply line
//! all went through. Pod-MTU packets are measured with one UDP datagram of
//! the pod MTU (the MTU the node's own conflist gives its pods) with DF set
//! (`mtudiscover=2`), which the other probe echoes back the same way: it
//! reaches only when both full-size packets crossed unfragmented (UDP may
//! lose a datagram on a busy node: up to three tries, 2 s each).
//! `verify` checks for `socat` and `ip` first and says how
//! to install them; it creates nothing on any node before every node passed.
//!
//! Everything a run creates is named after its run id and the node's index
//! in the scenario: namespaces `ksv-RUN-NODE-I`, the state directory
//! `/run/kscratch-verify/RUN-NODE` (the network
//! config, the namespaces and listener PIDs, cleanup reads them), and each
//! listener carries `#ksv-RUN` in its command line, so [`leftovers_script`]
//! can prove nothing is left.
//!
//! A run killed outright (SIGKILL, a lost machine) cannot clean up after
//! itself. Each run therefore leaves a lease in its state directory, written
//! before anything else: `owner` names the operator's machine (host name and
//! boot id) and the verify process (PID and its start time, so a reused PID
//! is not taken for it). The next run, before it makes anything, lists the
//! runs on each node ([`runs_script`]), decides which owners are gone
//! ([`owner_gone`]) and removes what they left ([`cleanup_script`], CNI DEL
//! included), saying so. A run still being made is waited for: the scripts
//! that create hold `flock` on the run's `lock` file, which cleanup takes first.
//!
//! The scripts are rendered by pure functions (unit-tested here) and run by
//! the node's agent session ([`crate::ssh::SshPool`]).

use crate::shell_render::{Script, Stdin};
use crate::ssh::{Endpoint, Output, SshError, SshPool};
use kscratch_core::render::{parse_cni_conflist, CniPlugin};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Where a run keeps its state on a node.
pub const STATE_ROOT: &str = "/run/kscratch-verify";

/// The CNI config kscratch writes on every node.
pub const CNI_CONFLIST: &str = "/etc/cni/net.d/10-kscratch.conflist";

/// Where the CNI plugins are looked for, in order.
pub const CNI_BIN_DIRS: &[&str] = &["/opt/cni/bin", "/usr/lib/cni"];

/// A run whose owner cannot be judged from here (another operator machine,
/// or no lease) is removed once its directory is this old: every phase of a
/// run is bounded by a minute, so no live run is anywhere near it.
pub const STALE_AFTER_SECS: u64 = 3600;

/// Seconds a connector waits for the TCP handshake. Once connected, both
/// sides wait up to 10 s for the answer after the client's line (socat's
/// `-t`): the listener forks a shell per connection, and every probe of the
/// cluster connects at once. With socat's default of 0.5 s the listener
/// closed before its shell answered on the loaded testbed, and the client
/// saw a connection that never answered.
pub const CONNECT_TIMEOUT_SECS: u32 = 2;

/// One verify run on one node: its id (names everything it creates), how
/// many probes, and the port every probe listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Lowercase letters and digits only (it lands in names and scripts).
    pub id: String,
    /// The node's index in the scenario: part of every name, so that nodes
    /// sharing a `/run` (containers, the testbed) never collide.
    pub node: usize,
    pub probes: usize,
    pub port: u16,
    /// The lease written into the run's directory ([`Owner::to_string`]).
    pub owner: String,
}

/// Who made a run: the operator's machine and the verify process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id` of the operator's machine.
    pub boot: String,
    pub pid: u32,
    /// The process's start time (`/proc/PID/stat` field 22), which tells it
    /// from a later process given the same PID.
    pub start: u64,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host={} boot={} pid={} start={}",
            self.host, self.boot, self.pid, self.start
        )
    }
}

impl Owner {
    /// Parses [`Owner`]'s text; `None` for anything else.
    pub fn parse(text: &str) -> Option<Owner> {
        let mut host = None;
        let mut boot = None;
        let mut pid = None;
        let mut start = None;
        for w in text.split_whitespace() {
            match w.split_once('=')? {
                ("host", v) => host = Some(v.to_string()),
                ("boot", v) => boot = Some(v.to_string()),
                ("pid", v) => pid = v.parse().ok(),
                ("start", v) => start = v.parse().ok(),
                _ => {}
            }
        }
        Some(Owner {
            host: host?,
            boot: boot?,
            pid: pid?,
            start: start?,
        })
    }

    /// This process, as `/proc` describes it (`unknown` where it cannot be read).
    pub fn this_process() -> Owner {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty() && !t.contains(char::is_whitespace))
                .unwrap_or_else(|| "unknown".into())
        };
        let pid = std::process::id();
        Owner {
            host: read("/proc/sys/kernel/hostname"),
            boot: read("/proc/sys/kernel/random/boot_id"),
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }
}

/// A process's start time from `/proc/PID/stat` (field 22, after the
/// parenthesised command name, which may hold spaces).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// A run found on a node by [`runs_script`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundRun {
    pub id: String,
    /// Seconds since its directory last changed.
    pub age_secs: u64,
    /// Its lease; `None` when it has none (or one kscratch cannot read).
    pub owner: Option<Owner>,
}

/// Why the run's owner is gone (then its leftovers are removed), or `None`
/// when it may still be running. `me` is this process; `alive(pid, start)`
/// tells whether that process still runs on this machine.
pub fn owner_gone(
    found: &FoundRun,
    me: &Owner,
    alive: impl Fn(u32, u64) -> bool,
) -> Option<String> {
    let old = found.age_secs >= STALE_AFTER_SECS;
    match &found.owner {
        None if old => Some(format!(
            "it has no owner recorded and is {} s old",
            found.age_secs
        )),
        None => None,
        Some(o) if o.host == me.host && o.host != "unknown" => {
            if o.boot != me.boot {
                Some(format!("its owner's machine {} has rebooted since", o.host))
            } else if o.pid == me.pid || alive(o.pid, o.start) {
                None
            } else {
                Some(format!("its owner, pid {} on {}, is gone", o.pid, o.host))
            }
        }
        Some(o) if old => Some(format!(
            "its owner, pid {} on {}, cannot be asked from here and the run is {} s old",
            o.pid, o.host, found.age_secs
        )),
        Some(_) => None,
    }
}

/// Whether process `pid` that started at `start` still runs here.
pub fn process_alive(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// Lists the runs whose state is on the node (theirs for this node index):
/// `run ID age=SECS OWNER...`.
pub fn runs_script(node: usize) -> Script {
    let mut s = String::from("now=$(date +%s)\n");
    let _ = writeln!(s, "for d in {STATE_ROOT}/*-{node}; do");
    s.push_str("  [ -d \"$d\" ] || continue\n");
    let _ = writeln!(s, "  b=${{d##*/}}; id=${{b%-{node}}}");
    s.push_str("  t=$(stat -c %Y \"$d\" 2>/dev/null || echo \"$now\")\n");
    s.push_str("  o=$(head -n 1 \"$d/owner\" 2>/dev/null)\n");
    s.push_str("  echo \"run $id age=$((now - t)) $o\"\ndone\nexit 0\n");
    script(s)
}

/// [`runs_script`] for node `node`, then [`prepare_script`]: one round trip.
/// The answer's leading `run` lines are the runs; [`after_runs`] is the rest.
pub fn runs_then_prepare_script(node: usize) -> Script {
    script(format!(
        "(\n{}\n)\n{}",
        runs_script(node).text.trim_end(),
        prepare_script().text
    ))
}

/// [`runs_then_prepare_script`]'s answer without its leading `run` lines.
pub fn after_runs(stdout: &str) -> &str {
    let mut rest = stdout;
    while rest.starts_with("run ") {
        rest = rest.split_once('\n').map_or("", |(_, r)| r);
    }
    rest
}

/// The runs of [`runs_script`]'s answer.
pub fn parse_runs(stdout: &str) -> Vec<FoundRun> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("run ")?;
            let (id, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return None;
            }
            let (age, owner) = rest.split_once(' ').unwrap_or((rest, ""));
            Some(FoundRun {
                id: id.to_string(),
                age_secs: age
                    .strip_prefix("age=")
                    .and_then(|a| a.parse::<i64>().ok())
                    .map_or(0, |a| a.max(0) as u64),
                owner: Owner::parse(owner),
            })
        })
        .collect()
}

/// Why a node cannot be measured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Node(String),
    #[error("{path}: {message}")]
    Conflist { path: String, message: String },
}

impl Run {
    /// A run id from a number (the CLI uses its PID and the time).
    pub fn new(seed: u64, probes: usize, port: u16) -> Run {
        Run {
            id: format!("{:08x}", seed & 0xffff_ffff),
            node: 0,
            probes,
            port,
            owner: String::new(),
        }
    }

    /// The run `id` (found on a node) on node `node`, to remove it.
    pub fn found(id: &str, node: usize) -> Run {
        Run {
            id: id.to_string(),
            node,
            probes: 0,
            port: 0,
            owner: String::new(),
        }
    }

    /// The same run on the scenario's node `node`.
    pub fn on_node(&self, node: usize) -> Run {
        Run {
            node,
            ..self.clone()
        }
    }

    pub fn dir(&self) -> String {
        format!("{STATE_ROOT}/{}-{}", self.id, self.node)
    }

    /// The namespace (and CNI container id) of probe `i`.
    pub fn netns(&self, i: usize) -> String {
        format!("ksv-{}-{}-{i}", self.id, self.node)
    }

    /// The mark each listener carries in its command line.
    pub fn mark(&self) -> String {
        format!("#ksv-{}", self.id)
    }
}

fn script(text: String) -> Script {
    Script {
        text,
        stdin: Stdin::Empty,
    }
}

/// Checks the tools and files a probe needs, changing nothing; prints
/// `cni-bin DIR`, `kube-proxy running|not-running`, then the conflist.
/// Exit 3 with the reason on stdout when the node cannot be measured.
pub fn prepare_script() -> Script {
    let mut s = String::from("set -u\nmissing=\n");
    s.push_str("for t in ip socat; do command -v \"$t\" >/dev/null 2>&1 || missing=\"$missing $t\"; done\n");
    s.push_str("[ -z \"$missing\" ] || { echo \"verify needs$missing on this node (Debian and Ubuntu: apt-get install socat iproute2)\"; exit 3; }\n");
    let _ = writeln!(
        s,
        "[ -r {CNI_CONFLIST} ] || {{ echo '{CNI_CONFLIST} is missing: apply the scenario first'; exit 3; }}"
    );
    s.push_str("bin=\n");
    let _ = writeln!(
        s,
        "for d in {}; do if [ -x \"$d/bridge\" ] && [ -x \"$d/host-local\" ]; then bin=$d; break; fi; done",
        CNI_BIN_DIRS.join(" ")
    );
    let _ = writeln!(
        s,
        "[ -n \"$bin\" ] || {{ echo 'no CNI bridge and host-local plugins in {}'; exit 3; }}",
        CNI_BIN_DIRS.join(" or ")
    );
    s.push_str("echo \"cni-bin $bin\"\n");
    // kube-proxy in this node's network namespace (a host's PID namespace
    // may hold other machines' processes: containers, the testbed).
    s.push_str("kp=not-running\nme=$(readlink /proc/self/ns/net)\nfor p in $(ps -eo pid=,comm= 2>/dev/null | sed -n 's/^ *\\([0-9][0-9]*\\) kube-proxy$/\\1/p'); do [ \"$(readlink /proc/$p/ns/net 2>/dev/null)\" = \"$me\" ] && kp=running; done\necho \"kube-proxy $kp\"\n");
    let _ = writeln!(s, "cat {CNI_CONFLIST}");
    script(s)
}

/// What [`prepare_script`] found on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub cni_bin: String,
    pub kube_proxy_running: bool,
    /// The bridge plugin's network config, as libcni hands it to the plugin.
    pub network: String,
    /// The pod MTU the node's CNI config gives its pods.
    pub mtu: u32,
}

pub fn parse_prepare(stdout: &str) -> Result<Prepared, VerifyError> {
    let mut lines = stdout.splitn(3, '\n');
    let bin = lines
        .next()
        .and_then(|l| l.strip_prefix("cni-bin "))
        .ok_or_else(|| VerifyError::Node(format!("unexpected answer: {stdout}")))?;
    let proxy = lines
        .next()
        .and_then(|l| l.strip_prefix("kube-proxy "))
        .ok_or_else(|| VerifyError::Node(format!("unexpected answer: {stdout}")))?;
    let conflist = lines.next().unwrap_or("");
    let (network, mtu) = plugin_network(conflist)?;
    Ok(Prepared {
        cni_bin: bin.trim().to_string(),
        kube_proxy_running: proxy.trim() == "running",
        network,
        mtu,
    })
}

/// The first plugin of a conflist as its own network config (with the
/// list's `name` and `cniVersion`), which is what libcni passes to it.
/// Refuses a conflist whose first plugin is not `bridge`: kscratch wrote
/// another one, or someone else did. Also returns the pod MTU it sets.
pub fn plugin_network(conflist: &str) -> Result<(String, u32), VerifyError> {
    let bad = |message: String| VerifyError::Conflist {
        path: CNI_CONFLIST.into(),
        message,
    };
    let list = parse_cni_conflist(conflist).map_err(|e| bad(e.to_string()))?;
    let Some(CniPlugin::Bridge(bridge)) = list.plugins.first() else {
        return Err(bad(
            "its first plugin is not `bridge`: not the config kscratch writes".into(),
        ));
    };
    let mut v =
        serde_json::to_value(CniPlugin::Bridge(bridge.clone())).map_err(|e| bad(e.to_string()))?;
    v["cniVersion"] = list.cni_version.into();
    v["name"] = list.name.into();
    Ok((v.to_string(), bridge.mtu))
}

/// Creates the probes (namespace, CNI ADD, a listener each) and waits until
/// every listener listens; prints `probe I ADDRESS/PREFIX` per probe. The
/// network config comes on stdin. Everything is recorded in the run's
/// directory before it is made, so [`cleanup_script`] finds it whatever failed.
pub fn up_script(run: &Run, cni_bin: &str, network: &str) -> Script {
    let dir = run.dir();
    let mut s = String::from("set -u\n");
    let _ = writeln!(s, "dir={dir}\nbin={}", quote(cni_bin));
    s.push_str("mkdir -p -m 0700 \"$dir\" || exit 4\n");
    let _ = writeln!(s, "echo {} > \"$dir/owner\"", quote(&run.owner));
    // Held while this script creates: a cleanup of a killed run waits for it.
    s.push_str("exec 9>>\"$dir/lock\"\ncommand -v flock >/dev/null 2>&1 && flock 9\n");
    s.push_str("cat > \"$dir/net.json\"\necho \"$bin\" > \"$dir/bin\"\n");
    for i in 0..run.probes {
        let ns = run.netns(i);
        let _ = writeln!(s, "ns={ns}\necho \"$ns\" >> \"$dir/netns\"");
        s.push_str("ip netns add \"$ns\" || { echo \"ip netns add $ns failed\"; exit 4; }\n");
        s.push_str("ip -n \"$ns\" link set lo up\n");
        s.push_str("if ! CNI_COMMAND=ADD CNI_CONTAINERID=\"$ns\" CNI_NETNS=\"/run/netns/$ns\" CNI_IFNAME=eth0 CNI_PATH=\"$bin\" \"$bin/bridge\" < \"$dir/net.json\" > \"$dir/$ns.add\" 2>&1; then echo \"CNI ADD of $ns failed: $(cat \"$dir/$ns.add\")\"; exit 4; fi\n");
        let _ = writeln!(
            s,
            "set -- $(ip -n \"$ns\" -4 -o addr show dev eth0)\necho \"probe {i} ${{4:-none}}\""
        );
        let _ = writeln!(
            s,
            "ip netns exec \"$ns\" socat -t10 -T10 TCP-LISTEN:{port},fork,reuseaddr,backlog=256 'SYSTEM:read l; echo peer=$SOCAT_PEERADDR {mark}' </dev/null >/dev/null 2>&1 9>&- &\necho $! >> \"$dir/pids\"",
            port = run.port,
            mark = run.mark()
        );
        // The DF echo: each datagram back to its sender, as large, DF set.
        // RECVFROM keeps one socket and forks per datagram (LISTEN hands
        // its socket to the child and loses what arrives meanwhile); the
        // parent takes the next datagram only once a child has read its
        // own. The echo is socat's `PIPE`, in the child itself: a `sh -c
        // cat` per datagram (two more programs started) made a loaded
        // node's listener fall behind its senders' retries, and each try
        // then timed out. `-t10`: the child's one datagram is its input's
        // end; socat's default of 0.5 s could end it before the echo. The
        // mark is the log prefix, so the listener's argv carries it.
        let _ = writeln!(
            s,
            "ip netns exec \"$ns\" socat -lp '{mark}' -t10 -T10 UDP4-RECVFROM:{port},fork,reuseaddr,mtudiscover=2 PIPE </dev/null >/dev/null 2>&1 9>&- &\necho $! >> \"$dir/pids\"",
            port = run.port,
            mark = run.mark()
        );
    }
    for i in 0..run.probes {
        let _ = writeln!(
            s,
            "n=0; until ip netns exec {ns} ss -Hltn 'sport = :{port}' | grep -q . && ip netns exec {ns} ss -Hlun 'sport = :{port}' | grep -q .; do n=$((n + 1)); [ $n -lt 100 ] || {{ echo 'the listeners in {ns} did not start'; exit 4; }}; sleep 0.05; done",
            ns = run.netns(i),
            port = run.port
        );
    }
    Script {
        text: s,
        stdin: Stdin::Bytes {
            bytes: network.as_bytes().to_vec(),
            secret: false,
        },
    }
}

/// The probes' addresses from [`up_script`]'s answer, in probe order.
pub fn parse_up(run: &Run, stdout: &str) -> Result<Vec<Ipv4Addr>, VerifyError> {
    let mut found: BTreeMap<usize, Ipv4Addr> = BTreeMap::new();
    for l in stdout.lines() {
        let mut w = l.split_whitespace();
        if w.next() != Some("probe") {
            continue;
        }
        let (Some(i), Some(addr)) = (w.next().and_then(|i| i.parse().ok()), w.next()) else {
            return Err(VerifyError::Node(format!("unexpected line: {l}")));
        };
        let ip = addr
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                VerifyError::Node(format!("probe {i} got no IPv4 address on eth0 ({addr})"))
            })?;
        found.insert(i, ip);
    }
    (0..run.probes)
        .map(|i| {
            found
                .get(&i)
                .copied()
                .ok_or_else(|| VerifyError::Node(format!("probe {i} was not created")))
        })
        .collect()
}

/// One connection to measure: from probe `from` of this node (or the node
/// itself, `None`) to `to:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub from: Option<usize>,
    pub to: IpAddr,
    pub port: u16,
    /// `Some(bytes)`: instead of a TCP connection, one UDP datagram of this
    /// many bytes of payload with DF set, which the probe echoes back the same way.
    pub df_payload: Option<u32>,
}

/// What a connector saw.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Observed {
    /// Connected, sent its line, and the listener answered with the source
    /// address it saw.
    Reached { peer: IpAddr },
    /// Connected and sent its line, but nothing answered with a peer (a
    /// target that is not a probe, such as an operator's egress target).
    Connected,
    /// The DF datagram came back whole.
    Echoed,
    /// The server answered the request with this many bytes (the apiserver).
    Answered { bytes: u64 },
    /// No connection: the client's complaint (timeout, refused, reset).
    Failed { detail: String },
}

/// Runs every connection of `conns` at once and prints `cell K ...` for
/// each (K its index in `conns`). A DF datagram is tried up to five times,
/// 3 s each, a little apart: UDP has no retransmission, and on a loaded
/// node every probe's burst arrives at once (three 2 s tries once lost
/// both echoes of two cells on the testbed); a path that drops full-size
/// packets drops all five.
pub fn measure_script(run: &Run, conns: &[Connect]) -> Script {
    let mut s = String::from("set -u\n");
    let _ = writeln!(s, "m={}/m; rm -rf \"$m\"; mkdir -p \"$m\"", run.dir());
    let _ = writeln!(
        s,
        "probe() {{\n  k=$1; shift\n  o=$(printf 'kscratch-verify\\n' | \"$@\" socat -t10 -T10 - \"TCP4:$ADDR:$PORT,connect-timeout={CONNECT_TIMEOUT_SECS}\" 2>&1)\n  rc=$?\n  printf 'cell %s rc=%s %s\\n' \"$k\" \"$rc\" \"$(printf '%s' \"$o\" | tr '\\n' ' ')\" > \"$m/$k\"\n}}\ndf() {{\n  k=$1; shift\n  for t in 1 2 3 4 5; do\n    n=$(head -c \"$SIZE\" /dev/zero | \"$@\" socat -t3 -T4 - \"UDP4:$ADDR:$PORT,mtudiscover=2\" 2>/dev/null | wc -c)\n    [ \"$n\" = \"$SIZE\" ] && break\n    sleep 0.$t\n  done\n  printf 'cell %s rc=0 echoed=%s of=%s\\n' \"$k\" \"$n\" \"$SIZE\" > \"$m/$k\"\n}}"
    );
    for (k, c) in conns.iter().enumerate() {
        let prefix = match c.from {
            Some(i) => format!("ip netns exec {}", run.netns(i)),
            None => "env".into(),
        };
        match c.df_payload {
            None => {
                let _ = writeln!(s, "ADDR={} PORT={} probe {k} {prefix} &", c.to, c.port);
            }
            Some(size) => {
                let _ = writeln!(
                    s,
                    "ADDR={} PORT={} SIZE={size} df {k} {prefix} &",
                    c.to, c.port
                );
            }
        }
    }
    s.push_str("wait\nfor f in \"$m\"/*; do [ -e \"$f\" ] && cat \"$f\"; done\nrm -rf \"$m\"\n");
    script(s)
}

/// Runs scripts (without stdin) at once on the node, each in its own
/// subshell, and waits for all: one round trip for several measurements
/// whose answers have their own line prefixes. Each subshell writes to a
/// file of its own, printed whole after the wait: on one shared stdout a
/// buffered writer (`sed` flushes every 4 KiB, not at line ends) let
/// another script's line land inside one of its lines.
pub fn together(scripts: &[Script]) -> Script {
    let mut s = String::from("t=$(mktemp -d) || exit 4\n");
    for (k, sc) in scripts.iter().enumerate() {
        debug_assert!(matches!(sc.stdin, Stdin::Empty));
        let _ = writeln!(s, "(\n{}\n) > \"$t/{k}\" &", sc.text.trim_end());
    }
    s.push_str("wait\n");
    for k in 0..scripts.len() {
        let _ = writeln!(s, "cat \"$t/{k}\"");
    }
    s.push_str("rm -rf \"$t\"\n");
    script(s)
}

/// Each connection's observation from [`measure_script`]'s answer.
pub fn parse_measure(conns: &[Connect], stdout: &str) -> Result<Vec<Observed>, VerifyError> {
    let mut found: BTreeMap<usize, Observed> = BTreeMap::new();
    for l in stdout.lines() {
        let Some(rest) = l.strip_prefix("cell ") else {
            continue;
        };
        let (k, out) = rest.split_once(' ').unwrap_or((rest, ""));
        let k: usize = k
            .parse()
            .map_err(|_| VerifyError::Node(format!("unexpected line: {l}")))?;
        let peer = out
            .split_whitespace()
            .find_map(|w| w.strip_prefix("peer="))
            .and_then(|p| p.parse().ok());
        let (rc, out) = out.split_once(' ').unwrap_or((out, ""));
        let word = |key: &str| {
            out.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let (Some(n), Some(of)) = (word("echoed="), word("of=")) {
            found.insert(
                k,
                if n == of {
                    Observed::Echoed
                } else {
                    Observed::Failed {
                        detail: format!("{n} of {of} bytes came back"),
                    }
                },
            );
            continue;
        }
        found.insert(
            k,
            match (peer, rc) {
                (Some(peer), _) => Observed::Reached { peer },
                (None, "rc=0") => Observed::Connected,
                (None, _) => Observed::Failed {
                    detail: short(out.trim()),
                },
            },
        );
    }
    (0..conns.len())
        .map(|k| {
            found
                .remove(&k)
                .ok_or_else(|| VerifyError::Node(format!("connection {k} reported nothing")))
        })
        .collect()
}

/// One connection to a Service VIP: from probe `from` of this node (or
/// the node itself, `None`), from source port `sport`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipTry {
    pub from: Option<usize>,
    pub vip: IpAddr,
    pub port: u16,
    /// A fixed source port (above the kernel's ephemeral range, distinct
    /// per try), so that the node's conntrack entry of this very
    /// connection can be found: its reply tuple names the endpoint kube-proxy's
    /// DNAT chose.
    pub sport: u16,
    /// The probe's address (`None` from the node itself).
    pub src: Option<IpAddr>,
}

/// What one [`VipTry`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VipSeen {
    /// The handshake completed; the endpoint from conntrack when the node
    /// has the tool.
    Connected {
        endpoint: Option<IpAddr>,
    },
    Failed {
        detail: String,
    },
    /// The source port was taken on the node: nothing was measured.
    NotTried {
        detail: String,
    },
}

/// Makes every connection of `tries` at once (a handshake, then close) and
/// prints `vip K rc=RC COMPLAINT` for each; then, where the node has
/// `conntrack`, one dump of its table per VIP as `ct SRC SPORT
/// DST DPORT ENDPOINT` lines (the original tuple, the reply's source: the
/// endpoint DNAT chose; the reply's port is not used, since masquerading
/// with `--random-fully`, as kube-proxy does, changes it), else `ct none`.
pub fn vip_script(run: &Run, tries: &[VipTry]) -> Script {
    let mut s = String::from("set -u\n");
    let _ = writeln!(s, "m={}/v; rm -rf \"$m\"; mkdir -p \"$m\"", run.dir());
    s.push_str("vip() {\n  k=$1; sp=$2; shift 2\n");
    let _ = writeln!(
        s,
        "  \"$@\" socat -T3 /dev/null \"TCP4:$ADDR:$PORT,connect-timeout={CONNECT_TIMEOUT_SECS},sourceport=$sp,reuseaddr\" 2> \"$m/$k.err\""
    );
    s.push_str("  printf 'vip %s rc=%s %s\\n' \"$k\" \"$?\" \"$(grep ' E ' \"$m/$k.err\" | tail -n 1 | tr '\\n' ' ')\" > \"$m/$k\"\n}\n");
    for (k, t) in tries.iter().enumerate() {
        let prefix = match t.from {
            Some(i) => format!("ip netns exec {}", run.netns(i)),
            None => "env".into(),
        };
        let _ = writeln!(
            s,
            "ADDR={} PORT={} vip {k} {} {prefix} &",
            t.vip, t.port, t.sport
        );
    }
    s.push_str("wait\nfor f in \"$m\"/*; do case $f in *.err) ;; *) [ -e \"$f\" ] && cat \"$f\" ;; esac; done\nrm -rf \"$m\"\n");
    let vips: std::collections::BTreeSet<IpAddr> = tries.iter().map(|t| t.vip).collect();
    if !vips.is_empty() {
        s.push_str("if command -v conntrack >/dev/null 2>&1; then\n");
        for v in vips {
            let _ = writeln!(
                s,
                "  conntrack -L -p tcp -d {v} 2>/dev/null | sed -n 's/^[^=]*=\\([0-9.]*\\) dst=\\([0-9.]*\\) sport=\\([0-9]*\\) dport=\\([0-9]*\\) src=\\([0-9.]*\\) .*/ct \\1 \\3 \\2 \\4 \\5/p'"
            );
        }
        s.push_str("else\n  echo 'ct none'\nfi\n");
    }
    script(s)
}

/// One `ct` line of [`vip_script`]: a conntrack entry's original tuple and
/// the endpoint its reply came from.
struct Tracked {
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    endpoint: IpAddr,
}

/// Each try's result from [`vip_script`]'s answer. A connection's endpoint
/// is the conntrack entry with its whole original tuple: the source port
/// alone is not enough, since an earlier run's entries (TIME_WAIT, two
/// minutes) may hold the same port towards another VIP, and an earlier
/// run's probe may have had the same port from another address. A new
/// connection with an old entry's whole tuple replaces that entry.
pub fn parse_vip(tries: &[VipTry], stdout: &str) -> Result<Vec<VipSeen>, VerifyError> {
    let mut found: BTreeMap<usize, (bool, String)> = BTreeMap::new();
    let mut tracked: Vec<Tracked> = Vec::new();
    let mut conntrack = true;
    for l in stdout.lines() {
        if l == "ct none" {
            conntrack = false;
            continue;
        }
        if let Some(rest) = l.strip_prefix("ct ") {
            let w: Vec<&str> = rest.split_whitespace().collect();
            if let [src, sport, dst, dport, ep] = w[..] {
                if let (Ok(src), Ok(sport), Ok(dst), Ok(dport), Ok(ep)) = (
                    src.parse(),
                    sport.parse(),
                    dst.parse(),
                    dport.parse(),
                    ep.parse(),
                ) {
                    tracked.push(Tracked {
                        src,
                        sport,
                        dst,
                        dport,
                        endpoint: ep,
                    });
                }
            }
            continue;
        }
        let Some(rest) = l.strip_prefix("vip ") else {
            continue;
        };
        let mut w = rest.splitn(3, ' ');
        let k: usize = w
            .next()
            .and_then(|k| k.parse().ok())
            .ok_or_else(|| VerifyError::Node(format!("unexpected line: {l}")))?;
        let rc = w
            .next()
            .and_then(|r| r.strip_prefix("rc="))
            .ok_or_else(|| VerifyError::Node(format!("unexpected line: {l}")))?;
        found.insert(k, (rc == "0", short(w.next().unwrap_or("").trim())));
    }
    (0..tries.len())
        .map(|k| {
            let (ok, complaint) = found
                .remove(&k)
                .ok_or_else(|| VerifyError::Node(format!("VIP connection {k} reported nothing")))?;
            let t = &tries[k];
            Ok(if ok {
                VipSeen::Connected {
                    endpoint: if conntrack {
                        tracked
                            .iter()
                            .find(|e| {
                                e.sport == t.sport
                                    && e.dst == t.vip
                                    && e.dport == t.port
                                    && t.src.is_none_or(|s| s == e.src)
                            })
                            .map(|e| e.endpoint)
                    } else {
                        None
                    },
                }
            } else if complaint.contains("bind(") {
                VipSeen::NotTried { detail: complaint }
            } else {
                VipSeen::Failed { detail: complaint }
            })
        })
        .collect()
}

/// The node's connection to the apiserver endpoint `host:port` (as its
/// kubeconfigs name it): a TCP handshake, then a plain HTTP request, which
/// a TLS server such as the apiserver answers with `400 Bad Request`.
/// Through a TCP proxy (haproxy) the answer comes only from a server
/// behind it, so an accepting proxy with no server is no pass. Prints
/// `apiserver rc=RC bytes=N COMPLAINT`.
pub fn apiserver_script(host: &str, port: u16) -> Script {
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut s = String::from("set -u\nf=$(mktemp) || exit 4\n");
    let _ =
        writeln!(
        s,
        "printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' | socat -t10 -T10 - {} > \"$f\" 2> \"$f.err\"",
        quote(&format!("TCP:{addr},connect-timeout={CONNECT_TIMEOUT_SECS}"))
    );
    s.push_str("rc=$?\necho \"apiserver rc=$rc bytes=$(wc -c < \"$f\") $(tail -n 1 \"$f.err\" | tr '\\n' ' ')\"\nrm -f \"$f\" \"$f.err\"\n");
    script(s)
}

/// What [`apiserver_script`] saw.
pub fn parse_apiserver(stdout: &str) -> Result<Observed, VerifyError> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("apiserver "))
        .ok_or_else(|| VerifyError::Node(format!("unexpected answer: {stdout}")))?;
    let mut w = line.splitn(3, ' ');
    let rc = w.next().and_then(|r| r.strip_prefix("rc="));
    let bytes = w
        .next()
        .and_then(|b| b.strip_prefix("bytes="))
        .and_then(|b| b.trim().parse::<u64>().ok())
        .ok_or_else(|| VerifyError::Node(format!("unexpected answer: {line}")))?;
    let complaint = w.next().unwrap_or("").trim();
    Ok(match (rc, bytes) {
        (_, 1..) => Observed::Answered { bytes },
        (Some("0"), 0) => Observed::Failed {
            detail: "connected, but nothing answered the request".into(),
        },
        _ => Observed::Failed {
            detail: short(complaint),
        },
    })
}

/// socat's complaint without its timestamp and pid prefix.
fn short(text: &str) -> String {
    let t = text.rsplit(" E ").next().unwrap_or(text).trim();
    if t.is_empty() {
        "no answer".into()
    } else {
        t.to_string()
    }
}

/// Removes everything the run made on the node: listeners and anything else
/// in its namespaces stopped, CNI DEL of every probe (its address
/// released), the namespaces deleted, the state directory removed. Safe to
/// run on a node where nothing, or only part, was made.
pub fn cleanup_script(run: &Run) -> Script {
    let mut s = String::new();
    let _ = writeln!(s, "dir={}", run.dir());
    s.push_str("[ -d \"$dir\" ] || exit 0\n");
    // A run killed while it created: what it still creates finishes first.
    s.push_str("if [ -f \"$dir/lock\" ] && command -v flock >/dev/null 2>&1; then flock -w 30 \"$dir/lock\" true; fi\n");
    s.push_str("if [ -f \"$dir/pids\" ]; then for p in $(cat \"$dir/pids\"); do kill \"$p\" 2>/dev/null; done; fi\n");
    s.push_str("bin=$(cat \"$dir/bin\" 2>/dev/null)\nst=0\n");
    s.push_str("if [ -f \"$dir/netns\" ]; then\n  for ns in $(cat \"$dir/netns\"); do\n");
    s.push_str(
        "    for p in $(ip netns pids \"$ns\" 2>/dev/null); do kill -9 \"$p\" 2>/dev/null; done\n",
    );
    s.push_str("    if [ -n \"$bin\" ] && [ -f \"$dir/net.json\" ]; then\n      CNI_COMMAND=DEL CNI_CONTAINERID=\"$ns\" CNI_NETNS=\"/run/netns/$ns\" CNI_IFNAME=eth0 CNI_PATH=\"$bin\" \"$bin/bridge\" < \"$dir/net.json\" > \"$dir/del\" 2>&1 || { echo \"CNI DEL of $ns failed: $(cat \"$dir/del\")\"; st=5; }\n    fi\n");
    s.push_str(
        "    if [ -e \"/run/netns/$ns\" ]; then ip netns del \"$ns\" || st=5; fi\n  done\nfi\n",
    );
    s.push_str("rm -rf \"$dir\"\nexit $st\n");
    script(s)
}

/// Prints one line per thing of the run still on the node (nothing when it
/// is clean): its state directory, namespaces, host-local allocations held
/// by its probes, listener processes.
pub fn leftovers_script(run: &Run) -> Script {
    let mut s = String::new();
    let _ = writeln!(s, "[ -e {dir} ] && echo 'directory {dir}'", dir = run.dir());
    let _ = writeln!(
        s,
        "ip netns list 2>/dev/null | grep 'ksv-{id}-{node}-' | sed 's/^/namespace /'",
        id = run.id,
        node = run.node
    );
    let _ = writeln!(
        s,
        "grep -rl 'ksv-{id}-{node}-' /var/lib/cni/networks 2>/dev/null | sed 's/^/allocation /'",
        id = run.id,
        node = run.node
    );
    let _ = writeln!(
        s,
        "ps -eo pid=,args= 2>/dev/null | grep -F -- '{mark}' | grep -v grep | sed 's/^/process /'",
        mark = run.mark()
    );
    s.push_str("exit 0\n");
    script(s)
}

/// Runs `script(k)` on node `eps[k]` for every `k`, at most `parallel`
/// nodes at once; the answers in the order of `eps`.
pub async fn on_nodes(
    pool: &SshPool,
    eps: &[&Endpoint],
    parallel: usize,
    timeout: Duration,
    script: impl Fn(usize) -> Script,
) -> Vec<Result<Output, SshError>> {
    use futures::stream::StreamExt;
    let futs: Vec<_> = eps
        .iter()
        .enumerate()
        .map(|(k, ep)| {
            let s = script(k);
            async move { pool.run(ep, &s, timeout).await }
        })
        .collect();
    futures::stream::iter(futs)
        .buffered(parallel.max(1))
        .collect()
        .await
}

/// Single-quotes `s` for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFLIST: &str = r#"{
  "cniVersion": "0.4.0",
  "name": "kscratch",
  "plugins": [
    {"type": "bridge", "bridge": "cbr0", "isGateway": true, "ipMasq": false, "hairpinMode": true, "mtu": 1500,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.10.1.0/24", "gateway": "10.10.1.1"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
"#;

    fn run() -> Run {
        Run::new(0xabc, 2, 8080).on_node(3)
    }

    #[test]
    fn the_bridge_plugin_gets_the_lists_name_and_version() {
        let (net, mtu) = plugin_network(CONFLIST).unwrap();
        assert_eq!(mtu, 1500);
        let net: serde_json::Value = serde_json::from_str(&net).unwrap();
        assert_eq!(net["type"], "bridge");
        assert_eq!(net["name"], "kscratch");
        assert_eq!(net["cniVersion"], "0.4.0");
        assert_eq!(net["bridge"], "cbr0");
        assert_eq!(net["ipam"]["ranges"][0][0]["subnet"], "10.10.1.0/24");
        let e = plugin_network("{").unwrap_err().to_string();
        assert!(e.starts_with(CNI_CONFLIST), "{e}");
        let other = CONFLIST.replacen("\"bridge\", \"bridge\"", "\"portmap\", \"x\"", 1);
        assert!(plugin_network(&other).is_err());
    }

    #[test]
    fn prepare_answers_are_parsed_and_checked() {
        let p = parse_prepare(&format!(
            "cni-bin /usr/lib/cni\nkube-proxy not-running\n{CONFLIST}"
        ))
        .unwrap();
        assert_eq!(p.cni_bin, "/usr/lib/cni");
        assert!(!p.kube_proxy_running);
        assert!(p.network.contains("\"cbr0\""));
        assert_eq!(p.mtu, 1500);
        assert!(parse_prepare("verify needs socat").is_err());
        let text = prepare_script().text;
        assert!(text.contains("for t in ip socat"), "{text}");
        assert!(
            text.contains("for d in /opt/cni/bin /usr/lib/cni"),
            "{text}"
        );
    }

    #[test]
    fn everything_a_run_makes_is_named_after_it_and_recorded_before_it_is_made() {
        let r = run();
        assert_eq!(r.id, "00000abc");
        assert_eq!(r.netns(1), "ksv-00000abc-3-1");
        let up = up_script(&r, "/usr/lib/cni", "{}");
        let t = &up.text;
        // The namespace is recorded before it exists, the listener's PID as it starts.
        let record = t.find("echo \"$ns\" >> \"$dir/netns\"").unwrap();
        let add = t.find("ip netns add \"$ns\"").unwrap();
        assert!(record < add, "{t}");
        assert!(t.contains("CNI_COMMAND=ADD CNI_CONTAINERID=\"$ns\""), "{t}");
        assert!(
            t.contains("TCP-LISTEN:8080,fork,reuseaddr,backlog=256"),
            "{t}"
        );
        assert!(t.contains("#ksv-00000abc'"), "{t}");
        assert!(
            t.contains(
                "socat -lp '#ksv-00000abc' -t10 -T10 UDP4-RECVFROM:8080,fork,reuseaddr,mtudiscover=2 PIPE"
            ),
            "{t}"
        );
        assert!(
            t.contains("ip netns exec ksv-00000abc-3-1 ss -Hltn 'sport = :8080'"),
            "{t}"
        );
        assert!(matches!(up.stdin, Stdin::Bytes { secret: false, .. }));
        let c = cleanup_script(&r).text;
        assert!(c.contains("dir=/run/kscratch-verify/00000abc-3\n"), "{c}");
        assert!(c.contains("CNI_COMMAND=DEL"), "{c}");
        assert!(c.contains("ip netns del \"$ns\""), "{c}");
        assert!(c.contains("rm -rf \"$dir\""), "{c}");
        let l = leftovers_script(&r).text;
        assert!(
            l.contains("grep -rl 'ksv-00000abc-3-' /var/lib/cni/networks"),
            "{l}"
        );
    }

    #[test]
    fn a_run_whose_owner_is_gone_is_found_and_one_that_may_run_is_left_alone() {
        let me = Owner {
            host: "op".into(),
            boot: "b1".into(),
            pid: 100,
            start: 5,
        };
        assert_eq!(Owner::parse(&me.to_string()), Some(me.clone()));
        assert_eq!(Owner::parse("host=op pid=1"), None);
        let found = parse_runs(
            "run 0000abcd age=12 host=op boot=b1 pid=42 start=7\nrun 0000beef age=4000 \nrun ../x age=1\nnoise\n",
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].id, "0000abcd");
        assert_eq!(found[0].age_secs, 12);
        let killed = &found[0];
        // pid 42 with start time 7 is gone: removed, saying why.
        let why = owner_gone(killed, &me, |_, _| false).unwrap();
        assert_eq!(why, "its owner, pid 42 on op, is gone");
        // Still running: left alone.
        assert_eq!(owner_gone(killed, &me, |p, s| p == 42 && s == 7), None);
        // The operator's machine rebooted: whatever runs now is not its owner.
        let rebooted = Owner {
            boot: "b2".into(),
            ..me.clone()
        };
        assert!(owner_gone(killed, &rebooted, |_, _| true)
            .unwrap()
            .contains("rebooted"));
        // Another operator's run: only once it is older than any run can take.
        let other = FoundRun {
            owner: Some(Owner {
                host: "elsewhere".into(),
                ..me.clone()
            }),
            ..killed.clone()
        };
        assert_eq!(owner_gone(&other, &me, |_, _| false), None);
        let old = FoundRun {
            age_secs: STALE_AFTER_SECS,
            ..other
        };
        assert!(owner_gone(&old, &me, |_, _| true).is_some());
        // No lease: old, it goes; young, it may be a run being made.
        assert!(owner_gone(&found[1], &me, |_, _| true).is_some());
        let young = FoundRun {
            age_secs: 3,
            ..found[1].clone()
        };
        assert_eq!(owner_gone(&young, &me, |_, _| false), None);
        // This process is alive, as /proc says.
        let now = Owner::this_process();
        assert!(process_alive(now.pid, now.start));
        assert!(!process_alive(now.pid, now.start + 1));
    }

    #[test]
    fn the_lease_is_written_first_and_creating_holds_the_runs_lock() {
        let r = Run {
            owner: "host=op boot=b1 pid=42 start=7".into(),
            ..run()
        };
        let t = up_script(&r, "/usr/lib/cni", "{}").text;
        let lease = t
            .find("echo 'host=op boot=b1 pid=42 start=7' > \"$dir/owner\"")
            .unwrap();
        let lock = t.find("flock 9").unwrap();
        assert!(
            lease < lock && lock < t.find("ip netns add").unwrap(),
            "{t}"
        );
        // The listeners outlive the script: they must not hold the lock.
        assert_eq!(t.matches("9>&- &").count(), 2 * r.probes, "{t}");
        let c = cleanup_script(&r).text;
        assert!(
            c.find("flock -w 30 \"$dir/lock\" true").unwrap() < c.find("kill").unwrap(),
            "{c}"
        );
        let both = runs_then_prepare_script(3).text;
        assert!(
            both.find("for d in").unwrap() < both.find("cni-bin").unwrap(),
            "{both}"
        );
        assert_eq!(
            after_runs("run 0000abcd age=1 \nrun 0000beef age=2 \ncni-bin /x\nrest"),
            "cni-bin /x\nrest"
        );
        let l = runs_script(3).text;
        assert!(l.contains("for d in /run/kscratch-verify/*-3; do"), "{l}");
        assert!(l.contains("id=${b%-3}"), "{l}");
    }

    #[test]
    fn scripts_run_together_never_split_each_others_lines() {
        // The first writes half a line, the second a whole line while the
        // first is still writing, then the first ends its line.
        let a = script("head -c 5000 /dev/zero | tr '\\0' a; sleep 0.3; echo\necho a-done".into());
        let b = script("sleep 0.1; echo b-line".into());
        let text = together(&[a, b]).text;
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&text)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{text}\n{out}");
        assert_eq!(lines[0], "a".repeat(5000), "{text}");
        assert_eq!(lines[1..], ["a-done", "b-line"], "{text}");
    }

    #[test]
    fn vip_connections_name_the_endpoint_conntrack_saw() {
        let r = run();
        let vip: IpAddr = "10.0.0.1".parse().unwrap();
        let t = |from: Option<usize>, sport: u16, src: Option<&str>| VipTry {
            from,
            vip,
            port: 443,
            sport,
            src: src.map(|s| s.parse().unwrap()),
        };
        let tries = vec![
            t(Some(1), 61001, Some("10.10.1.3")),
            t(None, 61002, None),
            t(None, 61003, None),
            t(None, 61004, None),
        ];
        let text = vip_script(&r, &tries).text;
        assert!(
            text.contains("ADDR=10.0.0.1 PORT=443 vip 0 61001 ip netns exec ksv-00000abc-3-1 &"),
            "{text}"
        );
        assert!(text.contains("sourceport=$sp,reuseaddr"), "{text}");
        assert_eq!(
            text.matches("conntrack -L").count(),
            1,
            "one dump per VIP: {text}"
        );
        // The original tuple's source and port, the reply's source.
        let sed = text
            .lines()
            .find(|l| l.contains("conntrack -L"))
            .and_then(|l| l.split("| sed -n ").nth(1))
            .unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\n' 'tcp      6 119 TIME_WAIT src=10.10.1.3 dst=10.0.0.1 sport=61001 dport=443 src=198.51.100.1 dst=10.10.1.3 sport=443 dport=61001 [ASSURED] mark=0 use=1' 'tcp 6 5 CLOSE src=198.51.100.4 dst=10.0.0.1 sport=61002 dport=443 src=10.10.2.7 dst=198.51.100.4 sport=443 dport=40211 mark=0 use=1' 'tcp 6 29 SYN_SENT src=198.51.100.4 dst=10.0.0.1 sport=61009 dport=443 [UNREPLIED] src=10.0.0.1 dst=198.51.100.4 sport=443 dport=61009 mark=0 use=1' | sed -n {sed}"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ct 10.10.1.3 61001 10.0.0.1 443 198.51.100.1\nct 198.51.100.4 61002 10.0.0.1 443 10.10.2.7\n",
            "{sed}"
        );
        let seen = parse_vip(
            &tries,
            "vip 1 rc=0 \nvip 0 rc=0 \nvip 2 rc=1 2026/12/06 socat[3] E connect(5, AF=2 10.0.0.1:443, 16): Connection timed out \nvip 3 rc=1 2026/12/06 socat[4] E bind(5, {AF=2 0.0.0.0:61004}, 16): Address already in use\nct 10.10.9.9 61001 10.0.0.1 443 198.51.100.2\nct 198.51.100.4 61002 10.0.0.10 53 198.51.100.1\nct 10.10.1.3 61001 10.0.0.1 443 198.51.100.1\nct 198.51.100.4 61002 10.0.0.1 443 10.10.2.7\n",
        )
        .unwrap();
        // An earlier run's probe held port 61001 too: the source address
        // tells them apart. An earlier run's node connection to another
        // VIP held port 61002 (listed first, as CI once saw): the
        // destination tells them apart.
        assert_eq!(
            seen[0],
            VipSeen::Connected {
                endpoint: Some("198.51.100.1".parse().unwrap())
            }
        );
        assert_eq!(
            seen[1],
            VipSeen::Connected {
                endpoint: Some("10.10.2.7".parse().unwrap())
            }
        );
        assert!(matches!(&seen[2], VipSeen::Failed { detail } if detail.contains("timed out")));
        assert!(
            matches!(&seen[3], VipSeen::NotTried { .. }),
            "{:?}",
            seen[3]
        );
        let without = parse_vip(&tries[1..2], "vip 0 rc=0 \nct none\n").unwrap();
        assert_eq!(without[0], VipSeen::Connected { endpoint: None });
        assert!(parse_vip(&tries, "vip 0 rc=0\n").is_err());
    }

    #[test]
    fn kube_proxy_counts_only_in_this_nodes_network_namespace() {
        let t = prepare_script().text;
        let line = t.lines().find(|l| l.starts_with("kp=")).unwrap();
        let rest: Vec<&str> = t
            .lines()
            .skip_while(|l| !l.starts_with("kp="))
            .take(4)
            .collect();
        assert_eq!(rest.len(), 4, "{t}");
        // No kube-proxy process here: not running.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(rest.join("\n"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "kube-proxy not-running\n",
            "{line}"
        );
    }

    #[test]
    fn the_apiserver_connection_counts_when_the_server_answers() {
        let t = apiserver_script("198.51.100.1", 6443).text;
        assert!(
            t.contains("printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' | socat -t10 -T10 - 'TCP:198.51.100.1:6443,connect-timeout=2'"),
            "{t}"
        );
        assert!(apiserver_script("::1", 6443)
            .text
            .contains("'TCP:[::1]:6443,"));
        assert_eq!(
            parse_apiserver("apiserver rc=0 bytes=76 \n").unwrap(),
            Observed::Answered { bytes: 76 }
        );
        assert_eq!(
            parse_apiserver("apiserver rc=0 bytes=0 \n").unwrap(),
            Observed::Failed {
                detail: "connected, but nothing answered the request".into()
            }
        );
        assert_eq!(
            parse_apiserver("apiserver rc=1 bytes=0 2026/12/06 socat[9] E connect(5, AF=2 198.51.100.1:6443, 16): Connection refused \n").unwrap(),
            Observed::Failed {
                detail: "connect(5, AF=2 198.51.100.1:6443, 16): Connection refused".into()
            }
        );
        assert!(parse_apiserver("nonsense").is_err());
    }

    #[test]
    fn probe_addresses_are_read_in_order_and_a_missing_one_is_an_error() {
        let r = run();
        let ips = parse_up(&r, "probe 1 10.10.1.3/24\nprobe 0 10.10.1.2/24\n").unwrap();
        assert_eq!(
            ips,
            vec![Ipv4Addr::new(10, 10, 1, 2), Ipv4Addr::new(10, 10, 1, 3)]
        );
        assert!(parse_up(&r, "probe 0 10.10.1.2/24\n").is_err());
        assert!(parse_up(&r, "probe 0 none\nprobe 1 10.10.1.3/24\n").is_err());
    }

    #[test]
    fn connections_run_from_the_probe_or_the_node_and_report_the_peer() {
        let r = run();
        let conns = vec![
            Connect {
                from: Some(1),
                to: "10.10.2.2".parse().unwrap(),
                port: 8080,
                df_payload: None,
            },
            Connect {
                from: None,
                to: "10.10.1.2".parse().unwrap(),
                port: 8080,
                df_payload: None,
            },
            Connect {
                from: Some(0),
                to: "203.0.113.10".parse().unwrap(),
                port: 443,
                df_payload: None,
            },
            Connect {
                from: Some(0),
                to: "10.10.2.2".parse().unwrap(),
                port: 8080,
                df_payload: Some(1472),
            },
        ];
        let t = measure_script(&r, &conns).text;
        assert!(
            t.contains("ADDR=10.10.2.2 PORT=8080 probe 0 ip netns exec ksv-00000abc-3-1 &"),
            "{t}"
        );
        assert!(t.contains("ADDR=10.10.1.2 PORT=8080 probe 1 env &"), "{t}");
        assert!(
            t.contains("ADDR=203.0.113.10 PORT=443 probe 2 ip netns exec ksv-00000abc-3-0 &"),
            "{t}"
        );
        assert!(t.contains("TCP4:$ADDR:$PORT,connect-timeout=2"), "{t}");
        assert!(
            t.contains("ADDR=10.10.2.2 PORT=8080 SIZE=1472 df 3 ip netns exec ksv-00000abc-3-0 &"),
            "{t}"
        );
        assert!(t.contains("UDP4:$ADDR:$PORT,mtudiscover=2"), "{t}");
        let seen = parse_measure(
            &conns,
            "cell 1 rc=1 2026/12/06 15:00:00 socat[12] E connect(5, AF=2 10.10.1.2:8080, 16): Connection timed out \ncell 0 rc=0 peer=10.10.1.2 #ksv-00000abc \ncell 2 rc=0 \ncell 3 rc=0 echoed=1472 of=1472\n",
        )
        .unwrap();
        assert_eq!(
            seen[0],
            Observed::Reached {
                peer: "10.10.1.2".parse().unwrap()
            }
        );
        assert_eq!(
            seen[1],
            Observed::Failed {
                detail: "connect(5, AF=2 10.10.1.2:8080, 16): Connection timed out".into()
            }
        );
        assert_eq!(seen[2], Observed::Connected);
        assert_eq!(seen[3], Observed::Echoed);
        let short = parse_measure(&conns[3..], "cell 0 rc=0 echoed=0 of=1472\n").unwrap();
        assert_eq!(
            short[0],
            Observed::Failed {
                detail: "0 of 1472 bytes came back".into()
            }
        );
        assert!(parse_measure(&conns, "cell 0 rc=0 peer=10.10.1.2\n").is_err());
    }
}

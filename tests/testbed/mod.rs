//! Real-kernel testbed: namespaces, sshd, CNI and probes (`KSCRATCH_TESTBED=1`, root).
//!
//! These tests check the testbed itself, so that later tests can trust it as
//! the real-kernel counterpart of the simulator: nodes answer SSH with host
//! keys that are verified, nodes keep private state, pods get addresses from
//! the real CNI plugins, probes report what the receiver saw, and teardown
//! leaves nothing behind.

pub mod support;

/// `kscratch apply` on the testbed: real pods, etcd, resume, host keys, timing.
mod apply;
/// The real kernel and `kscratch check` agree, with and without faults.
mod differential;
/// Node lifecycle: losing a control-plane node behind the endpoint.
mod lifecycle;
/// Removing a node: its routes, FDB entries and etcd member go.
mod removal;
/// `kscratch reset`: a node back to how it was handed over, others untouched.
mod reset;
/// A changed input restarts its service; a converged apply restarts nothing.
mod restart;
/// `kscratch verify`: the real cluster measured and held against the prediction.
mod verify;

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use ipnet::Ipv4Net;

use support::{bridge_cni_config, Probe, Result, Testbed};

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn testbed_nodes_are_reachable_over_ssh_with_verified_host_keys() -> Result<()> {
    support::require();
    let testbed = Testbed::up(
        "testbed_nodes_are_reachable_over_ssh_with_verified_host_keys",
        4,
    )?;
    let description = &testbed.description;
    assert_eq!(
        description.underlay.cidr,
        "198.51.100.0/24".parse::<Ipv4Net>().unwrap()
    );
    assert_eq!(description.test_host.ip, Ipv4Addr::new(198, 51, 100, 250));
    assert_eq!(testbed.nodes().len(), 4);

    for (index, node) in testbed.nodes().iter().enumerate() {
        let expected_ip = Ipv4Addr::new(198, 51, 100, index as u8 + 1);
        assert_eq!(node.ip, expected_ip, "{}", node.name);
        let output = testbed.ssh(
            node,
            "cat /proc/sys/net/ipv4/ip_forward; hostname; ip -o -4 addr show dev eth0",
        )?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "ssh {}: {:?} {}",
            node.name,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        // The command ran in the node's namespaces: its forwarding is still
        // the kernel default (kscratch's plan must turn it on), its hostname
        // is the node's, and its eth0 holds the node's address.
        assert_eq!(
            lines.first(),
            Some(&"0"),
            "ip_forward on {}: {stdout}",
            node.name
        );
        assert_eq!(
            lines.get(1),
            Some(&node.name.as_str()),
            "hostname on {}: {stdout}",
            node.name
        );
        assert!(
            lines
                .get(2)
                .is_some_and(|line| line.contains(&format!("inet {expected_ip}/24"))),
            "eth0 on {}: {stdout}",
            node.name
        );
    }

    // /etc/kubernetes is private per node: a file written on node1 exists
    // only there (in node1's own directory), not on node2 nor on the host.
    let (node1, node2) = (testbed.node("node1")?, testbed.node("node2")?);
    let marker = format!("written on node1 of {}", testbed.id());
    let write = testbed.ssh(
        node1,
        &format!("echo '{marker}' > /etc/kubernetes/testbed-marker"),
    )?;
    assert!(
        write.status.success(),
        "write on node1: {}",
        String::from_utf8_lossy(&write.stderr)
    );
    let read = testbed.ssh(node1, "cat /etc/kubernetes/testbed-marker")?;
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), marker);
    let absent = testbed.ssh(node2, "test ! -e /etc/kubernetes/testbed-marker")?;
    assert!(
        absent.status.success(),
        "node2 sees node1's /etc/kubernetes"
    );
    assert!(
        !Path::new("/etc/kubernetes/testbed-marker").exists(),
        "the marker leaked to the host"
    );
    assert!(node1
        .dir
        .join("root/etc-kubernetes/testbed-marker")
        .exists());

    // A known_hosts that pairs node1's address with node2's host key must
    // make ssh refuse node1, and the remote command must not run.
    let wrong = description.dir.join("wrong_known_hosts");
    std::fs::write(&wrong, format!("{} {}\n", node1.ip, node2.host_public_key)).unwrap();
    let refused =
        testbed.ssh_with_known_hosts(node1, &wrong, "touch /etc/kubernetes/must-not-exist")?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        refused.status.code(),
        Some(255),
        "ssh accepted a wrong host key: {stderr}"
    );
    assert!(stderr.contains("Host key verification failed"), "{stderr}");
    testbed.node_run(
        node1,
        &["test", "!", "-e", "/etc/kubernetes/must-not-exist"],
    )?;

    // An unknown host key is refused too (StrictHostKeyChecking=yes).
    let empty = description.dir.join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let unknown = testbed.ssh_with_known_hosts(node1, &empty, "true")?;
    assert_eq!(
        unknown.status.code(),
        Some(255),
        "ssh accepted an unknown host key"
    );

    testbed.down()
}

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn testbed_pods_get_addresses_from_the_real_cni_bridge_plugin() -> Result<()> {
    support::require();
    let testbed = Testbed::up(
        "testbed_pods_get_addresses_from_the_real_cni_bridge_plugin",
        2,
    )?;
    let network = format!("tb-{}", testbed.id());
    let (node1, node2) = (testbed.node("node1")?, testbed.node("node2")?);
    let subnet1: Ipv4Net = "10.10.1.0/24".parse().unwrap();
    let subnet2: Ipv4Net = "10.10.2.0/24".parse().unwrap();
    let config1 = bridge_cni_config(&network, "cbr0", subnet1, false);
    let config2 = bridge_cni_config(&network, "cbr0", subnet2, false);

    let a = testbed.create_pod(node1, "a", &config1)?;
    let b = testbed.create_pod(node1, "b", &config1)?;
    let c = testbed.create_pod(node2, "c", &config2)?;

    // host-local hands out addresses from each node's own subnet; the bridge
    // holds the gateway.
    for (pod, subnet) in [(&a, subnet1), (&b, subnet1), (&c, subnet2)] {
        assert!(
            subnet.contains(&pod.ip()),
            "pod {} got {} outside {subnet}",
            pod.name,
            pod.address
        );
        assert_eq!(pod.address.prefix_len(), 24);
        assert_eq!(
            pod.gateway,
            Some(subnet.hosts().next().unwrap()),
            "pod {}",
            pod.name
        );
    }
    assert_ne!(a.ip(), b.ip());
    let cbr0 = testbed.node_run(node1, &["ip", "-o", "-4", "addr", "show", "dev", "cbr0"])?;
    assert!(cbr0.contains("inet 10.10.1.1/24"), "cbr0 on node1: {cbr0}");

    // IPAM state is in each node's private /var/lib/cni, not the host's.
    let lease_a = format!("/var/lib/cni/networks/{network}/{}", a.ip());
    let lease = testbed.node_run(node1, &["cat", &lease_a])?;
    assert!(lease.contains(&a.container_id), "lease of pod a: {lease}");
    assert!(
        !testbed
            .node_exec(node2, &["test", "-e", &lease_a])?
            .status
            .success(),
        "node2 sees node1's lease"
    );
    assert!(
        !Path::new(&format!("/var/lib/cni/networks/{network}")).exists(),
        "IPAM state leaked to the host"
    );

    // Same node: pod a reaches pod b over the bridge, and b sees a's own
    // address (no NAT).
    assert_eq!(
        testbed.probe_pod_to_pod(&a, &b)?,
        Probe::Reached {
            peer: IpAddr::V4(a.ip())
        }
    );

    // Different nodes: nothing routes 10.10.2.0/24 to node2 yet (no pod
    // routes on nodes nor on the router). That is what kscratch will fix.
    let across = testbed.probe_pod_to_pod(&a, &c)?;
    assert!(
        matches!(across, Probe::Unreachable { .. }),
        "pod a reached pod c without routes: {across:?}"
    );
    let back = testbed.probe_pod_to_pod(&c, &a)?;
    assert!(
        matches!(back, Probe::Unreachable { .. }),
        "pod c reached pod a without routes: {back:?}"
    );

    // CNI DEL releases the address.
    let lease_b = format!("/var/lib/cni/networks/{network}/{}", b.ip());
    testbed.node_run(node1, &["test", "-e", &lease_b])?;
    testbed.delete_pod(&b)?;
    assert!(
        !testbed
            .node_exec(node1, &["test", "-e", &lease_b])?
            .status
            .success(),
        "DEL kept the lease of pod b"
    );
    assert!(
        !support::list_netns()?.contains(&b.netns),
        "pod b's namespace survived delete_pod"
    );

    testbed.down()
}

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn testbed_teardown_leaves_nothing() -> Result<()> {
    support::require();
    let testbed = Testbed::up("testbed_teardown_leaves_nothing", 2)?;
    let description = testbed.description.clone();
    let prefix = description.netns_prefix.clone();
    let node1 = testbed.node("node1")?;
    let node2 = testbed.node("node2")?;
    let config = bridge_cni_config(
        &format!("tb-{}", testbed.id()),
        "cbr0",
        "10.10.1.0/24".parse().unwrap(),
        false,
    );
    let pod = testbed.create_pod(node1, "a", &config)?;
    // Processes a test leaves running in the testbed: a daemon on a node and
    // one in a pod. Teardown must stop them too.
    let mut daemon = testbed.node_spawn(node2, &["sleep", "600"])?;
    let mut in_pod = support::spawn_in(&pod.netns, &["sleep", "600"])?;

    let ours: Vec<String> = support::list_netns()?
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix))
        .collect();
    // underlay, router, outside, 2 nodes, 1 pod
    assert_eq!(ours.len(), 6, "{ours:?}");
    assert!(support::root_link_exists(&description.test_host.link)?);
    assert!(description.dir.exists());

    drop(testbed);

    let left: Vec<String> = support::list_netns()?
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(
        !support::root_link_exists(&description.test_host.link)?,
        "root link left"
    );
    for node in &description.nodes {
        assert!(
            !support::process_alive(node.sshd_pid),
            "sshd of {} (pid {}) left",
            node.name,
            node.sshd_pid
        );
    }
    for (what, child) in [
        ("daemon on node2", &mut daemon),
        ("process in pod a", &mut in_pod),
    ] {
        let status = child.wait().expect("wait for a child");
        assert!(
            status.signal().is_some(),
            "{what} was not stopped by teardown: {status}"
        );
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = description.dir.to_string_lossy().into_owned();
    let netns_mounts = format!("/run/netns/{prefix}");
    let mounts: Vec<&str> = mountinfo
        .lines()
        .filter(|line| line.contains(dir.as_str()) || line.contains(&netns_mounts))
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
    assert!(
        !description.dir.exists(),
        "{} left",
        description.dir.display()
    );
    Ok(())
}

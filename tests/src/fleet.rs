//! A fleet on this machine: one network namespace per node, each with its
//! own address on a bridge the test creates (veth pairs), so processes talk
//! as EC2 instances would and a node can be cut off by taking its link down.
//! Needs root (`ip netns`); everything is removed on drop. Servers that run
//! on the host's loopback (moto, DynamoDB Local) are reached through
//! [`Forward`]s bound on the bridge's address.

use std::net::SocketAddr;
use std::process::Command;

use anyhow::{Context, Result, bail};

pub struct Fleet {
    tag: String,
    subnet: String,
    nodes: Vec<String>,
}

fn ip(args: &[&str]) -> Result<()> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !o.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

impl Fleet {
    /// A bridge with the host at `.1` and `nodes` namespaces at `.10`,
    /// `.11`, ... of a /24 private to this process.
    pub fn create(nodes: &[&str]) -> Result<Self> {
        let pid = std::process::id();
        let tag = format!("sl{}", pid % 100_000);
        let subnet = format!("10.213.{}", pid % 250);
        let fleet = Self {
            tag,
            subnet,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        };
        let bridge = fleet.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", fleet.host_ip()),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..nodes.len() {
            let ns = fleet.namespace(i);
            let (outer, inner) = (fleet.veth(i), format!("{}i{i}", fleet.tag));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &outer, "master", &bridge])?;
            ip(&["link", "set", &outer, "up"])?;
            let addr = format!("{}/24", fleet.node_ip(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(fleet)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn veth(&self, i: usize) -> String {
        format!("{}o{i}", self.tag)
    }

    fn namespace(&self, i: usize) -> String {
        format!("{}-{}", self.tag, self.nodes[i])
    }

    fn index(&self, node: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n == node)
            .with_context(|| format!("no node {node}"))
    }

    /// The host's address on the bridge (where [`Forward`]s listen).
    pub fn host_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    fn node_ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 10 + i)
    }

    /// `node`'s address.
    pub fn addr(&self, node: &str) -> Result<String> {
        Ok(self.node_ip(self.index(node)?))
    }

    /// `program` to be run inside `node`'s namespace.
    pub fn command(&self, node: &str, program: &std::path::Path) -> Result<Command> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace(self.index(node)?)])
            .arg(program);
        Ok(cmd)
    }

    /// Takes `node`'s link down (`up` false) or up again: its packets stop
    /// both ways, as when an instance drops off the network.
    pub fn set_link(&self, node: &str, up: bool) -> Result<()> {
        let veth = self.veth(self.index(node)?);
        ip(&["link", "set", &veth, if up { "up" } else { "down" }])
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = ip(&["link", "del", &self.veth(i)]);
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// A TCP forwarder from `listen` to `upstream`, on its own thread; stops on
/// drop.
pub struct Forward {
    pub addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl Forward {
    pub fn start(listen: &str, upstream: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let upstream = upstream.to_string();
        let listener = runtime.block_on(tokio::net::TcpListener::bind(listen))?;
        let addr = listener.local_addr()?;
        runtime.spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            _runtime: runtime,
        })
    }
}

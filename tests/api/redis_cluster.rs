//! A private six-node Redis Cluster (three masters, one replica each) on free loopback ports, for
//! tests of `--redis-cluster-urls`: kill, pause, fail over, take the whole cluster down and back.
//! Every step that changes the cluster has a bounded wait for the cluster to agree; drop kills all.

use std::cell::Cell;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::helpers::spawn_redis;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use redis::{FromRedisValue, RedisResult};
use tempfile::TempDir;

/// tracknum's serial counter; its hash tag pins it to one slot, hence to one master.
pub const COUNTER_KEY: &str = "{tracknum}:serial";
const NODES: usize = 6;
const SLOTS: u32 = 16384;
/// Redis Cluster's gossip bus listens on the client port plus this.
const BUS_OFFSET: u16 = 10000;

struct Node {
    port: u16,
    /// The port the node tells clients to use (in `CLUSTER SLOTS`, `MOVED`): its own, or a
    /// proxy's in front of it.
    announced: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Sent SIGSTOP and not yet SIGCONT: it would hang any question asked of it.
    paused: Cell<bool>,
}

impl Node {
    fn answers(&self) -> bool {
        self.child.is_some() && !self.paused.get()
    }
}

pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create` (three masters, a replica
    /// each) and waits until the cluster is healthy (see `wait_healthy`), replicas included.
    pub fn start() -> Self {
        Self::start_announcing(|port| port)
    }

    /// [`RedisCluster::start`], each node announcing to clients the port `announce` gives for
    /// its own (a proxy's in front of it), so that clients reach it only that way. Its cluster
    /// bus, and this harness, still use its own port.
    pub fn start_announcing(mut announce: impl FnMut(u16) -> u16) -> Self {
        let dir = TempDir::new().unwrap();
        let nodes = cluster_ports()
            .into_iter()
            .map(|port| {
                let node_dir = dir.path().join(port.to_string());
                std::fs::create_dir(&node_dir).unwrap();
                Node {
                    port,
                    announced: announce(port),
                    dir: node_dir,
                    child: None,
                    paused: Cell::new(false),
                }
            })
            .collect();
        let mut cluster = RedisCluster { nodes, _dir: dir };
        cluster.start_all();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs (it comes with redis-server)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    fn spawn(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        let mut server = Command::new("redis-server");
        server
            .args(["--port", &n.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "1000"])
            .args(["--cluster-announce-ip", "127.0.0.1"])
            .args(["--cluster-announce-port", &n.announced.to_string()])
            .args([
                "--cluster-announce-bus-port",
                &(n.port + BUS_OFFSET).to_string(),
            ])
            // 0: a replica may fail over however long ago it last heard from its master.
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--save", "", "--appendonly", "no"])
            // The default waits 5 s for more replicas before a full sync: every (re)joining
            // replica would take that long to come up to date.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&n.dir);
        let child = spawn_redis(&mut server);
        n.child = Some(child);
        n.paused.set(false);
    }

    fn wait_answering(&mut self, node: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_cmd::<String>(node, &["PING"]).is_err() {
            let n = &mut self.nodes[node];
            if let Some(status) = n.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "redis-server on port {} exited ({status}): port taken?",
                    n.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not come up",
                n.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, node: usize) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[node].port)
    }

    /// The URLs of every running node as announced, comma-separated, as
    /// `--redis-cluster-urls` takes them.
    pub fn seed_urls(&self) -> String {
        let running = self.nodes.iter().filter(|n| n.child.is_some());
        running
            .map(|n| format!("redis://127.0.0.1:{}", n.announced))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node that owns the key's slot, as the first answering node sees it. After a change,
    /// `wait_healthy` first: until then a node may still name a dead master.
    pub fn master_of_key(&self, key: &str) -> usize {
        let asked = self.answering();
        let slot: u32 = self.cmd_on(asked, &["CLUSTER", "KEYSLOT", key]);
        let view = self.view(asked).unwrap();
        let owner = view
            .iter()
            .find(|n| n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)));
        let owner = owner.unwrap_or_else(|| panic!("no node owns slot {slot}: {view:#?}"));
        self.index_of(owner.port)
    }

    /// The node replicating `master`, as the first answering node sees it.
    pub fn replica_of(&self, master: usize) -> usize {
        let view = self.view(self.answering()).unwrap();
        let port = self.nodes[master].port;
        let id = &view
            .iter()
            .find(|n| n.port == port)
            .expect("the master is known")
            .id;
        let replica = view
            .iter()
            .find(|n| n.flags.contains("slave") && &n.master_id == id);
        let replica = replica.unwrap_or_else(|| panic!("node {master} has no replica: {view:#?}"));
        self.index_of(replica.port)
    }

    /// SIGKILL, then waits for the process to be gone.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name: `STOP` hangs the node (it answers nobody, clients nor gossip),
    /// `CONT` resumes it.
    pub fn signal(&self, node: usize, name: &str) {
        let n = &self.nodes[node];
        let pid = n.child.as_ref().expect("running").id();
        // The shell's own `kill`: no procps needed on the machine.
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{name} {pid}")])
            .status()
            .unwrap();
        assert!(status.success());
        match name {
            "STOP" => n.paused.set(true),
            "CONT" => n.paused.set(false),
            _ => {}
        }
    }

    /// Kills the node if running and starts it again, empty (no persistence), on its port and
    /// directory; waits until it answers PING. It rejoins the cluster its `nodes.conf` names, in
    /// whatever role the others now give it: `wait_healthy` waits until it has.
    pub fn restart(&mut self, node: usize) {
        self.kill(node);
        self.spawn(node);
        self.wait_answering(node);
    }

    /// Closes `master`'s replication links. Pausing a replica is not enough to make it miss
    /// writes: the kernel keeps taking the stream into the paused replica's socket buffer,
    /// which it reads on `CONT`. After this a paused replica cannot reconnect, so every write the
    /// master acknowledges from now on lives on the master only.
    pub fn cut_replication(&self, master: usize) {
        let _: u64 = self.cmd_on(master, &["CLIENT", "KILL", "TYPE", "replica"]);
    }

    /// Waits until every replica connected to `master` has acknowledged the master's whole
    /// replication stream as of this call: every write acknowledged so far, by anyone, would
    /// survive a failover. Replicas acknowledge about once a second, so this takes up to that.
    /// (`WAIT` would be quicker, but it only covers its own connection's writes.)
    pub fn wait_replicated(&self, master: usize, timeout: Duration) {
        let info = self
            .info(master, "replication")
            .expect("the master answers");
        let target: u64 = field(&info, "master_repl_offset").unwrap().parse().unwrap();
        self.wait_for(
            &format!("replication of {target} on node {master}"),
            timeout,
            || {
                let info = self
                    .info(master, "replication")
                    .map_err(|e| e.to_string())?;
                // `slave0:ip=127.0.0.1,port=20001,state=online,offset=1234,lag=0`
                let offsets: Vec<u64> = (0..)
                    .map_while(|i| field(&info, &format!("slave{i}")))
                    .filter_map(|line| line.split(',').find_map(|f| f.strip_prefix("offset=")))
                    .map(|offset| offset.parse().unwrap())
                    .collect();
                match offsets.iter().min() {
                    Some(&least) if least >= target => Ok(()),
                    least => Err(format!("replica offsets {offsets:?}, least {least:?}")),
                }
            },
        );
    }

    /// `CLUSTER FAILOVER TAKEOVER` on a replica: it becomes master at once, without its
    /// master's or the other masters' consent. A replica that already made itself master (it may
    /// fail over on its own once its master is marked failed) is left as it is.
    pub fn takeover(&self, node: usize) {
        let reply: RedisResult<String> = self.try_cmd(node, &["CLUSTER", "FAILOVER", "TAKEOVER"]);
        if let Err(e) = reply {
            assert!(
                self.role(node).as_deref() == Some("master"),
                "takeover on {node}: {e}"
            );
        }
    }

    /// Waits until the node says it is a master and that the cluster is ok.
    pub fn wait_until_master(&self, node: usize, timeout: Duration) {
        self.wait_for(&format!("node {node} master"), timeout, || {
            match (
                self.role(node).as_deref(),
                self.cluster_state(node).as_deref(),
            ) {
                (Some("master"), Some("ok")) => Ok(()),
                (role, state) => Err(format!("role {role:?}, cluster_state {state:?}")),
            }
        });
    }

    /// Waits until every answering node says `cluster_state:ok`, flags no running node as
    /// failing, sees all slots owned by running masters, has its link to its master up if it is
    /// a replica (so a failover from then on loses nothing replicated), and agrees with the others
    /// on who is whose replica and who owns which slots. Views converge by gossip, one node at a
    /// time: a restarted node may be a replica in its own view and a failed master in another's.
    pub fn wait_healthy(&self, timeout: Duration) {
        self.wait_for("a healthy cluster", timeout, || {
            let topologies = (0..NODES)
                .filter(|&i| self.nodes[i].answers())
                .map(|i| self.healthy_on(i).map_err(|e| format!("node {i}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            match topologies.windows(2).find(|pair| pair[0] != pair[1]) {
                Some(pair) => Err(format!("views differ: {:?} {:?}", pair[0], pair[1])),
                None => Ok(()),
            }
        });
    }

    /// Checks one node's own view and returns the topology it sees.
    fn healthy_on(&self, node: usize) -> Result<Topology, String> {
        let state = self.cluster_state(node);
        if state.as_deref() != Some("ok") {
            return Err(format!("cluster_state {state:?}"));
        }
        let view = self.view(node).map_err(|e| e.to_string())?;
        let running = |port| {
            self.nodes
                .iter()
                .any(|n| n.port == port && n.child.is_some())
        };
        if let Some(n) = view
            .iter()
            .find(|n| running(n.port) && n.flags.contains("fail"))
        {
            return Err(format!("port {} flagged {}", n.port, n.flags));
        }
        let served: u32 = view
            .iter()
            .filter(|n| running(n.port))
            .flat_map(|n| n.slots.iter().map(|(a, b)| b - a + 1))
            .sum();
        if served != SLOTS {
            return Err(format!("{served} slots on running masters"));
        }
        let replication = self.info(node, "replication").map_err(|e| e.to_string())?;
        let link = field(&replication, "master_link_status");
        if let (Some("slave"), Some(link)) = (field(&replication, "role"), link)
            && link != "up"
        {
            return Err(format!("master link {link}"));
        }
        let port_of = |id: &str| view.iter().find(|n| n.id == id).map(|n| n.port);
        let mut topology: Topology = view
            .iter()
            .map(|n| (n.port, port_of(&n.master_id), n.slots.clone()))
            .collect();
        topology.sort_unstable();
        Ok(topology)
    }

    /// Kills every node: a whole-cluster outage.
    pub fn stop_all(&mut self) {
        (0..NODES).for_each(|i| self.kill(i));
    }

    /// Starts every node that is not running, on its port and directory, and waits until each
    /// answers PING. They re-form the cluster from their `nodes.conf`, empty: `wait_healthy`
    /// waits until they have.
    pub fn start_all(&mut self) {
        let stopped: Vec<_> = (0..NODES)
            .filter(|&i| self.nodes[i].child.is_none())
            .collect();
        // All spawned before any is waited for: they start side by side.
        stopped.iter().for_each(|&i| self.spawn(i));
        stopped.iter().for_each(|&i| self.wait_answering(i));
    }

    /// One command to one node (no redirection: a key of another master's slot gets MOVED).
    pub fn cmd_on<T: FromRedisValue>(&self, node: usize, args: &[&str]) -> T {
        self.try_cmd(node, args)
            .unwrap_or_else(|e| panic!("{args:?} on node {node}: {e}"))
    }

    /// The nodes whose process runs (paused or not).
    pub fn running_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&node| self.nodes[node].child.is_some())
            .collect()
    }

    /// FLUSHALL on every answering master.
    pub fn flushall(&self) {
        for i in (0..NODES).filter(|&i| self.nodes[i].answers()) {
            if self.role(i).as_deref() == Some("master") {
                let _: String = self.cmd_on(i, &["FLUSHALL"]);
            }
        }
    }

    /// tracknum's counter as its master holds it; `None` when absent.
    pub fn counter_value(&self) -> Option<u64> {
        self.cmd_on(self.master_of_key(COUNTER_KEY), &["GET", COUNTER_KEY])
    }

    fn try_cmd<T: FromRedisValue>(&self, node: usize, args: &[&str]) -> RedisResult<T> {
        let client = redis::Client::open(self.url(node))?;
        let mut conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
        // A paused node accepts the connection and never answers: give up rather than hang.
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut cmd = redis::cmd(args[0]);
        args[1..].iter().for_each(|arg| {
            cmd.arg(*arg);
        });
        cmd.query(&mut conn)
    }

    fn info(&self, node: usize, section: &str) -> RedisResult<String> {
        self.try_cmd(node, &["INFO", section])
    }

    /// `master` or `slave`, `None` when the node does not answer.
    fn role(&self, node: usize) -> Option<String> {
        let info = self.info(node, "replication").ok()?;
        field(&info, "role").map(str::to_owned)
    }

    fn cluster_state(&self, node: usize) -> Option<String> {
        let info: String = self.try_cmd(node, &["CLUSTER", "INFO"]).ok()?;
        field(&info, "cluster_state").map(str::to_owned)
    }

    /// The cluster as one node sees it (`CLUSTER NODES`).
    fn view(&self, node: usize) -> RedisResult<Vec<NodeLine>> {
        let text: String = self.try_cmd(node, &["CLUSTER", "NODES"])?;
        let mut view: Vec<NodeLine> = text.lines().map(NodeLine::parse).collect();
        // Nodes name each other by their announced ports; this harness knows them by their own.
        for line in &mut view {
            if let Some(n) = self.nodes.iter().find(|n| n.announced == line.port) {
                line.port = n.port;
            }
        }
        Ok(view)
    }

    fn answering(&self) -> usize {
        (0..NODES)
            .find(|&i| self.nodes[i].answers())
            .expect("a node that answers")
    }

    fn index_of(&self, port: u16) -> usize {
        let index = self.nodes.iter().position(|n| n.port == port);
        index.unwrap_or_else(|| panic!("port {port} is not one of this cluster's nodes"))
    }

    /// Polls `check` every 50 ms until it passes; past `timeout`, panics with its last complaint
    /// and the cluster as an answering node sees it.
    fn wait_for(&self, what: &str, timeout: Duration, check: impl Fn() -> Result<(), String>) {
        let deadline = Instant::now() + timeout;
        loop {
            let complaint = match check() {
                Ok(()) => return,
                Err(complaint) => complaint,
            };
            if Instant::now() > deadline {
                let asked = (0..NODES).find(|&i| self.nodes[i].answers());
                let view: Option<String> =
                    asked.and_then(|i| self.try_cmd(i, &["CLUSTER", "NODES"]).ok());
                panic!(
                    "no {what} within {timeout:?}: {complaint}\n{}",
                    view.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The cluster as one node sees it, sorted: each node's port, its master's port (none for a
/// master) and its slot ranges.
type Topology = Vec<(u16, Option<u16>, Vec<(u32, u32)>)>;

/// One line of `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <master id|-> <ping> <pong> <epoch>
/// <link> <slot ranges…>`.
#[derive(Debug)]
struct NodeLine {
    id: String,
    port: u16,
    flags: String,
    master_id: String,
    slots: Vec<(u32, u32)>,
}

impl NodeLine {
    fn parse(line: &str) -> Self {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let address = fields[1].split('@').next().unwrap();
        let slots = fields[8..]
            .iter()
            // `[slot->-id]` and `[slot-<-id]` are slots being migrated, not owned.
            .filter(|range| !range.starts_with('['))
            .map(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                (a.parse().unwrap(), b.parse().unwrap())
            })
            .collect();
        NodeLine {
            id: fields[0].to_owned(),
            port: address.rsplit(':').next().unwrap().parse().unwrap(),
            flags: fields[2].to_owned(),
            master_id: fields[3].to_owned(),
            slots,
        }
    }
}

/// `name:value` from an INFO-style reply.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Client ports come from here, their bus ports 10000 above: all below Linux's ephemeral range
/// (32768 and up), where `free_port()` and every outgoing connection take theirs. A port picked
/// there could be taken before redis-server binds it, or while its node is down for a restart.
const PORTS: std::ops::Range<u32> = 20000..22768;
/// How many ports this process has tried: no two clusters of one test run share a port.
static PORTS_TRIED: AtomicU32 = AtomicU32::new(0);

/// Ports for the nodes, each free with its bus port. Each process starts at its own point of the
/// range, so two test runs side by side rarely try the same ports.
fn cluster_ports() -> Vec<u16> {
    let span = PORTS.end - PORTS.start;
    let offset = std::process::id().wrapping_mul(7919);
    let free = |port: u32| TcpListener::bind(("127.0.0.1", port as u16)).is_ok();
    let mut ports = Vec::new();
    for _ in 0..span {
        let tried = PORTS_TRIED.fetch_add(1, Ordering::Relaxed);
        let port = PORTS.start + offset.wrapping_add(tried) % span;
        if free(port) && free(port + u32::from(BUS_OFFSET)) {
            ports.push(port as u16);
            if ports.len() == NODES {
                return ports;
            }
        }
    }
    panic!("not {NODES} free ports in {PORTS:?} with their bus ports free");
}

/// Prints how long each step took (see it with `--nocapture`).
struct Steps {
    start: Instant,
    last: Instant,
}

impl Steps {
    fn new() -> Self {
        let now = Instant::now();
        Steps {
            start: now,
            last: now,
        }
    }

    fn done(&mut self, step: &str) {
        let now = Instant::now();
        let (took, total) = (now - self.last, now - self.start);
        eprintln!("{step}: {took:.2?} (total {total:.2?})");
        self.last = now;
    }
}

#[test]
fn cluster_harness_a_killed_master_fails_over_by_itself_and_rejoins_as_a_replica() {
    let mut steps = Steps::new();
    let mut cluster = RedisCluster::start();
    steps.done("start");
    let key = "{harness}:probe";
    let master = cluster.master_of_key(key);
    let replica = cluster.replica_of(master);
    let _: () = cluster.cmd_on(master, &["SET", key, "1"]);
    // Replication is asynchronous: make sure the replica has the write before the kill.
    cluster.wait_replicated(master, Duration::from_secs(5));
    steps.done("write");
    cluster.kill(master);
    steps.done("kill");
    cluster.wait_until_master(replica, Duration::from_secs(15));
    steps.done("failover");
    cluster.wait_healthy(Duration::from_secs(15));
    steps.done("healthy");
    assert_eq!(cluster.master_of_key(key), replica);
    let value: u64 = cluster.cmd_on(replica, &["INCR", key]);
    assert_eq!(value, 2, "the replicated write survived the failover");
    steps.done("write through the new master");
    cluster.restart(master);
    cluster.wait_healthy(Duration::from_secs(15));
    steps.done("old master restarted, healthy");
    assert_eq!(
        cluster.replica_of(replica),
        master,
        "it rejoins as a replica"
    );
    assert_eq!(cluster.seed_urls().split(',').count(), 6);
    cluster.flushall();
    assert_eq!(cluster.cmd_on::<Option<u64>>(replica, &["GET", key]), None);
}

#[test]
fn cluster_harness_a_takeover_by_a_lagging_replica_loses_acknowledged_writes() {
    let mut steps = Steps::new();
    let mut cluster = RedisCluster::start();
    steps.done("start");
    let master = cluster.master_of_key(COUNTER_KEY);
    let replica = cluster.replica_of(master);
    let _: u64 = cluster.cmd_on(master, &["INCRBY", COUNTER_KEY, "100"]);
    cluster.wait_replicated(master, Duration::from_secs(5));
    steps.done("a replicated write");
    cluster.signal(replica, "STOP");
    cluster.cut_replication(master);
    let mut acknowledged = 0;
    for _ in 0..5 {
        acknowledged = cluster.cmd_on(master, &["INCRBY", COUNTER_KEY, "100"]);
    }
    assert_eq!(acknowledged, 600);
    steps.done("writes the paused replica misses");
    cluster.kill(master);
    cluster.signal(replica, "CONT");
    cluster.takeover(replica);
    cluster.wait_until_master(replica, Duration::from_secs(15));
    steps.done("takeover");
    let value = cluster.counter_value().expect("the replicated write");
    assert!(value < acknowledged, "{value} is not behind {acknowledged}");
    assert_eq!(value, 100);
    cluster.stop_all();
    steps.done("stop all");
    cluster.start_all();
    cluster.wait_healthy(Duration::from_secs(30));
    steps.done("start all, healthy");
    assert_eq!(
        cluster.counter_value(),
        None,
        "no persistence: the data is gone"
    );
    let _: u64 = cluster.cmd_on(cluster.master_of_key(COUNTER_KEY), &["INCR", COUNTER_KEY]);
    steps.done("write after the outage");
}

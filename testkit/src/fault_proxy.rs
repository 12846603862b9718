//! A TCP proxy between a client and a broker that breaks the link on demand: latency on the
//! broker→client direction, that direction swallowed (the broker's answers and acks lost while
//! the connection looks alive), every connection reset, new connections refused. `tc netem`
//! and iptables are not available here; this is what a flaky network does to a client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy's switches, shared with its connections.
#[derive(Default)]
struct Faults {
    /// Added before each broker→client chunk is passed on, in milliseconds.
    latency_ms: AtomicU64,
    /// Broker→client bytes are read and dropped.
    swallow: AtomicBool,
    /// New connections are closed at once.
    refuse: AtomicBool,
    /// Connections accepted so far (refused ones included).
    accepted: AtomicU64,
}

/// A TCP proxy on a free loopback port in front of `target`; stops (and closes every
/// connection) on drop.
pub struct FaultProxy {
    address: SocketAddr,
    faults: Arc<Faults>,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts proxying to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address");
        let faults = Arc::new(Faults::default());
        let (resets, _) = watch::channel(0);
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            Arc::clone(&faults),
            resets.clone(),
            Arc::clone(&connections),
        ));
        Self {
            address,
            faults,
            resets,
            connections,
            accept,
        }
    }

    /// The address clients connect to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Delays every broker→client chunk by `latency` (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.faults.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Drops (or passes again) what the broker sends: the client's requests still reach it,
    /// its answers, acks and heartbeats do not.
    pub fn swallow_broker_to_client(&self, swallow: bool) {
        self.faults.swallow.store(swallow, Ordering::SeqCst);
    }

    /// Closes new connections at once (or accepts them again).
    pub fn refuse_new(&self, refuse: bool) {
        self.faults.refuse.store(refuse, Ordering::SeqCst);
    }

    /// How many connections clients opened so far (a client that gave up on a dead link
    /// shows up here when it connects again).
    pub fn connections_accepted(&self) -> u64 {
        self.faults.accepted.load(Ordering::SeqCst)
    }

    /// Resets every open connection (both sides see it closed).
    pub fn reset_all(&self) {
        self.resets.send_modify(|count| *count += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for connection in self.connections.lock().expect("lock").drain(..) {
            connection.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    faults: Arc<Faults>,
    resets: watch::Sender<u64>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        faults.accepted.fetch_add(1, Ordering::SeqCst);
        if faults.refuse.load(Ordering::SeqCst) {
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        let faults = Arc::clone(&faults);
        let reset = resets.subscribe();
        let connection = tokio::spawn(async move {
            let Ok(broker) = TcpStream::connect(target).await else {
                return;
            };
            relay(client, broker, faults, reset).await;
        });
        let mut open = connections.lock().expect("lock");
        open.retain(|task| !task.is_finished());
        open.push(connection);
    }
}

/// Pumps both directions until either side closes or a reset is asked for.
async fn relay(
    client: TcpStream,
    broker: TcpStream,
    faults: Arc<Faults>,
    mut reset: watch::Receiver<u64>,
) {
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut broker_read, mut broker_write) = broker.into_split();
    {
        let upstream = async {
            let mut buffer = vec![0; 64 * 1024];
            loop {
                let read = client_read.read(&mut buffer).await.unwrap_or(0);
                if read == 0 || broker_write.write_all(&buffer[..read]).await.is_err() {
                    return;
                }
            }
        };
        let downstream = async {
            let mut buffer = vec![0; 64 * 1024];
            loop {
                let read = broker_read.read(&mut buffer).await.unwrap_or(0);
                if read == 0 {
                    return;
                }
                if faults.swallow.load(Ordering::SeqCst) {
                    continue;
                }
                let latency = faults.latency_ms.load(Ordering::SeqCst);
                if latency > 0 {
                    tokio::time::sleep(Duration::from_millis(latency)).await;
                }
                if client_write.write_all(&buffer[..read]).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            () = upstream => {}
            () = downstream => {}
            _ = reset.changed() => {}
        }
    }
    // Dropping both halves closes both connections; an abrupt end is what a reset is.
    if let Ok(client) = client_read.reunite(client_write) {
        let _ = client.set_zero_linger();
    }
    if let Ok(broker) = broker_read.reunite(broker_write) {
        let _ = broker.set_zero_linger();
    }
}

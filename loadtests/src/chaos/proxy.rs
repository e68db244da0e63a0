//! [`FaultProxy`]: a loopback TCP proxy between one node and Redis that can delay,
//! black-hole or reset what passes through it, so a campaign can give one node a bad
//! network while the others keep a good one.
//!
//! Each accepted connection is forwarded to the upstream port in both directions. The
//! proxy's [`Fault`] is read for every chunk: `Delay` holds each chunk that long,
//! `BlackHole` stops forwarding (connections stay open, bytes wait), and
//! [`FaultProxy::reset`] closes every open connection at once (new ones are accepted).
//! Only loopback addresses are used.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the bytes passing through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward at once.
    None,
    /// Hold every chunk this long (both directions).
    Delay(Duration),
    /// Forward nothing until the fault ends.
    BlackHole,
}

#[derive(Debug)]
struct Shared {
    fault: Cell<Fault>,
    /// Bumped by a reset: connections of an older generation close.
    generation: Cell<u64>,
    upstream: u16,
}

/// See the module docs. Runs on the current (actix) thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct FaultProxy {
    shared: Rc<Shared>,
    port: u16,
    tasks: Rc<RefCell<Vec<actix_rt::task::JoinHandle<()>>>>,
}

impl FaultProxy {
    /// Listens on a free loopback port, forwarding to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let shared = Rc::new(Shared { fault: Cell::new(Fault::None), generation: Cell::new(0), upstream });
        let tasks = Rc::new(RefCell::new(Vec::new()));
        let accept = {
            let shared = shared.clone();
            actix_rt::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let shared = shared.clone();
                    actix_rt::spawn(async move {
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", shared.upstream)).await {
                            forward(client, server, shared).await;
                        }
                    });
                }
            })
        };
        tasks.borrow_mut().push(accept);
        Ok(FaultProxy { shared, port, tasks })
    }

    /// The port nodes connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set(&self, fault: Fault) {
        self.shared.fault.set(fault);
    }

    pub fn fault(&self) -> Fault {
        self.shared.fault.get()
    }

    /// Closes every open connection (a connection reset, as a middlebox or a restarted
    /// load balancer gives).
    pub fn reset(&self) {
        self.shared.generation.set(self.shared.generation.get() + 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if Rc::strong_count(&self.tasks) == 1 {
            for task in self.tasks.borrow_mut().drain(..) {
                task.abort();
            }
        }
    }
}

async fn forward(client: TcpStream, server: TcpStream, shared: Rc<Shared>) {
    let generation = shared.generation.get();
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pipe(client_read, server_write, shared.clone(), generation);
    let down = pipe(server_read, client_write, shared, generation);
    // Either direction ending (a close, an error, a reset) ends both.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Rc<Shared>,
    generation: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let reset = || shared.generation.get() != generation;
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            _ = wait_for(&reset) => return,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            match shared.fault.get() {
                Fault::None => break,
                Fault::Delay(delay) => {
                    actix_rt::time::sleep(delay).await;
                    break;
                }
                Fault::BlackHole => actix_rt::time::sleep(Duration::from_millis(20)).await,
            }
            if reset() {
                return;
            }
        }
        if reset() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Resolves once `condition` holds (polled every 20 ms).
async fn wait_for(condition: &impl Fn() -> bool) {
    while !condition() {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port.
    async fn echo() -> u16 {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        actix_rt::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                actix_rt::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    async fn round_trip(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        stream.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(within, stream.read_exact(&mut buf)).await.ok()?.ok()?;
        Some(buf.to_vec())
    }

    #[actix_rt::test]
    async fn bytes_pass_wait_in_a_black_hole_and_a_reset_closes() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let mut stream = TcpStream::connect(("127.0.0.1", proxy.port())).await.unwrap();
        assert_eq!(round_trip(&mut stream, Duration::from_secs(2)).await.as_deref(), Some(&b"ping"[..]));

        proxy.set(Fault::BlackHole);
        assert_eq!(round_trip(&mut stream, Duration::from_millis(300)).await, None, "held in the black hole");
        proxy.set(Fault::None);
        // The held bytes arrive once the fault ends.
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut buf)).await.unwrap().unwrap();

        proxy.set(Fault::Delay(Duration::from_millis(150)));
        let started = std::time::Instant::now();
        assert!(round_trip(&mut stream, Duration::from_secs(2)).await.is_some());
        assert!(started.elapsed() >= Duration::from_millis(300), "delayed both ways: {:?}", started.elapsed());
        proxy.set(Fault::None);

        proxy.reset();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "the reset closed the connection: {read:?}");
        let mut fresh = TcpStream::connect(("127.0.0.1", proxy.port())).await.unwrap();
        assert!(round_trip(&mut fresh, Duration::from_secs(2)).await.is_some(), "new connections pass");
    }
}

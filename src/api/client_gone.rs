//! Noticing that an HTTP client went away while its request is queued, starting or
//! running.
//!
//! actix-web neither drops a handler nor stops polling a response body when the peer
//! closes its connection: a collected (non-streaming) request would run to its end, and
//! a queued streaming request would wait for its first byte to fail, holding its
//! tenant's concurrency slot all the while. So every generation watches its connection:
//! when the server accepts a connection, [`remember_socket`] keeps its file descriptor in
//! the connection's data; [`ClientGone::of`] duplicates it for one request and waits, on
//! the runtime's reactor, until the peer has closed (end of stream, reset or error). The
//! handler then drops the request's event stream, which cancels the request wherever it
//! is and frees its slot (counted as `cancelled`).
//!
//! As with Go's `net/http`, a client that half-closes its side after sending a request
//! counts as gone. Bytes of a pipelined next request are left for the server to read.

use std::any::Any;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use actix_web::dev::Extensions;
use actix_web::HttpRequest;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The descriptor of an accepted TCP connection (in the connection's data).
#[derive(Debug, Clone, Copy)]
struct PeerSocket(RawFd);

/// `HttpServer::on_connect`: keeps the connection's socket for [`ClientGone::of`].
pub fn remember_socket(connection: &dyn Any, data: &mut Extensions) {
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        data.insert(PeerSocket(stream.as_raw_fd()));
    }
}

/// Resolves when the client of one request has gone away (pending forever when the
/// connection cannot be watched).
pub struct ClientGone {
    socket: Option<AsyncFd<std::net::TcpStream>>,
}

impl ClientGone {
    /// Watches the connection `request` arrived on.
    pub fn of(request: &HttpRequest) -> Self {
        let socket = request.conn_data::<PeerSocket>().and_then(|&PeerSocket(fd)| watch(fd));
        Self { socket }
    }

    /// A watcher that never fires (no connection to watch).
    pub fn never() -> Self {
        Self { socket: None }
    }

    /// Waits until the peer has closed the connection.
    pub async fn wait(&mut self) {
        let Some(socket) = &self.socket else { return std::future::pending().await };
        loop {
            let mut ready = match socket.readable().await {
                Ok(ready) => ready,
                Err(_) => return,
            };
            if ready.ready().is_read_closed() || ready.ready().is_error() {
                return;
            }
            match ready.get_inner().peek(&mut [0u8; 1]) {
                Ok(0) => return,
                // Bytes of a next request: not ours to read; wait for the next event.
                Ok(_) => ready.clear_ready(),
                Err(error) if error.kind() == ErrorKind::WouldBlock => ready.clear_ready(),
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

/// A duplicate of the connection's descriptor registered with the reactor. The
/// duplicate is the watcher's own (closing it leaves the connection open); it keeps the
/// socket alive until the request ends, so its number is never another connection's.
fn watch(fd: RawFd) -> Option<AsyncFd<std::net::TcpStream>> {
    // SAFETY: `fd` is the descriptor of the connection this request arrived on; the
    // connection (and so the descriptor) outlives its handler, which is running now.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned().ok()?;
    let stream = std::net::TcpStream::from(owned);
    stream.set_nonblocking(true).ok()?;
    // SAFETY: the `AsyncFd` owns `stream`, so its descriptor stays open, and names the
    // same socket, for as long as the registration lives.
    unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE) }.ok()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::time::Duration;

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn watcher(server: &TcpStream) -> ClientGone {
        ClientGone { socket: watch(server.as_raw_fd()) }
    }

    #[tokio::test]
    async fn fires_when_the_peer_closes_and_not_before() {
        let (client, server) = pair();
        let mut gone = watcher(&server);
        assert!(tokio::time::timeout(Duration::from_millis(200), gone.wait()).await.is_err(), "peer still open");
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), gone.wait()).await.expect("the close is noticed");
    }

    #[tokio::test]
    async fn pipelined_bytes_are_not_a_close_and_are_left_unread() {
        let (mut client, server) = pair();
        let mut gone = watcher(&server);
        client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(200), gone.wait()).await.is_err());
        let mut buffer = [0u8; 3];
        assert_eq!(server.peek(&mut buffer).unwrap(), 3, "the bytes are still there");
        client.shutdown(Shutdown::Write).unwrap();
        tokio::time::timeout(Duration::from_secs(5), gone.wait()).await.expect("the half-close is noticed");
    }

    #[tokio::test]
    async fn the_connection_stays_open_after_the_watcher_is_dropped() {
        let (mut client, mut server) = pair();
        drop(watcher(&server));
        server.write_all(b"ok").unwrap();
        let mut buffer = [0u8; 2];
        std::io::Read::read_exact(&mut client, &mut buffer).unwrap();
        assert_eq!(&buffer, b"ok");
    }

    #[tokio::test]
    async fn never_does_not_fire() {
        let mut never = ClientGone::never();
        assert!(tokio::time::timeout(Duration::from_millis(50), never.wait()).await.is_err());
    }
}

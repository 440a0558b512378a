//! A TCP connection that can move to another runtime from under the TLS
//! layer wrapped around it: a tokio socket belongs to the runtime whose
//! reactor registered it, and an HTTPS connection is only known to be an
//! API call (for the API runtime) or an event stream (for the streams'
//! runtime) after its handshake and request head.

use std::io::{self, ErrorKind, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_rustls::server::TlsStream;

/// A connection that can move to another runtime.
pub trait Movable {
    /// Registers the connection with `runtime`'s reactor instead of the
    /// current one; it is then to be used only from tasks of `runtime`.
    fn move_to(&mut self, runtime: &Handle) -> io::Result<()>;
}

/// A TCP connection that [`Movable::move_to`] can hand to another runtime.
pub struct Socket(Option<TcpStream>);

impl Movable for Socket {
    fn move_to(&mut self, runtime: &Handle) -> io::Result<()> {
        let socket = self.0.take().ok_or(ErrorKind::NotConnected)?.into_std()?;
        let _entered = runtime.enter();
        self.0 = Some(TcpStream::from_std(socket)?);
        Ok(())
    }
}

impl Movable for TlsStream<Socket> {
    fn move_to(&mut self, runtime: &Handle) -> io::Result<()> {
        self.get_mut().0.move_to(runtime)
    }
}

impl Socket {
    /// Wraps a connection registered with the current runtime.
    pub fn new(socket: TcpStream) -> Self {
        Self(Some(socket))
    }

    fn socket(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.0.as_mut().map(Pin::new).ok_or_else(|| ErrorKind::NotConnected.into())
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().socket()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().socket()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().socket()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().socket()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().socket()?.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_moved_connection_works_once_the_runtime_it_left_is_gone() {
        let runtime =
            || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (first, second) = (runtime(), runtime());
        let (mut socket, peer) = first.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (socket, _) = listener.accept().await.unwrap();
            (Socket::new(socket), peer.into_std().unwrap())
        });
        socket.move_to(second.handle()).unwrap();
        drop(first);
        second.block_on(async move {
            let mut peer = TcpStream::from_std(peer).unwrap();
            socket.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            peer.read_exact(&mut got).await.unwrap();
            peer.write_all(b"pong").await.unwrap();
            socket.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"pong");
        });
    }
}

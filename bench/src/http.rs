//! A minimal HTTP/1.1 keep-alive client and a streaming decoder for SSE
//! bodies (chunked or not). Enough to load a server hard without a general
//! purpose client's overhead on the same two cores. With `--tls-ca`, every
//! connection speaks HTTP/1.1 over TLS (to the name `localhost`); with
//! `--http2` as well, event streams speak HTTP/2 (one per connection).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

/// A connection, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The CA file and connectors (HTTP/1.1, HTTP/2) when connections use TLS.
static TLS: OnceLock<(PathBuf, TlsConnector, TlsConnector)> = OnceLock::new();
/// Event streams per HTTP/2 connection, when they speak HTTP/2.
static HTTP2: OnceLock<usize> = OnceLock::new();

/// Makes every connection of this process use TLS, trusting the CA in `ca`.
pub fn use_tls(ca: &Path) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut h2 = config.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    h2.alpn_protocols = vec![b"h2".to_vec()];
    let connectors = (TlsConnector::from(Arc::new(config)), TlsConnector::from(Arc::new(h2)));
    let _ = TLS.set((ca.to_owned(), connectors.0, connectors.1));
    Ok(())
}

/// Makes event streams speak HTTP/2 (over TLS: [`use_tls`] first),
/// `streams` on each connection.
pub fn use_http2(streams: usize) -> Result<(), String> {
    TLS.get().ok_or("--http2 needs --tls-ca (browsers speak HTTP/2 over TLS only)")?;
    let _ = HTTP2.set(streams.max(1));
    Ok(())
}

/// Event streams per HTTP/2 connection, if they speak HTTP/2.
pub fn http2() -> Option<usize> {
    HTTP2.get().copied()
}

/// The CA file, if connections use TLS (for client processes).
pub fn tls_ca() -> Option<&'static Path> {
    TLS.get().map(|(path, _, _)| path.as_path())
}

/// Wraps a connected socket in TLS if this process uses it.
pub async fn secure(tcp: TcpStream) -> io::Result<Box<dyn Io>> {
    match TLS.get() {
        Some((_, connector, _)) => {
            let name = ServerName::try_from("localhost").map_err(|e| bad(e.to_string()))?;
            Ok(Box::new(connector.connect(name, tcp).await?))
        }
        None => Ok(Box::new(tcp)),
    }
}

/// An HTTP/2 connection over TLS on `tcp`, driven by a task of its own.
pub async fn connect_h2(tcp: TcpStream) -> io::Result<h2::client::SendRequest<bytes::Bytes>> {
    let (_, _, connector) = TLS.get().ok_or_else(|| bad("HTTP/2 without TLS"))?;
    let name = ServerName::try_from("localhost").map_err(|e| bad(e.to_string()))?;
    let tls = connector.connect(name, tcp).await?;
    let (send, connection) = h2::client::handshake(tls).await.map_err(h2_error)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

/// Opens an event stream on an HTTP/2 connection: its status and body.
pub async fn open_h2(
    send: h2::client::SendRequest<bytes::Bytes>,
    path: &str,
) -> io::Result<(u16, h2::RecvStream)> {
    let mut send = send.ready().await.map_err(h2_error)?;
    let request = http::Request::get(format!("https://localhost{path}"))
        .header("accept", "text/event-stream")
        .body(())
        .map_err(|e| bad(e.to_string()))?;
    let (response, _) = send.send_request(request, true).map_err(h2_error)?;
    let response = response.await.map_err(h2_error)?;
    Ok((response.status().as_u16(), response.into_body()))
}

fn h2_error(e: h2::Error) -> io::Error {
    bad(e.to_string())
}

/// One keep-alive connection.
pub struct Conn {
    stream: Box<dyn Io>,
    buf: Vec<u8>,
    host: String,
}

/// A response: status and body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let stream = secure(stream).await?;
        Ok(Self { stream, buf: Vec::with_capacity(4096), host: addr.to_string() })
    }

    /// Sends a request and reads the whole response (Content-Length bodies).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: &[u8],
    ) -> io::Result<Response> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        if let Some(token) = bearer {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.stream.write_all(&request).await?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) =
                response.parse(&self.buf).map_err(|e| bad(e.to_string()))?
            {
                let status = response.code.unwrap_or(0);
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                while self.buf.len() < len + length {
                    self.fill().await?;
                }
                let body = self.buf[len..len + length].to_vec();
                self.buf.drain(..len + length);
                return Ok(Response { status, body });
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Reads the head of a streaming response from `stream`: the status, whether
/// the body is chunked, and the body bytes already read.
pub async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<(u16, bool, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the head"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) =
            response.parse(&buf).map_err(|e| bad(e.to_string()))?
        {
            let chunked = response.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("transfer-encoding")
                    && h.value.eq_ignore_ascii_case(b"chunked")
            });
            return Ok((response.code.unwrap_or(0), chunked, buf[len..].to_vec()));
        }
    }
}

/// Turns body bytes into SSE `data:` payloads, undoing chunked encoding.
#[derive(Default)]
pub struct SseDecoder {
    chunked: bool,
    /// Bytes left in the current chunk; `None` while reading a size line.
    left: Option<usize>,
    size_line: Vec<u8>,
    /// CRLF bytes still to skip after a chunk.
    skip: usize,
    line: Vec<u8>,
    /// The last `id:` seen, for resuming.
    pub last_id: Option<String>,
}

impl SseDecoder {
    pub fn new(chunked: bool) -> Self {
        Self { chunked, ..Self::default() }
    }

    /// Starts a new response body, keeping the last id.
    pub fn restart(&mut self, chunked: bool) {
        let last_id = self.last_id.take();
        *self = Self { chunked, last_id, ..Self::default() };
    }

    /// Feeds body bytes; calls `on_data` with each complete `data:` value.
    pub fn feed(&mut self, mut bytes: &[u8], on_data: &mut impl FnMut(&[u8])) {
        if !self.chunked {
            self.lines(bytes, on_data);
            return;
        }
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            match self.left {
                Some(left) => {
                    let n = left.min(bytes.len());
                    let (data, rest) = bytes.split_at(n);
                    self.lines(data, on_data);
                    bytes = rest;
                    self.left = if left == n { None } else { Some(left - n) };
                    if left == n {
                        self.skip = 2;
                    }
                }
                None => {
                    let end = bytes.iter().position(|&b| b == b'\n');
                    let (part, rest) = match end {
                        Some(i) => (&bytes[..i], &bytes[i + 1..]),
                        None => (bytes, &[][..]),
                    };
                    self.size_line.extend_from_slice(part);
                    bytes = rest;
                    if end.is_some() {
                        let text = String::from_utf8_lossy(&self.size_line);
                        let hex = text.trim().split(';').next().unwrap_or("");
                        let size = usize::from_str_radix(hex, 16).unwrap_or(0);
                        self.size_line.clear();
                        self.left = Some(size);
                        if size == 0 {
                            self.left = None;
                        }
                    }
                }
            }
        }
    }

    fn lines(&mut self, mut bytes: &[u8], on_data: &mut impl FnMut(&[u8])) {
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&bytes[..i]);
            // A field's value follows its colon and one optional space.
            let value = |field: &[u8]| {
                let value = self.line.strip_prefix(field)?;
                Some(value.strip_prefix(b" ").unwrap_or(value))
            };
            if let Some(data) = value(b"data:") {
                on_data(data);
            } else if let Some(id) = value(b"id:") {
                self.last_id = Some(String::from_utf8_lossy(id).into_owned());
            }
            self.line.clear();
            bytes = &bytes[i + 1..];
        }
        self.line.extend_from_slice(bytes);
    }
}

/// The value of `"n":` in a bench payload such as `{"n":12}`.
pub fn payload_number(data: &[u8]) -> Option<usize> {
    let at = data.windows(4).position(|w| w == b"\"n\":")? + 4;
    let digits = data[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&data[at..at + digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunked: bool, parts: &[&[u8]]) -> Vec<usize> {
        let mut decoder = SseDecoder::new(chunked);
        let mut seen = Vec::new();
        for part in parts {
            decoder.feed(part, &mut |d| seen.push(payload_number(d).unwrap()));
        }
        seen
    }

    #[test]
    fn plain_and_chunked_bodies_split_anywhere() {
        // Broker writes no space after the colon; nchan writes one.
        let frames =
            b"retry:3000\n\nid:1\nevent:bench\ndata:{\"n\":7}\n\n:\n\nid: 2\ndata: {\"n\":42}\n\n";
        for split in 0..frames.len() {
            assert_eq!(decode(false, &[&frames[..split], &frames[split..]]), [7, 42]);
        }
        let mut chunked = Vec::new();
        for piece in frames.chunks(17) {
            chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            chunked.extend_from_slice(piece);
            chunked.extend_from_slice(b"\r\n");
        }
        for split in 0..chunked.len() {
            assert_eq!(decode(true, &[&chunked[..split], &chunked[split..]]), [7, 42], "{split}");
        }
    }
}

//! Just enough HTTP/1.1 for Stream Load, over any async byte stream.
//!
//! Stream Load needs control that general clients do not give: a request head sent on its
//! own with `Expect: 100-continue`, a wait for `100 Continue` (or a final answer) before the
//! body, redirects followed by hand with `Authorization` sent again. The dev endpoint and
//! the metrics server use the same framing from the server side.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("connection closed by peer")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP: {0}")]
    Malformed(String),
    #[error("HTTP head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("HTTP body larger than the {0} bytes allowed")]
    BodyTooLarge(usize),
}

/// Headers in arrival order; names compared case-insensitively.
#[derive(Clone, Debug, Default)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How the message body is delimited.
    pub fn body_length(&self) -> BodyLength {
        if self
            .get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            return BodyLength::Chunked;
        }
        match self
            .get("content-length")
            .map(|v| v.trim().parse::<usize>())
        {
            Some(Ok(n)) => BodyLength::Exactly(n),
            _ => BodyLength::UntilClose,
        }
    }

    /// Whether the peer asked to close the connection after this message.
    pub fn wants_close(&self) -> bool {
        self.get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    Exactly(usize),
    Chunked,
    UntilClose,
}

#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Headers,
}

#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    pub headers: Headers,
}

impl RequestHead {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The value of a query parameter (no percent-decoding: labels need none).
    pub fn query(&self, name: &str) -> Option<&str> {
        let q = self.target.split_once('?')?.1;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// A byte stream with a read buffer, framing HTTP/1.1 messages.
pub struct Conn<S> {
    io: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(io: S) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(4096),
        }
    }

    /// Bytes already read from the peer but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    async fn fill(&mut self) -> Result<usize, Http1Error> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8192);
        }
        Ok(self.io.read_buf(&mut self.buf).await?)
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Http1Error> {
        self.io.write_all(bytes).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), Http1Error> {
        self.io.flush().await?;
        Ok(())
    }

    /// Reads one response head, informational (1xx) ones included.
    pub async fn read_response_head(&mut self) -> Result<ResponseHead, Http1Error> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let head = ResponseHead {
                        status: resp.code.unwrap_or(0),
                        headers: collect(resp.headers),
                    };
                    self.buf.advance(n);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(Http1Error::Malformed(e.to_string())),
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Http1Error::HeadTooLarge);
            }
            if self.fill().await? == 0 {
                return Err(Http1Error::Closed);
            }
        }
    }

    /// Reads one request head; `None` when the peer closed cleanly between requests.
    pub async fn read_request_head(&mut self) -> Result<Option<RequestHead>, Http1Error> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let head = RequestHead {
                        method: req.method.unwrap_or("").to_owned(),
                        target: req.path.unwrap_or("").to_owned(),
                        headers: collect(req.headers),
                    };
                    self.buf.advance(n);
                    return Ok(Some(head));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(Http1Error::Malformed(e.to_string())),
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Http1Error::HeadTooLarge);
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Http1Error::Closed)
                };
            }
        }
    }

    /// Reads a message body of at most `limit` bytes.
    pub async fn read_body(&mut self, len: BodyLength, limit: usize) -> Result<Bytes, Http1Error> {
        match len {
            BodyLength::Exactly(n) => {
                if n > limit {
                    return Err(Http1Error::BodyTooLarge(limit));
                }
                while self.buf.len() < n {
                    if self.buf.capacity() < n {
                        self.buf.reserve(n - self.buf.len());
                    }
                    if self.fill().await? == 0 {
                        return Err(Http1Error::Closed);
                    }
                }
                Ok(self.buf.split_to(n).freeze())
            }
            BodyLength::UntilClose => {
                while self.fill().await? != 0 {
                    if self.buf.len() > limit {
                        return Err(Http1Error::BodyTooLarge(limit));
                    }
                }
                Ok(self.buf.split().freeze())
            }
            BodyLength::Chunked => self.read_chunked(limit).await,
        }
    }

    async fn read_line(&mut self) -> Result<String, Http1Error> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf) {
                let line = self.buf.split_to(i + 1);
                return Ok(String::from_utf8_lossy(&line).trim_end().to_owned());
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Http1Error::HeadTooLarge);
            }
            if self.fill().await? == 0 {
                return Err(Http1Error::Closed);
            }
        }
    }

    async fn read_chunked(&mut self, limit: usize) -> Result<Bytes, Http1Error> {
        let mut out = BytesMut::new();
        loop {
            let line = self.read_line().await?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| Http1Error::Malformed(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                while !self.read_line().await?.is_empty() {}
                return Ok(out.freeze());
            }
            if out.len() + size > limit {
                return Err(Http1Error::BodyTooLarge(limit));
            }
            while self.buf.len() < size + 2 {
                if self.fill().await? == 0 {
                    return Err(Http1Error::Closed);
                }
            }
            out.extend_from_slice(&self.buf[..size]);
            self.buf.advance(size + 2);
        }
    }
}

fn collect(h: &[httparse::Header<'_>]) -> Headers {
    Headers(
        h.iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    )
}

/// Writes a complete response with a body and `Content-Length`.
pub fn response(status: u16, reason: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn conn_over(input: &'static [u8]) -> Conn<tokio::io::DuplexStream> {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            // Dribble the input a few bytes at a time: framing must not depend on read sizes.
            for piece in input.chunks(3) {
                b.write_all(piece).await.unwrap();
            }
        });
        Conn::new(a)
    }

    #[tokio::test]
    async fn reads_a_continue_then_a_final_response_with_a_chunked_body() {
        let mut c = conn_over(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(c.read_response_head().await.unwrap().status, 100);
        let head = c.read_response_head().await.unwrap();
        assert_eq!(head.status, 200);
        let body = c.read_body(head.headers.body_length(), 1024).await.unwrap();
        assert_eq!(&body[..], b"{\"a\":1}");
    }

    #[tokio::test]
    async fn reads_back_to_back_requests_on_one_connection() {
        let mut c = conn_over(
            b"PUT /api/db/t/_stream_load?x=1 HTTP/1.1\r\nContent-Length: 3\r\nlabel: l1\r\n\r\nabcGET /api/db/get_load_state?label=l1 HTTP/1.1\r\n\r\n",
        )
        .await;
        let h = c.read_request_head().await.unwrap().unwrap();
        assert_eq!(
            (h.method.as_str(), h.path()),
            ("PUT", "/api/db/t/_stream_load")
        );
        assert_eq!(h.headers.get("LABEL"), Some("l1"));
        assert_eq!(
            &c.read_body(h.headers.body_length(), 10).await.unwrap()[..],
            b"abc"
        );
        let h = c.read_request_head().await.unwrap().unwrap();
        assert_eq!(h.query("label"), Some("l1"));
        assert!(c.read_request_head().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn refuses_a_body_over_the_limit() {
        let mut c = conn_over(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n").await;
        let h = c.read_response_head().await.unwrap();
        assert!(matches!(
            c.read_body(h.headers.body_length(), 10).await,
            Err(Http1Error::BodyTooLarge(10))
        ));
    }
}

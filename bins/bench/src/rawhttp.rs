//! A minimal keep-alive HTTP/1.1 client for load generation: requests are
//! written from prepared bytes and answers parsed just enough to find their
//! status and length, so the load generator costs as little CPU as the
//! baseline's PostgreSQL client does on this shared machine.

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One connection to `host:port`.
pub(crate) struct Connection {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl Connection {
    pub(crate) async fn open(address: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            host: address.to_owned(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// POSTs `body` with `headers` and returns the status code.
    pub(crate) async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<u16> {
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).await?;
        self.stream.write_all(body).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> anyhow::Result<u16> {
        self.buf.clear();
        let header_end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..header_end])?;
        let status: u16 = head.get(9..12).context("short status line")?.parse()?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())
                    .flatten()
            })
            .context("no content-length")?;
        let mut have = self.buf.len() - header_end;
        while have < length {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed mid-body");
            }
            have += n;
        }
        Ok(status)
    }
}

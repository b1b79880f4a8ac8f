//! A minimal etcd v3 client over etcd's JSON gateway (`/v3/kv/*`, `/v3/lease/*`,
//! `/v3/watch`, in every etcd since 3.3): keys and values travel base64-encoded; a watch is
//! one streamed response of newline-separated JSON objects.
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// How long one request may take before the NVA counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct Etcd {
    /// host:port of the gateway (etcd's client URL).
    addr: String,
}

/// A key and value under the prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
}

/// One change a watch reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(Kv),
    Delete(String),
}

#[derive(Deserialize)]
struct RawKv {
    key: String,
    #[serde(default)]
    value: String,
}

fn decode(s: &str) -> anyhow::Result<Vec<u8>> {
    B64.decode(s).context("etcd: bad base64")
}

fn kv(raw: RawKv) -> anyhow::Result<Kv> {
    Ok(Kv {
        key: String::from_utf8(decode(&raw.key)?).context("etcd: key not UTF-8")?,
        value: decode(&raw.value)?,
    })
}

/// The end of the range of keys starting with `prefix` (etcd's convention).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

impl Etcd {
    /// `url`: `http://host:port`.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let addr = url
            .strip_prefix("http://")
            .with_context(|| format!("etcd endpoint {url:?}: want http://host:port"))?;
        Ok(Self {
            addr: addr.trim_end_matches('/').to_string(),
        })
    }

    async fn open(
        &self,
        path: &str,
        body: Value,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .context("etcd: connect timed out")?
            .with_context(|| format!("etcd: connecting to {}", self.addr))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::post(path)
            .header("host", &self.addr)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
        let resp = tokio::time::timeout(TIMEOUT, sender.send_request(req))
            .await
            .context("etcd: request timed out")??;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.into_body().collect().await?.to_bytes();
            bail!(
                "etcd {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&text)
            );
        }
        Ok(resp)
    }

    async fn call(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let resp = self.open(path, body).await?;
        let bytes = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
            .await
            .context("etcd: reply timed out")??
            .to_bytes();
        serde_json::from_slice(&bytes).with_context(|| format!("etcd {path}: reply not JSON"))
    }

    /// A lease of `ttl` seconds: keys put with it go when it is not kept alive.
    pub async fn grant(&self, ttl: u64) -> anyhow::Result<String> {
        let r = self.call("/v3/lease/grant", json!({ "TTL": ttl })).await?;
        r["ID"]
            .as_str()
            .map(str::to_string)
            .context("etcd: lease grant without ID")
    }

    pub async fn keep_alive(&self, lease: &str) -> anyhow::Result<()> {
        let r = self
            .call("/v3/lease/keepalive", json!({ "ID": lease }))
            .await?;
        match r["result"]["TTL"].as_str() {
            Some(ttl) if ttl != "0" => Ok(()),
            _ => bail!("etcd: lease {lease} expired"),
        }
    }

    pub async fn put(&self, key: &str, value: &[u8], lease: &str) -> anyhow::Result<()> {
        let body = json!({ "key": B64.encode(key), "value": B64.encode(value), "lease": lease });
        self.call("/v3/kv/put", body).await.map(drop)
    }

    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.call("/v3/kv/deleterange", json!({ "key": B64.encode(key) }))
            .await
            .map(drop)
    }

    /// Every key under `prefix`, and the store's revision they are as of.
    pub async fn range(&self, prefix: &str) -> anyhow::Result<(Vec<Kv>, u64)> {
        let body =
            json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) });
        let r = self.call("/v3/kv/range", body).await?;
        let revision = r["header"]["revision"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .context("etcd: range without revision")?;
        let kvs: Vec<RawKv> = serde_json::from_value(r["kvs"].clone()).unwrap_or_default();
        Ok((
            kvs.into_iter().map(kv).collect::<anyhow::Result<_>>()?,
            revision,
        ))
    }

    /// Watches `prefix` from `revision`.
    pub async fn watch(&self, prefix: &str, revision: u64) -> anyhow::Result<Watch> {
        let body = json!({ "create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
            "start_revision": revision.to_string(),
        }});
        Ok(Watch {
            body: self.open("/v3/watch", body).await?.into_body(),
            buffer: Vec::new(),
        })
    }
}

/// An open watch: one streamed response.
pub struct Watch {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

impl Watch {
    /// The next non-empty batch of changes; `Err` when the stream fails or ends (the caller
    /// resyncs then).
    pub async fn next(&mut self) -> anyhow::Result<Vec<Change>> {
        loop {
            // The gateway writes one JSON object per message: take the complete ones.
            let mut stream =
                serde_json::Deserializer::from_slice(&self.buffer).into_iter::<Value>();
            let mut batch = Vec::new();
            let mut consumed = 0;
            while let Some(Ok(message)) = stream.next() {
                consumed = stream.byte_offset();
                batch.extend(changes(&message["result"])?);
            }
            self.buffer.drain(..consumed);
            if !batch.is_empty() {
                return Ok(batch);
            }
            let frame = self
                .body
                .frame()
                .await
                .context("etcd: watch stream ended")?
                .context("etcd: watch stream")?;
            if let Some(data) = frame.data_ref() {
                self.buffer.extend_from_slice(data);
            }
        }
    }
}

/// The changes of one watch message.
fn changes(result: &Value) -> anyhow::Result<Vec<Change>> {
    let Some(events) = result["events"].as_array() else {
        return Ok(Vec::new());
    };
    events
        .iter()
        .map(|e| {
            let raw: RawKv = serde_json::from_value(e["kv"].clone()).context("etcd: event kv")?;
            let kv = kv(raw)?;
            Ok(match e["type"].as_str() {
                Some("DELETE") => Change::Delete(kv.key),
                _ => Change::Put(kv),
            })
        })
        .collect()
}

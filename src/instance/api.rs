//! HTTP calls to one OpenCode Instance on 127.0.0.1, with Basic auth and a timeout on every request.
//!
//! A request sent before OpenCode finishes starting can hang forever (OpenCode 1.x accepts the
//! connection and answers nothing until its bootstrap is done), so every
//! call here has a per-request timeout and readiness polls use short ones. The password is held as
//! a [`Secret`] and only ever placed in the Authorization header. No proxy is ever used.

use std::time::Duration;

use serde::Deserialize;

use crate::secrets::Secret;

/// The one HTTP client of the process: its pool keeps connections to each Instance alive between
/// calls (a Gateway call reuses one instead of connecting and closing each time). Credentials
/// are per request, so sharing the pool shares nothing between Projects.
fn shared_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            // Building a client with only these options cannot fail except on a broken TLS
            // backend, which is not built in.
            .expect("building an HTTP client")
    })
}

/// A client for one Instance.
#[derive(Clone)]
pub struct InstanceApi {
    http: reqwest::Client,
    base: String,
    password: Secret,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("the server refused the credentials (HTTP 401)")]
    Unauthorized,
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("unexpected answer: {0}")]
    Body(String),
}

/// What `GET /config/providers` says the Instance will use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderInfo {
    /// Provider ids that are configured and usable.
    pub providers: Vec<String>,
    /// The default `provider/model` the Instance picks, when there is one.
    pub default_model: Option<String>,
}

impl InstanceApi {
    pub fn new(port: u16, password: Secret) -> InstanceApi {
        InstanceApi {
            http: shared_client().clone(),
            base: format!("http://127.0.0.1:{port}"),
            password,
        }
    }

    /// `GET /global/health`: `Ok` when the server answers `healthy: true`.
    pub async fn health(&self, timeout: Duration) -> Result<(), ApiError> {
        #[derive(Deserialize)]
        struct Health {
            healthy: bool,
        }
        let health: Health = self.get_json("/global/health", timeout).await?;
        if health.healthy {
            Ok(())
        } else {
            Err(ApiError::Body("healthy is false".into()))
        }
    }

    /// `GET /config/providers`: which providers and default model the Instance will use.
    pub async fn providers(&self, timeout: Duration) -> Result<ProviderInfo, ApiError> {
        #[derive(Deserialize)]
        struct Provider {
            id: String,
        }
        #[derive(Deserialize)]
        struct Providers {
            providers: Vec<Provider>,
            #[serde(default)]
            default: std::collections::BTreeMap<String, String>,
        }
        let answer: Providers = self.get_json("/config/providers", timeout).await?;
        let providers: Vec<String> = answer.providers.into_iter().map(|p| p.id).collect();
        // The configured `model` wins when its provider is usable; else the first provider's default.
        #[derive(Deserialize)]
        struct Config {
            #[serde(default)]
            model: Option<String>,
        }
        let configured = self
            .get_json::<Config>("/config", timeout)
            .await
            .ok()
            .and_then(|c| c.model)
            .filter(|m| {
                m.split_once('/')
                    .is_some_and(|(p, _)| providers.iter().any(|id| id == p))
            });
        let default_model = configured.or_else(|| {
            providers
                .iter()
                .find_map(|id| answer.default.get(id).map(|model| format!("{id}/{model}")))
        });
        Ok(ProviderInfo {
            providers,
            default_model,
        })
    }

    /// `POST /global/dispose`: OpenCode ends what its tools started (best effort before a stop).
    pub async fn dispose(&self, timeout: Duration) -> Result<(), ApiError> {
        let request = self.http.post(format!("{}/global/dispose", self.base));
        self.send(request, timeout).await.map(drop)
    }

    /// Any JSON call, for the gateway's session tools. A 204 gives `null`. OpenCode answers unknown
    /// routes with its web UI (200, HTML), which is reported as an error rather than passed on.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<serde_json::Value, ApiError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(request, timeout).await?;
        if response.status().as_u16() == 204 {
            return Ok(serde_json::Value::Null);
        }
        let is_json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let bytes = tokio::time::timeout(timeout, response.bytes())
            .await
            .map_err(|_| ApiError::Timeout(timeout))?
            .map_err(|err| ApiError::Body(err.to_string()))?;
        if !is_json {
            return Err(ApiError::Body(format!(
                "{path} is not an OpenCode API route"
            )));
        }
        serde_json::from_slice(&bytes).map_err(|err| ApiError::Body(format!("{path}: {err}")))
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<T, ApiError> {
        let response = self
            .send(self.http.get(format!("{}{path}", self.base)), timeout)
            .await?;
        let bytes = tokio::time::timeout(timeout, response.bytes())
            .await
            .map_err(|_| ApiError::Timeout(timeout))?
            .map_err(|err| ApiError::Body(err.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|err| ApiError::Body(format!("{path}: {err}")))
    }

    /// `GET /event`: the Instance's event stream (Server-Sent Events), open until either side
    /// closes it. Only connecting has a timeout.
    pub(crate) async fn events(&self) -> Result<reqwest::Response, ApiError> {
        let request = self
            .http
            .get(format!("{}/event", self.base))
            .basic_auth("opencode", Some(self.password.expose()));
        let connect = Duration::from_secs(5);
        let response = tokio::time::timeout(connect, request.send())
            .await
            .map_err(|_| ApiError::Timeout(connect))?
            .map_err(|err| ApiError::Connect(without_url(&err)))?;
        match response.status().as_u16() {
            200..=299 => Ok(response),
            401 => Err(ApiError::Unauthorized),
            status => Err(ApiError::Status {
                status,
                body: String::new(),
            }),
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, ApiError> {
        let request = request
            .basic_auth("opencode", Some(self.password.expose()))
            .timeout(timeout);
        let response = request.send().await.map_err(|err| {
            if err.is_timeout() {
                ApiError::Timeout(timeout)
            } else {
                ApiError::Connect(without_url(&err))
            }
        })?;
        match response.status().as_u16() {
            200..=299 => Ok(response),
            401 => Err(ApiError::Unauthorized),
            status => {
                let body = response.text().await.unwrap_or_default();
                Err(ApiError::Status {
                    status,
                    body: body.chars().take(1000).collect(),
                })
            }
        }
    }
}

/// reqwest's error text without the URL (which never holds a secret here, but keeps messages short).
fn without_url(err: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(err);
    let mut last = err.to_string();
    while let Some(e) = source {
        last = e.to_string();
        source = e.source();
    }
    last
}

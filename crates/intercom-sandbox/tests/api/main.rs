//! Drives the sandbox over real HTTP with reqwest and checks Intercom's statuses and bodies.

mod attributes;
mod auth;
mod companies;
mod contacts;
mod events;
mod faults;
mod inspect;
mod outages;
mod rate_limit;
mod search;
mod tidy;

use intercom_sandbox::{Sandbox, SandboxConfig, SandboxHandle};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const TOKEN: &str = "test-token";

/// A running sandbox and a client that sends what a well-behaved Intercom client sends.
pub struct Api {
    pub sandbox: SandboxHandle,
    pub client: reqwest::Client,
}

/// One answer: status, headers, and the body as JSON (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    /// The single error of an `error.list`: (code, message).
    pub fn error(&self) -> (&str, &str) {
        assert_eq!(
            self.body["type"], "error.list",
            "not an error.list: {}",
            self.text
        );
        let error = &self.body["errors"][0];
        (
            error["code"].as_str().unwrap_or_default(),
            error["message"].as_str().unwrap_or_default(),
        )
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Api {
    pub async fn start() -> Api {
        Api::with(SandboxConfig::new(TOKEN)).await
    }

    pub async fn with(config: SandboxConfig) -> Api {
        let sandbox = Sandbox::start(config).await.expect("sandbox starts");
        Api {
            sandbox,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.base_url())
    }

    /// A request with the right token, Accept and Intercom-Version headers.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(TOKEN)
            .header("Accept", "application/json")
            .header("Intercom-Version", "2.14")
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("a response");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Answer {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, None).await
    }

    /// Create a custom data attribute, asserting success.
    pub async fn attribute(&self, model: &str, name: &str, data_type: &str) {
        let answer = self
            .post(
                "/data_attributes",
                json!({"name": name, "model": model, "data_type": data_type}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    }

    /// Create a user contact with this external id, asserting success; returns its id.
    pub async fn user(&self, external_id: &str) -> String {
        let answer = self
            .post(
                "/contacts",
                json!({"role": "user", "external_id": external_id, "email": format!("{external_id}@example.com")}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        answer.body["id"].as_str().expect("an id").to_owned()
    }
}

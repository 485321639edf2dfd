//! Bearer auth, Accept, Intercom-Version, invalid JSON, unknown routes.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::Api;

#[tokio::test]
async fn wrong_or_missing_token_is_401_without_rate_limit_headers() {
    let api = Api::start().await;
    for token in [Some("wrong"), None] {
        let mut request = api
            .client
            .get(api.url("/contacts/abc"))
            .header("Accept", "application/json");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = api.send(request).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.error(), ("unauthorized", "Access Token Invalid"));
        assert!(answer.body["request_id"].is_string());
        assert_eq!(answer.header("x-ratelimit-limit"), None);
        assert_eq!(answer.header("x-ratelimit-remaining"), None);
    }
    // A valid token gets the headers.
    let answer = api.get("/contacts/abc").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.header("x-ratelimit-limit"), Some("1666"));
}

#[tokio::test]
async fn accept_must_name_application_json() {
    let api = Api::start().await;
    for accept in [None, Some("text/html"), Some("*/*")] {
        let mut request = api
            .client
            .get(api.url("/data_attributes"))
            .bearer_auth(crate::TOKEN);
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        let answer = api.send(request).await;
        assert_eq!(answer.status, StatusCode::NOT_ACCEPTABLE, "{accept:?}");
        assert_eq!(
            answer.error(),
            (
                "media_type_not_acceptable",
                "The Accept header should send a media type of application/json"
            )
        );
    }
}

#[tokio::test]
async fn invalid_json_is_400_parameter_invalid() {
    let api = Api::start().await;
    let answer = api
        .send(
            api.request(Method::POST, "/contacts")
                .header("Content-Type", "application/json")
                .body("{\"email\": "),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error().0, "parameter_invalid");
    assert!(api.sandbox.snapshot().contacts.is_empty());
}

#[tokio::test]
async fn unknown_intercom_version_is_refused_and_versions_are_recorded() {
    let api = Api::start().await;
    let answer = api
        .send(
            api.client
                .get(api.url("/data_attributes"))
                .bearer_auth(crate::TOKEN)
                .header("Accept", "application/json")
                .header("Intercom-Version", "9.9"),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error().0, "intercom_version_invalid");
    assert_eq!(api.get("/data_attributes").await.status, StatusCode::OK);
    let versions = api.sandbox.snapshot().counters.intercom_versions;
    assert_eq!(versions.get("2.14"), Some(&1));
}

#[tokio::test]
async fn unknown_routes_and_methods_are_404() {
    let api = Api::start().await;
    let answer = api.get("/nothing/here").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error().0, "not_found");
    let answer = api.call(Method::PATCH, "/events", Some(json!({}))).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

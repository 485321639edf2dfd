//! Data attributes: list, create, Intercom's creation rules.

use reqwest::StatusCode;
use serde_json::json;

use crate::Api;

#[tokio::test]
async fn create_then_list() {
    let api = Api::start().await;
    let answer = api
        .post(
            "/data_attributes",
            json!({"name": "Mithril Shirt", "model": "company", "data_type": "string", "description": "d"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let created = &answer.body;
    assert_eq!(created["type"], "data_attribute");
    assert_eq!(created["full_name"], "custom_attributes.Mithril Shirt");
    assert_eq!(created["custom"], true);
    assert_eq!(created["archived"], false);
    assert_eq!(created["model"], "company");
    assert!(created["id"].is_u64());

    let list = api.get("/data_attributes?model=company").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["type"], "list");
    let data = list.body["data"].as_array().unwrap();
    assert!(
        data.iter()
            .any(|a| a["name"] == "Mithril Shirt" && a["custom"] == true)
    );
    assert!(
        data.iter()
            .any(|a| a["name"] == "company_id" && a["custom"] == false)
    );
    assert!(data.iter().all(|a| a["model"] == "company"));
    let contacts = api.get("/data_attributes?model=contact").await;
    let data = contacts.body["data"].as_array().unwrap();
    assert!(!data.iter().any(|a| a["name"] == "Mithril Shirt"));

    let answer = api.get("/data_attributes?model=conversation").await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn names_are_unique_across_models_with_intercoms_messages() {
    let api = Api::start().await;
    api.attribute("company", "The One Ring", "string").await;
    let again = api
        .post(
            "/data_attributes",
            json!({"name": "The One Ring", "model": "company", "data_type": "integer"}),
        )
        .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        again.error(),
        (
            "parameter_invalid",
            "You already have 'The One Ring' in your company data. To save this as new company \
             data, use a different name."
        )
    );
    let other_model = api
        .post(
            "/data_attributes",
            json!({"name": "The One Ring", "model": "contact", "data_type": "string"}),
        )
        .await;
    assert_eq!(
        other_model.error().1,
        "You already have 'The One Ring' in your company data. To save this as new people \
         data, use a different name."
    );
    // The type stays what it was.
    let state = api.sandbox.snapshot();
    assert_eq!(state.data_attributes.len(), 1);
    assert_eq!(
        state
            .data_attribute("company", "The One Ring")
            .unwrap()
            .data_type,
        "string"
    );
}

#[tokio::test]
async fn standard_names_bad_names_types_and_models_are_refused() {
    let api = Api::start().await;
    let create = |name: &'static str, model: &'static str, data_type: &'static str| {
        api.post(
            "/data_attributes",
            json!({"name": name, "model": model, "data_type": data_type}),
        )
    };
    let answer = create("name", "contact", "string").await;
    assert_eq!(
        answer.error(),
        (
            "parameter_invalid",
            "'Name' is one of our standard attributes for your people data. To save this as new \
             people data, use a different name."
        )
    );
    let answer = create("!nv@l!d n@me", "contact", "string").await;
    assert_eq!(
        answer.error().1,
        "Your name for this attribute must only contain alphanumeric characters, currency \
         symbols, and hyphens"
    );
    let answer = create("ok", "contact", "text").await;
    assert_eq!(
        answer.error(),
        ("parameter_invalid", "Data Type isn't an option")
    );
    let answer = create("ok", "user", "string").await;
    assert_eq!(
        answer.error().1,
        "The Data Attribute model field must be either contact or company"
    );
    // Letters, digits, spaces, underscores, hyphens and currency symbols are fine.
    assert_eq!(
        create("LTV in € - 30d_x", "contact", "float").await.status,
        StatusCode::OK
    );
    // Options need two or more values.
    let answer = api
        .post(
            "/data_attributes",
            json!({"name": "tier", "model": "contact", "data_type": "options", "options": [{"value": "a"}]}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        api.sandbox
            .snapshot()
            .data_attribute("contact", "tier")
            .is_none()
    );
}

#[tokio::test]
async fn options_attributes_take_only_their_options_and_archived_ones_refuse_writes() {
    let api = Api::start().await;
    let answer = api
        .post(
            "/data_attributes",
            json!({"name": "tier", "model": "contact", "data_type": "options",
                   "options": [{"value": "gold"}, {"value": "silver"}]}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let attribute_id = answer.body["id"].as_u64().unwrap();
    let id = api.user("u1").await;
    let path = format!("/contacts/{id}");
    assert_eq!(
        api.put(&path, json!({"custom_attributes": {"tier": "gold"}}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.put(&path, json!({"custom_attributes": {"tier": "bronze"}}))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    // Archive it; then it no longer takes values, and the type cannot change.
    let answer = api
        .put(
            &format!("/data_attributes/{attribute_id}"),
            json!({"archived": true}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["archived"], true);
    let answer = api
        .put(&path, json!({"custom_attributes": {"tier": "gold"}}))
        .await;
    assert_eq!(answer.error().1, "Custom attribute 'tier' does not exist");
    let answer = api
        .put(
            &format!("/data_attributes/{attribute_id}"),
            json!({"data_type": "string"}),
        )
        .await;
    assert_eq!(answer.error(), ("bad_request", "bad 'data_type' parameter"));
    let answer = api
        .put("/data_attributes/999999", json!({"archived": true}))
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error().0, "field_not_found");
}

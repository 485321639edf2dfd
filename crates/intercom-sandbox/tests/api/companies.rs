//! Companies: upsert by company_id, strict fields, attach / detach / list by Intercom id.

use reqwest::StatusCode;
use serde_json::json;

use crate::Api;

#[tokio::test]
async fn upsert_by_company_id_and_retrieve() {
    let api = Api::start().await;
    api.attribute("company", "account_tier", "string").await;
    let created = api
        .post(
            "/companies",
            json!({"company_id": "acme", "name": "Acme", "plan": "pro", "monthly_spend": 99.99,
                   "custom_attributes": {"account_tier": "gold"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    assert_eq!(created.body["type"], "company");
    assert_eq!(created.body["monthly_spend"], 99, "truncated, not rounded");
    assert_eq!(created.body["plan"]["name"], "pro");
    let id = created.body["id"].as_str().unwrap().to_owned();

    let updated = api
        .post(
            "/companies",
            json!({"company_id": "acme", "name": "Acme Inc"}),
        )
        .await;
    assert_eq!(updated.body["id"], id.as_str(), "same company");
    assert_eq!(updated.body["plan"]["name"], "pro", "untouched fields stay");

    let found = api.get("/companies?company_id=acme").await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(found.body["id"], id.as_str());
    assert_eq!(found.body["name"], "Acme Inc");
    let by_id = api.get(&format!("/companies/{id}")).await;
    assert_eq!(by_id.body["company_id"], "acme");

    for path in [
        "/companies?company_id=nope",
        "/companies/000000000000000000000000",
    ] {
        let answer = api.get(path).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(answer.error(), ("company_not_found", "Company Not Found"));
    }
    assert_eq!(api.sandbox.snapshot().companies.len(), 1);
}

#[tokio::test]
async fn company_writes_are_strict() {
    let api = Api::start().await;
    let answer = api
        .post("/companies", json!({"company_id": "a", "test": 1}))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error(), ("bad_request", "bad 'test' parameter"));
    let answer = api.post("/companies", json!({"name": "no id"})).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let answer = api
        .post(
            "/companies",
            json!({"company_id": "a", "custom_attributes": {"x": 1}}),
        )
        .await;
    assert_eq!(
        answer.error(),
        ("parameter_invalid", "Custom attribute 'x' does not exist")
    );
    let answer = api
        .post(
            "/companies",
            json!({"company_id": "a", "monthly_spend": 3_000_000_000u64}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        api.sandbox.snapshot().companies.is_empty(),
        "nothing applied"
    );
}

#[tokio::test]
async fn attach_needs_the_intercom_id() {
    let api = Api::start().await;
    let contact = api.user("u1").await;
    let company = api.post("/companies", json!({"company_id": "acme"})).await;
    let company_id = company.body["id"].as_str().unwrap().to_owned();
    let path = format!("/contacts/{contact}/companies");

    // The caller's company_id is not what attach takes.
    let answer = api.post(&path, json!({"company_id": "acme"})).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.error(),
        ("parameter_not_found", "company not specified")
    );
    let answer = api.post(&path, json!({"id": "acme"})).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error(), ("company_not_found", "Company Not Found"));
    let answer = api
        .post(
            "/contacts/000000000000000000000000/companies",
            json!({"id": company_id}),
        )
        .await;
    assert_eq!(answer.error(), ("not_found", "User Not Found"));

    let answer = api.post(&path, json!({"id": company_id})).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.body["type"], "company");
    assert_eq!(answer.body["user_count"], 1);
    // Attaching again changes nothing.
    assert_eq!(
        api.post(&path, json!({"id": company_id})).await.status,
        StatusCode::OK
    );

    let list = api.get(&path).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["type"], "list");
    assert_eq!(list.body["data"][0]["company_id"], "acme");
    assert_eq!(list.body["total_count"], 1);
    let contact_json = api.get(&format!("/contacts/{contact}")).await;
    assert_eq!(
        contact_json.body["companies"]["data"][0]["id"],
        company_id.as_str()
    );
    assert_eq!(
        api.sandbox.snapshot().contacts[0].companies,
        vec!["acme".to_owned()]
    );
    // Listing all companies shows only those with users.
    api.post("/companies", json!({"company_id": "lonely"}))
        .await;
    let all = api.get("/companies").await;
    assert_eq!(all.body["total_count"], 1);

    let answer = api.delete(&format!("{path}/{company_id}")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["id"], company_id.as_str());
    assert!(api.sandbox.snapshot().contacts[0].companies.is_empty());
    // Detaching what is not attached, or an unknown company, is 404.
    let answer = api.delete(&format!("{path}/{company_id}")).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let answer = api
        .delete(&format!("{path}/000000000000000000000000"))
        .await;
    assert_eq!(answer.error(), ("company_not_found", "Company Not Found"));
}

//! Contacts: custom attributes must exist and fit their type; identity is unique (409).

use reqwest::StatusCode;
use serde_json::json;

use crate::Api;

#[tokio::test]
async fn create_returns_the_full_contact_and_get_finds_it() {
    let api = Api::start().await;
    api.attribute("contact", "plan_tier", "string").await;
    let answer = api
        .post(
            "/contacts",
            json!({"role": "user", "external_id": "u1", "email": "u1@example.com",
                   "name": "Ada", "signed_up_at": 1_700_000_000, "custom_attributes": {"plan_tier": "gold"}}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let contact = &answer.body;
    assert_eq!(contact["type"], "contact");
    assert_eq!(contact["role"], "user");
    assert_eq!(contact["external_id"], "u1");
    assert_eq!(contact["custom_attributes"], json!({"plan_tier": "gold"}));
    assert_eq!(contact["companies"]["type"], "list");
    let id = contact["id"].as_str().unwrap();
    assert_eq!(id.len(), 24);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));

    let fetched = api.get(&format!("/contacts/{id}")).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.body["email"], "u1@example.com");

    let missing = api.get("/contacts/000000000000000000000000").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error(), ("not_found", "Contact Not Found"));
}

#[tokio::test]
async fn unknown_custom_attribute_rejects_the_whole_request() {
    let api = Api::start().await;
    api.attribute("contact", "known", "string").await;
    let answer = api
        .post(
            "/contacts",
            json!({"external_id": "u1", "custom_attributes": {"known": "x", "ltv": 12}}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.error(),
        ("parameter_invalid", "Custom attribute 'ltv' does not exist")
    );
    assert!(api.sandbox.snapshot().contacts.is_empty());

    // On update too: nothing of the request is applied, not even the valid parts.
    let id = api.user("u2").await;
    let answer = api
        .put(
            &format!("/contacts/{id}"),
            json!({"name": "New", "custom_attributes": {"known": "y", "ltv": 1}}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let state = api.sandbox.snapshot();
    let contact = state.contact_by_external_id("u2").unwrap();
    assert_eq!(contact.name, None);
    assert!(contact.custom_attributes.is_empty());

    // A company attribute of that name does not make it a contact attribute.
    api.attribute("company", "seats", "integer").await;
    let answer = api
        .put(
            &format!("/contacts/{id}"),
            json!({"custom_attributes": {"seats": 3}}),
        )
        .await;
    assert_eq!(answer.error().1, "Custom attribute 'seats' does not exist");
}

#[tokio::test]
async fn values_must_match_the_attribute_data_type() {
    let api = Api::start().await;
    for (name, data_type) in [
        ("s", "string"),
        ("i", "integer"),
        ("f", "float"),
        ("b", "boolean"),
        ("d", "date"),
    ] {
        api.attribute("contact", name, data_type).await;
    }
    let id = api.user("u1").await;
    let path = format!("/contacts/{id}");
    let good = json!({"s": "text", "i": 3, "f": 2.5, "b": true, "d": 1_700_000_000});
    let answer = api.put(&path, json!({"custom_attributes": good})).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.body["custom_attributes"], good);
    // An integer fits a float attribute.
    assert_eq!(
        api.put(&path, json!({"custom_attributes": {"f": 7}}))
            .await
            .status,
        StatusCode::OK
    );
    for bad in [
        json!({"s": 5}),
        json!({"i": 2.5}),
        json!({"i": "3"}),
        json!({"f": "2.5"}),
        json!({"b": "true"}),
        json!({"d": "2024-01-01"}),
    ] {
        let answer = api
            .put(&path, json!({"custom_attributes": bad.clone()}))
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(answer.error().0, "parameter_invalid");
    }
    let state = api.sandbox.snapshot();
    assert_eq!(state.contacts[0].custom_attributes["f"], json!(7));
    assert_eq!(state.contacts[0].custom_attributes["s"], json!("text"));
}

#[tokio::test]
async fn objects_arrays_and_long_strings_are_refused() {
    let api = Api::start().await;
    api.attribute("contact", "s", "string").await;
    let id = api.user("u1").await;
    let path = format!("/contacts/{id}");
    for bad in [json!({"s": {"a": 1}}), json!({"s": ["a", "b"]})] {
        let answer = api.put(&path, json!({"custom_attributes": bad})).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(
            answer
                .error()
                .1
                .contains("not of type Numeric, String or Boolean")
        );
    }
    let exactly = "é".repeat(255);
    let answer = api
        .put(&path, json!({"custom_attributes": {"s": exactly}}))
        .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "255 characters (not bytes) fit"
    );
    let answer = api
        .put(&path, json!({"custom_attributes": {"s": "x".repeat(256)}}))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error().0, "parameter_invalid");
}

#[tokio::test]
async fn long_strings_pass_when_the_flag_is_off() {
    let mut config = intercom_sandbox::SandboxConfig::new(crate::TOKEN);
    config.long_strings = intercom_sandbox::LongStrings::Allow;
    let api = Api::with(config).await;
    api.attribute("contact", "s", "string").await;
    let id = api.user("u1").await;
    let answer = api
        .put(
            &format!("/contacts/{id}"),
            json!({"custom_attributes": {"s": "x".repeat(300)}}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn duplicate_external_id_or_email_is_409_naming_the_holder() {
    let api = Api::start().await;
    let first = api.user("u1").await;
    let expected = format!("A contact matching those details already exists with id={first}");
    for body in [
        json!({"role": "user", "external_id": "u1"}),
        json!({"role": "user", "email": "U1@Example.com"}),
    ] {
        let answer = api.post("/contacts", body).await;
        assert_eq!(answer.status, StatusCode::CONFLICT);
        assert_eq!(answer.error(), ("conflict", expected.as_str()));
    }
    // A colliding update is refused the same way.
    let second = api.user("u2").await;
    let answer = api
        .put(&format!("/contacts/{second}"), json!({"external_id": "u1"}))
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.error().1, expected);
    // Re-sending one's own identity is no conflict.
    let answer = api
        .put(
            &format!("/contacts/{second}"),
            json!({"external_id": "u2", "email": "u2@example.com"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let state = api.sandbox.snapshot();
    assert_eq!(state.contacts.len(), 2);
    assert_eq!(state.counters.conflicts, 3);
}

#[tokio::test]
async fn role_rules() {
    let api = Api::start().await;
    let answer = api
        .post("/contacts", json!({"role": "admin", "email": "a@b.c"}))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    // A user needs an identity; a lead does not.
    let answer = api.post("/contacts", json!({"role": "user"})).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let answer = api.post("/contacts", json!({})).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let lead = api.post("/contacts", json!({"role": "lead"})).await;
    assert_eq!(lead.status, StatusCode::OK);
    assert_eq!(lead.body["role"], "lead");
    // A user cannot become a lead.
    let id = api.user("u1").await;
    let answer = api
        .put(&format!("/contacts/{id}"), json!({"role": "lead"}))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.error(),
        (
            "client_error",
            "Contact with user role can't be converted to a lead"
        )
    );
    // Unknown contact on update.
    let answer = api.put("/contacts/nope", json!({"name": "x"})).await;
    assert_eq!(answer.error(), ("not_found", "Contact Not Found"));
}

#[tokio::test]
async fn unknown_top_level_fields_and_owners_are_refused() {
    let api = Api::start().await;
    let answer = api
        .post("/contacts", json!({"external_id": "u1", "plan": "gold"}))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error(), ("bad_request", "bad 'plan' parameter"));
    let answer = api
        .post("/contacts", json!({"external_id": "u1", "owner_id": 5}))
        .await;
    assert_eq!(
        answer.error(),
        (
            "parameter_invalid",
            "The owner specified is not a member of the workspace"
        )
    );
}

#[tokio::test]
async fn null_clears_a_custom_attribute() {
    let api = Api::start().await;
    api.attribute("contact", "vip", "boolean").await;
    let id = api.user("u1").await;
    let path = format!("/contacts/{id}");
    api.put(&path, json!({"custom_attributes": {"vip": true}}))
        .await;
    let answer = api
        .put(&path, json!({"custom_attributes": {"vip": null}}))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        api.sandbox.snapshot().contacts[0]
            .custom_attributes
            .is_empty()
    );
}

#[tokio::test]
async fn changing_external_id_or_email_frees_the_old_value_and_holds_the_new() {
    let api = Api::start().await;
    let first = api.user("u1").await;
    let second = api.user("u2").await;
    let held_by_first = format!("A contact matching those details already exists with id={first}");
    let answer = api
        .put(
            &format!("/contacts/{first}"),
            json!({"external_id": "u1-new", "email": "U1-New@Example.com"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);

    // The new values are held: by create and by another contact's update, email in any case.
    for body in [
        json!({"role": "user", "external_id": "u1-new"}),
        json!({"role": "user", "email": "u1-NEW@example.COM"}),
    ] {
        let answer = api.post("/contacts", body.clone()).await;
        assert_eq!(answer.status, StatusCode::CONFLICT, "{body}");
        assert_eq!(answer.error(), ("conflict", held_by_first.as_str()));
        let answer = api.put(&format!("/contacts/{second}"), body.clone()).await;
        assert_eq!(answer.status, StatusCode::CONFLICT, "{body}");
        assert_eq!(answer.error().1, held_by_first);
    }
    // The old ones are free again.
    let answer = api
        .post("/contacts", json!({"role": "user", "external_id": "u1"}))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let reuser = answer.body["id"].as_str().unwrap().to_owned();
    let answer = api
        .put(
            &format!("/contacts/{second}"),
            json!({"email": "U1@EXAMPLE.COM"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);

    // Clearing a value frees it too; the freed email moves to the second contact.
    let answer = api
        .put(&format!("/contacts/{first}"), json!({"email": null}))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let answer = api
        .put(
            &format!("/contacts/{second}"),
            json!({"email": "u1-new@example.com"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);

    // Search, events and the snapshot all see the moved identities.
    let search = |field: &str, operator: &str, value: serde_json::Value| {
        api.post(
            "/contacts/search",
            json!({"query": {"field": field, "operator": operator, "value": value}}),
        )
    };
    let ids = |answer: &crate::Answer| -> Vec<String> {
        answer.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&search("external_id", "=", json!("u1")).await),
        [reuser.as_str()]
    );
    assert_eq!(
        ids(&search("external_id", "IN", json!(["u1-new", "u2"])).await),
        [first.as_str(), second.as_str()]
    );
    assert_eq!(
        ids(&search("email", "=", json!("U1-NEW@example.com")).await),
        [second.as_str()]
    );
    assert!(
        ids(&search("email", "IN", json!(["u1@example.com", "u2@example.com"])).await).is_empty()
    );
    for (identifier, value) in [("user_id", "u1-new"), ("email", "U1-new@EXAMPLE.com")] {
        let answer = api
            .post(
                "/events",
                json!({"event_name": format!("by {identifier}"), "created_at": 1, identifier: value}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
    }
    let answer = api
        .post(
            "/events",
            json!({"event_name": "x", "created_at": 1, "email": "u2@example.com"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let state = api.sandbox.snapshot();
    let events = |id: &str| -> Vec<String> {
        state
            .contacts
            .iter()
            .find(|c| c.id == id)
            .unwrap()
            .events
            .iter()
            .map(|e| e.event_name.clone())
            .collect()
    };
    assert_eq!(events(&first), ["by user_id"]);
    assert_eq!(events(&second), ["by email"]);
    assert_eq!(state.contact_by_external_id("u1").unwrap().id, reuser);
    assert_eq!(state.counters.conflicts, 4);
}

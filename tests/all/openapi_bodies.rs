//! Every request the mapping plans is checked against Intercom's official OpenAPI description in `reference/intercom-openapi/`.
//!
//! The spec is read from `api.intercom.io.json`, the repository's YAML converted once to JSON
//! (see `SOURCE.md`); the first test proves the JSON is still the YAML's conversion. The
//! validator below covers the subset of JSON Schema the request bodies use: `$ref`, `type`,
//! `nullable`, `enum`, `properties`, `required`, `additionalProperties`, `items`, `oneOf`
//! (exactly one), `anyOf` (at least one) and `allOf`. It is stricter than OpenAPI in one way:
//! an object key that the schema (with its composed branches) does not declare is an error
//! when the schema says nothing about additional properties, because Intercom answers an
//! unknown field with 400 `bad_request` ("bad 'x' parameter").

use std::sync::OnceLock;

use audience_sync::intercom::mapping::{KnownIds, MapOptions, map_message};
use audience_sync::intercom::requests::{Method, Request};
use audience_sync::segment::Message;
use audience_sync::settings::LongStrings;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/reference/intercom-openapi");

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = std::fs::read_to_string(format!("{DIR}/api.intercom.io.json")).unwrap();
        let mut spec: Value = serde_json::from_str(&text).unwrap();
        patch_known_deviations(&mut spec);
        spec
    })
}

/// Where the 2.16 description is narrower than the API (or looser than Intercom's rules), the
/// schema is replaced here, each time after checking it still says what we replace, so a new
/// copy of the spec that fixes it makes this test fail and the patch can go.
fn patch_known_deviations(spec: &mut Value) {
    let schemas = spec["components"]["schemas"].as_object_mut().unwrap();
    let scalar = json!({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]});

    // Event metadata: 2.16 says `additionalProperties: {type: string}`, yet its own description
    // lists Number, Monetary Amount (`{amount: int cents, currency}`) and Rich Link (`{url,
    // value}`) metadata; the Preview spec widened it (Intercom-OpenAPI PR #586). Allow strings,
    // numbers and those two objects only.
    let metadata = &mut schemas["create_data_event_request"]["properties"]["metadata"];
    assert_eq!(metadata["additionalProperties"], json!({"type": "string"}));
    metadata["additionalProperties"] = json!({"anyOf": [
        {"type": "string"},
        {"type": "number"},
        {"type": "object", "required": ["amount", "currency"], "additionalProperties": false,
         "properties": {"amount": {"type": "integer"}, "currency": {"type": "string"}}},
        {"type": "object", "required": ["url", "value"], "additionalProperties": false,
         "properties": {"url": {"type": "string"}, "value": {"type": "string"}}}
    ]});

    // Company custom attributes: `additionalProperties: {type: string}`, yet its own example holds
    // booleans and numbers, and boolean / float company attributes exist. Scalars, or null to clear.
    let company =
        &mut schemas["create_or_update_company_request"]["properties"]["custom_attributes"];
    assert_eq!(company["additionalProperties"], json!({"type": "string"}));
    company["additionalProperties"] = scalar.clone();
    company["additionalProperties"]["nullable"] = json!(true);

    // Contact custom attributes: a bare `object`. Tightened to Intercom's rule (no nested values).
    for name in ["create_contact_request", "update_contact_request"] {
        let custom = &mut schemas[name]["properties"]["custom_attributes"];
        assert_eq!(custom["type"], json!("object"));
        assert!(custom.get("additionalProperties").is_none());
        custom["additionalProperties"] = scalar.clone();
        custom["additionalProperties"]["nullable"] = json!(true);
    }
}

// ------------------------------------------------------------------------------------------
// the validator

fn resolve(schema: &Value) -> &Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("local $ref");
            resolve(
                spec()
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling {reference}")),
            )
        }
        None => schema,
    }
}

/// Property names a schema declares, through `$ref` and its composed branches.
fn declared(schema: &Value, names: &mut Vec<String>) -> bool {
    let schema = resolve(schema);
    let mut open = schema.get("additionalProperties").is_some();
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        names.extend(properties.keys().cloned());
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        for branch in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            open |= declared(branch, names);
        }
    }
    open
}

fn type_matches(ty: &str, value: &Value) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        other => panic!("unknown type {other}"),
    }
}

/// The errors of `value` against `schema`, each with its JSON path. `closed` enables the
/// unknown-key check (off inside composed branches: the parent checks the union of keys).
fn validate(schema: &Value, value: &Value, at: &str, closed: bool) -> Vec<String> {
    let schema = resolve(schema);
    let mut errors = Vec::new();
    if value.is_null() {
        let typed = schema.get("type").is_some();
        if schema.get("nullable") == Some(&Value::Bool(true)) || !typed && !has_composition(schema)
        {
            return errors;
        }
        if typed {
            return vec![format!("{at}: null where the schema is not nullable")];
        }
    }
    if let Some(ty) = schema.get("type").and_then(Value::as_str)
        && !type_matches(ty, value)
    {
        return vec![format!("{at}: expected {ty}, got {value}")];
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Value::Object(object) = value {
        errors.extend(validate_object(schema, object, at, closed));
    }
    if let (Some(items), Value::Array(values)) = (schema.get("items"), value) {
        for (i, item) in values.iter().enumerate() {
            errors.extend(validate(items, item, &format!("{at}[{i}]"), true));
        }
    }
    for branch in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        errors.extend(validate(branch, value, at, false));
    }
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
        let passing = branches
            .iter()
            .filter(|b| validate(b, value, at, false).is_empty())
            .count();
        if passing != 1 {
            errors.push(format!(
                "{at}: matches {passing} of the oneOf branches, not exactly one: {:?}",
                branches
                    .iter()
                    .map(|b| validate(b, value, at, false))
                    .collect::<Vec<_>>()
            ));
        }
    }
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array)
        && !branches
            .iter()
            .any(|b| validate(b, value, at, false).is_empty())
    {
        errors.push(format!(
            "{at}: matches none of the anyOf branches: {:?}",
            branches
                .iter()
                .map(|b| validate(b, value, at, false))
                .collect::<Vec<_>>()
        ));
    }
    errors
}

fn has_composition(schema: &Value) -> bool {
    ["allOf", "oneOf", "anyOf"]
        .iter()
        .any(|k| schema.get(*k).is_some())
}

fn validate_object(
    schema: &Value,
    object: &Map<String, Value>,
    at: &str,
    closed: bool,
) -> Vec<String> {
    let mut errors = Vec::new();
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = name.as_str().unwrap();
        if !object.contains_key(name) {
            errors.push(format!("{at}: required `{name}` is missing"));
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    let mut names = Vec::new();
    let open = declared(schema, &mut names);
    for (key, value) in object {
        let path = format!("{at}.{key}");
        match (properties.and_then(|p| p.get(key)), additional) {
            (Some(property), _) => errors.extend(validate(property, value, &path, true)),
            (None, Some(Value::Bool(false))) => {
                errors.push(format!("{path}: not allowed (additionalProperties: false)"))
            }
            (None, Some(extra)) if extra.is_object() => {
                errors.extend(validate(extra, value, &path, true))
            }
            _ => {
                if closed && !open && !names.is_empty() && !names.contains(key) {
                    errors.push(format!("{path}: not a field of this request"));
                }
            }
        }
    }
    errors
}

/// The operation a request targets: method + path matched against the spec's path templates.
fn operation(request: &Request) -> Result<&'static Value, String> {
    let (path, query) = request.path.split_once('?').unwrap_or((&request.path, ""));
    let segments: Vec<&str> = path.split('/').collect();
    let method = request.method.as_str().to_lowercase();
    // Of the templates that match, the one with the most literal segments wins
    // (`/contacts/search` over `/contacts/{contact_id}`), as in any router.
    let matching: Vec<(&String, &Value, usize)> = spec()["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(template, item)| {
            let parts: Vec<&str> = template.split('/').collect();
            let fits = parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(p, s)| {
                    p == s || (p.starts_with('{') && p.ends_with('}') && !s.is_empty())
                });
            let literal = parts.iter().zip(&segments).filter(|(p, s)| p == s).count();
            fits.then_some((template, item, literal))
        })
        .collect();
    let (template, item, _) = matching
        .iter()
        .max_by_key(|(_, _, literal)| *literal)
        .ok_or_else(|| format!("no path in the spec matches {}", request.path))?;
    let op = item
        .get(&method)
        .ok_or_else(|| format!("{template} has no {method} operation"))?;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let name = pair.split('=').next().unwrap();
        let declared = op["parameters"].as_array().into_iter().flatten().any(|p| {
            let p = resolve(p);
            p["in"] == "query" && p["name"] == name
        });
        if !declared {
            return Err(format!(
                "{template} {method} has no query parameter `{name}`"
            ));
        }
    }
    Ok(op)
}

/// All the errors of one request: its operation must exist and its body fit the request schema.
fn check(request: &Request) -> Vec<String> {
    let op = match operation(request) {
        Ok(op) => op,
        Err(e) => return vec![e],
    };
    let schema = op.pointer("/requestBody/content/application~1json/schema");
    match (&request.body, schema) {
        (Some(body), Some(schema)) => validate(schema, body, "body", true),
        (Some(_), None) => vec![format!("{} takes no JSON body", request.path)],
        (None, Some(_)) if op["requestBody"]["required"] == json!(true) => {
            vec![format!("{} needs a body", request.path)]
        }
        (None, _) => Vec::new(),
    }
}

fn assert_valid(request: &Request) {
    let errors = check(request);
    assert!(
        errors.is_empty(),
        "{} {} {}\n{}",
        request.method.as_str(),
        request.path,
        request.body.clone().unwrap_or_default(),
        errors.join("\n")
    );
}

// ------------------------------------------------------------------------------------------
// the tests

#[test]
fn the_json_is_the_conversion_of_the_repositorys_yaml() {
    let yaml = std::fs::read(format!("{DIR}/api.intercom.io.yaml")).unwrap();
    let sha256: String = Sha256::digest(&yaml)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(spec()["x-converted-from"]["sha256"], json!(sha256));
    assert_eq!(spec()["info"]["version"], json!("2.16"));
}

#[test]
fn every_planned_request_fits_the_official_schema() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/mapping/messages.ndjson"
    ))
    .unwrap();
    let known = KnownIds {
        contact_id: Some("65f0c0ffee".into()),
        company_ids: [("acme".to_string(), "6600aa".to_string())].into(),
    };
    let mut checked = 0;
    for long_strings in [LongStrings::Truncate, LongStrings::Reject] {
        let options = MapOptions {
            long_strings,
            company_attribute_prefix: "account_".into(),
            now: 1_700_000_000,
        };
        for line in text.lines() {
            let Ok(message) = Message::from_json_str(line) else {
                continue;
            };
            for known in [&KnownIds::nothing(), &known] {
                let Ok(plan) = map_message(&message, &options, known) else {
                    continue;
                };
                let extra = plan
                    .contact_create()
                    .cloned()
                    .into_iter()
                    .chain(plan.attributes.iter().map(|a| a.create_request()));
                for request in plan.requests().cloned().chain(extra) {
                    assert_valid(&request);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 60, "only {checked} requests checked");
}

/// Messages beyond the mapping data file that reach every field a body can carry: a create with
/// every standard contact field, the standard company fields, Intercom's typed metadata
/// objects, a membership attach.
const MORE_MESSAGES: &[&str] = &[
    r#"{"type":"identify","userId":"u9","timestamp":"2024-05-01T00:00:00Z","traits":{"email":"u9@example.com","firstName":"Ann","lastName":"Lee","phone":"+353871234567","avatar":"https://example.com/a.png","createdAt":"2020-01-01T00:00:00Z","vip":true,"ltv":12.5,"tags":["a","b"],"gone":null,"company":{"id":"acme"}},"context":{"active":true,"Intercom":{"unsubscribedFromEmails":true}}}"#,
    r#"{"type":"identify","traits":{"email":"e9@example.com","name":null,"plan":"Gold"}}"#,
    r#"{"type":"group","userId":"u9","groupId":"acme","traits":{"name":"Acme","plan":"Pro","size":51.9,"website":"https://acme.test","industry":"Anvils","monthlySpend":"99.5","remote_created_at":1577836800,"seats":3}}"#,
    r#"{"type":"group","userId":"u9","groupId":"acme","traits":{},"context":{"traits":{"email":"u9@example.com"},"personas":{"computation_class":"audience","computation_key":"high_value"}}}"#,
    r#"{"type":"track","userId":"u9","event":"Invoice Paid","originalTimestamp":"2024-05-01T00:00:00Z","properties":{"price":{"amount":34999,"currency":"eur"},"invoice":{"url":"https://example.com/i/1","value":"Invoice 1"},"bad":{"amount":1.5,"currency":"eur"},"paid":true}}"#,
];

#[test]
fn every_contact_create_company_upsert_and_event_of_more_messages_fits() {
    let known = KnownIds {
        contact_id: None,
        company_ids: [("acme".to_string(), "6600aa".to_string())].into(),
    };
    let options = MapOptions {
        long_strings: LongStrings::Truncate,
        company_attribute_prefix: "account_".into(),
        now: 1_700_000_000,
    };
    let mut creates = 0;
    for line in MORE_MESSAGES {
        let message = Message::from_json_str(line).unwrap();
        for known in [&KnownIds::nothing(), &known] {
            let plan = map_message(&message, &options, known).unwrap();
            for request in plan.dry_run_requests().into_iter().chain(plan.requests()) {
                assert_valid(request);
                if request.path == "/contacts" {
                    creates += 1;
                }
            }
        }
    }
    // The two identifies and the two group attaches, each with and without known companies.
    assert_eq!(creates, 8);
    // The create with every standard field, validated above, is this one.
    let message = Message::from_json_str(MORE_MESSAGES[0]).unwrap();
    let plan = map_message(&message, &options, &KnownIds::nothing()).unwrap();
    let create = plan.contact_create().unwrap();
    assert_eq!(
        create.body.as_ref().unwrap(),
        &json!({"role": "user", "external_id": "u9", "email": "u9@example.com",
                "name": "Ann Lee", "phone": "+353871234567", "avatar": "https://example.com/a.png",
                "signed_up_at": 1_577_836_800, "last_seen_at": 1_714_521_600,
                "unsubscribed_from_emails": true,
                "custom_attributes": {"vip": true, "ltv": 12.5, "tags": "a, b"}})
    );
}

#[test]
fn the_validator_refuses_wrong_bodies() {
    let post = |path: &str, body: Value| Request::new(Method::Post, path, Some(body));
    let put = |body: Value| Request::new(Method::Put, "/contacts/{contact_id}", Some(body));
    let cases: Vec<(&str, Request, &str)> = vec![
        (
            "a date as text",
            put(json!({"signed_up_at": "2018-03-26"})),
            "expected integer",
        ),
        (
            "a misspelt field",
            put(json!({"signed_up": 1})),
            "not a field",
        ),
        (
            "a nested custom attribute",
            put(json!({"custom_attributes": {"a": {"b": 1}}})),
            "anyOf",
        ),
        (
            "null email (not nullable)",
            put(json!({"email": null})),
            "not nullable",
        ),
        (
            "an event without created_at",
            post("/events", json!({"event_name": "E", "user_id": "u1"})),
            "anyOf",
        ),
        (
            "an event without an identifier",
            post("/events", json!({"event_name": "E", "created_at": 1})),
            "anyOf",
        ),
        (
            "nested event metadata",
            post(
                "/events",
                json!({"event_name": "E", "created_at": 1, "user_id": "u", "metadata": {"a": {"b": 1}}}),
            ),
            "anyOf",
        ),
        (
            "money in float cents",
            post(
                "/events",
                json!({"event_name": "E", "created_at": 1, "user_id": "u",
                                   "metadata": {"price": {"amount": 99.95, "currency": "usd"}}}),
            ),
            "anyOf",
        ),
        (
            "a float monthly_spend",
            post(
                "/companies",
                json!({"company_id": "a", "monthly_spend": 155.98}),
            ),
            "expected integer",
        ),
        (
            "a contact create with a nested custom attribute",
            post(
                "/contacts",
                json!({"role": "user", "external_id": "u", "custom_attributes": {"a": {"b": 1}}}),
            ),
            "anyOf",
        ),
        (
            "a contact create with a misspelt field",
            post(
                "/contacts",
                json!({"role": "user", "external_id": "u", "signed_up": 1}),
            ),
            "not a field",
        ),
        (
            "a contact create with a date as text",
            post(
                "/contacts",
                json!({"role": "user", "external_id": "u", "last_seen_at": "2024-05-01"}),
            ),
            "expected integer",
        ),
        (
            "a rich link with a number as its value",
            post(
                "/events",
                json!({"event_name": "E", "created_at": 1, "user_id": "u",
                       "metadata": {"link": {"url": "https://example.com", "value": 1}}}),
            ),
            "anyOf",
        ),
        (
            "a float company size",
            post("/companies", json!({"company_id": "a", "size": 51.9})),
            "expected integer",
        ),
        (
            "attach without the company id",
            post("/contacts/{contact_id}/companies", json!({})),
            "required `id`",
        ),
        (
            "a data attribute without data_type",
            post(
                "/data_attributes",
                json!({"name": "vip", "model": "contact"}),
            ),
            "required `data_type`",
        ),
        (
            "a data attribute of an unknown type",
            post(
                "/data_attributes",
                json!({"name": "vip", "model": "contact", "data_type": "number"}),
            ),
            "oneOf",
        ),
        (
            "a data attribute on an unknown model",
            post(
                "/data_attributes",
                json!({"name": "vip", "model": "lead", "data_type": "string"}),
            ),
            "is not one of",
        ),
        (
            "a search with an unknown operator",
            post(
                "/contacts/search",
                json!({"query": {"field": "email", "operator": "==", "value": "a"}}),
            ),
            "oneOf",
        ),
        (
            "a search without a query",
            post("/contacts/search", json!({})),
            "required `query`",
        ),
        (
            "a path Intercom does not have",
            post("/contact/search", json!({})),
            "no path",
        ),
        (
            "a method the path does not have",
            Request::new(Method::Put, "/events", Some(json!({}))),
            "no put",
        ),
        (
            "an undeclared query parameter",
            Request::new(Method::Get, "/companies?companyId=a", None),
            "no query parameter",
        ),
        (
            "a body where none is taken",
            Request::new(Method::Delete, "/contacts/x/companies/y", Some(json!({}))),
            "takes no JSON body",
        ),
    ];
    for (what, request, expected) in cases {
        let errors = check(&request).join("\n");
        assert!(
            errors.contains(expected),
            "{what}: expected an error containing {expected:?}, got {errors:?}"
        );
    }
    // And the right forms of the same requests pass.
    for request in [
        put(json!({"signed_up_at": 1_522_086_291, "custom_attributes": {"a": 1, "b": null}})),
        post(
            "/events",
            json!({"event_name": "E", "created_at": 1, "email": "a@example.com",
                               "metadata": {"price": {"amount": 9995, "currency": "usd"}, "n": 1.5}}),
        ),
        post(
            "/data_attributes",
            json!({"name": "vip", "model": "company", "data_type": "boolean"}),
        ),
        post(
            "/contacts",
            json!({"role": "user", "external_id": "u", "email": "a@example.com", "name": "A",
                   "signed_up_at": 1, "last_seen_at": 2, "unsubscribed_from_emails": false,
                   "custom_attributes": {"a": 1, "b": "x", "c": true}}),
        ),
        post(
            "/events",
            json!({"event_name": "E", "created_at": 1, "user_id": "u",
                   "metadata": {"link": {"url": "https://example.com", "value": "Example"}}}),
        ),
        Request::new(Method::Get, "/companies?company_id=a", None),
    ] {
        assert_valid(&request);
    }
}

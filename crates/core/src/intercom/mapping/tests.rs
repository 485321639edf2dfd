//! The mapping's unit tests: create bodies, done-by-create updates, bare companies, company
//! sizes and the event-name guard.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::group::{company_body, only_company_id};
use super::identify::create_contact_body;
use super::*;
use crate::intercom::requests::{Method, OnMissing, Op, Request};

fn options() -> MapOptions {
    MapOptions {
        long_strings: LongStrings::Truncate,
        company_attribute_prefix: "account_".into(),
        now: 1_700_000_000,
    }
}

fn message(value: Value) -> Message {
    Message::from_value(&value).unwrap()
}

#[test]
fn the_create_body_is_the_update_body_as_a_user_without_its_clears() {
    let update = json!({"external_id": "u1", "email": "a@example.com", "name": null,
        "phone": "1", "signed_up_at": 5, "unsubscribed_from_emails": false,
        "custom_attributes": {"vip": false, "gone": null, "ltv": 5}});
    assert_eq!(
        create_contact_body(update.as_object().unwrap()),
        json!({"role": "user", "external_id": "u1", "email": "a@example.com", "phone": "1",
               "signed_up_at": 5, "unsubscribed_from_emails": false,
               "custom_attributes": {"vip": false, "ltv": 5}})
    );
    let only_clears = json!({"external_id": "u1", "custom_attributes": {"gone": null}});
    assert_eq!(
        create_contact_body(only_clears.as_object().unwrap()),
        json!({"role": "user", "external_id": "u1"})
    );
}

#[test]
fn an_identify_for_a_new_contact_is_one_create_and_the_update_done_by_it() {
    let plan = map_message(
        &message(json!({"type": "identify", "userId": "u1",
            "traits": {"email": "a@example.com", "vip": true}})),
        &options(),
        &KnownIds::nothing(),
    )
    .unwrap();
    let [resolve, update] = &plan.steps[..] else {
        panic!("{plan:?}")
    };
    let Op::ResolveContact {
        on_missing: OnMissing::Create(create),
        ..
    } = &resolve.op
    else {
        panic!("{resolve:?}")
    };
    assert_eq!(create.method, Method::Post);
    assert_eq!(create.path, "/contacts");
    let mut expected = update.request.body.clone().unwrap();
    expected
        .as_object_mut()
        .unwrap()
        .shift_insert(0, "role".into(), json!("user"));
    assert_eq!(create.body, Some(expected));
    assert_eq!(
        update.op,
        Op::UpdateContact {
            done_by_create: true
        }
    );
    assert_eq!(
        plan.dry_run_requests(),
        vec![&resolve.request, create],
        "the dry run shows the create in place of the update"
    );
}

#[test]
fn only_a_bare_company_with_a_known_id_skips_the_upsert() {
    assert!(only_company_id(&json!({"company_id": "acme"})));
    assert!(!only_company_id(
        &json!({"company_id": "acme", "name": "Acme"})
    ));
    assert!(!only_company_id(
        &json!({"company_id": "acme", "custom_attributes": {"x": null}})
    ));
    let known = KnownIds {
        contact_id: Some("c1".into()),
        company_ids: BTreeMap::from([("acme".to_string(), "i1".to_string())]),
    };
    let attach = map_message(
        &message(json!({"type": "group", "userId": "u1", "groupId": "acme"})),
        &options(),
        &known,
    )
    .unwrap();
    assert_eq!(
        attach.requests().cloned().collect::<Vec<_>>(),
        vec![Request::new(
            Method::Post,
            "/contacts/c1/companies",
            Some(json!({"id": "i1"}))
        )]
    );
}

#[test]
fn a_group_size_trait_is_the_company_size() {
    let mut plan = Plan::default();
    let traits = json!({"size": 12.7, "remote_created_at": "2020-01-01T00:00:00Z"});
    let body = company_body(
        "acme",
        traits.as_object().unwrap(),
        &BTreeSet::new(),
        &options(),
        &mut plan,
    )
    .unwrap();
    assert_eq!(
        body,
        json!({"company_id": "acme", "size": 12, "remote_created_at": 1_577_836_800})
    );
    assert!(plan.attributes.is_empty() && plan.warnings.is_empty());
    // A Personas account computation named `size` is the prefixed custom attribute.
    let body = company_body(
        "acme",
        json!({"size": 3}).as_object().unwrap(),
        &BTreeSet::from(["size".to_string()]),
        &options(),
        &mut plan,
    )
    .unwrap();
    assert_eq!(
        body,
        json!({"company_id": "acme", "custom_attributes": {"account_size": 3}})
    );
}

#[test]
fn the_121st_new_event_name_is_refused_case_insensitively() {
    let sent: Vec<String> = (0..119).map(|i| format!("Event {i}")).collect();
    let mut names = EventNames::new(sent.iter().map(String::as_str));
    assert_eq!(names.check("event 3"), Ok(Admission::Known));
    assert_eq!(names.check("Order Completed"), Ok(Admission::New));
    names.record("Order Completed");
    assert_eq!(names.len(), 120);
    assert_eq!(names.check("ORDER COMPLETED"), Ok(Admission::Known));
    let err = names.check("Signed Up").unwrap_err();
    assert_eq!(
        err,
        MapError::TooManyEventNames {
            name: "Signed Up".into(),
            limit: 120
        }
    );
    assert!(err.to_string().contains("`Signed Up` is new"));
}

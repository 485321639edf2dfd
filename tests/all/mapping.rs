//! Table-driven tests of the Intercom mapping: every rule of SPEC section 6, with exact request bodies.
//!
//! Each case is a Segment message and the requests its plan's steps make, as `{"method",
//! "path", "body"}` lines (the create a resolve step may send is checked apart, and what `send
//! --dry-run` prints too). The seed document's examples come first.

use std::collections::BTreeMap;

use audience_sync::intercom::mapping::{KnownIds, MapError, MapOptions, map_message};
use audience_sync::intercom::requests::{
    AttributeNeed, ContactLookup, OnMissing, Op, Plan, Produces, StepId,
};
use audience_sync::intercom::values::{DataType, Model, Warning};
use audience_sync::segment::Message;
use audience_sync::settings::LongStrings;
use serde_json::{Value, json};

const NOW: i64 = 1_700_000_000;

fn options(long_strings: LongStrings) -> MapOptions {
    MapOptions {
        long_strings,
        company_attribute_prefix: "account_".into(),
        now: NOW,
    }
}

fn plan_with(
    message: Value,
    known: &KnownIds,
    long_strings: LongStrings,
) -> Result<Plan, MapError> {
    let message = Message::from_value(&message).expect("a valid Segment message");
    map_message(&message, &options(long_strings), known)
}

fn plan(message: Value) -> Plan {
    plan_with(message, &KnownIds::nothing(), LongStrings::Truncate).expect("maps")
}

fn requests(plan: &Plan) -> Vec<Value> {
    plan.requests().map(|r| r.to_json()).collect()
}

fn search(field: &str, value: &str) -> Value {
    json!({"method": "POST", "path": "/contacts/search",
           "body": {"query": {"field": field, "operator": "=", "value": value}}})
}

fn put(body: Value) -> Value {
    json!({"method": "PUT", "path": "/contacts/{contact_id}", "body": body})
}

fn upsert_company(body: Value) -> Value {
    json!({"method": "POST", "path": "/companies", "body": body})
}

fn attach() -> Value {
    json!({"method": "POST", "path": "/contacts/{contact_id}/companies", "body": {"id": "{company_id}"}})
}

fn event(body: Value) -> Value {
    json!({"method": "POST", "path": "/events", "body": body})
}

/// The resolve step's answer to "may this message create the contact?": the create body, or None.
fn create_body(plan: &Plan) -> Option<Value> {
    plan.contact_create().and_then(|r| r.body.clone())
}

#[test]
fn identify_rules() {
    // (what, message, requests)
    let cases: Vec<(&str, Value, Vec<Value>)> = vec![
        (
            "seed: identify with a company object and createdAt",
            json!({"type": "identify", "userId": "su3r73", "traits": {
                "name": "Iñigo Montoya", "email": "avenger@example.com",
                "company": {"id": "123", "name": "Iñigo & Friends Holding Company"},
                "createdAt": "Mon Mar 26 2018 17:44:51 GMT+0000 (UTC)"}}),
            vec![
                search("external_id", "su3r73"),
                put(
                    json!({"external_id": "su3r73", "email": "avenger@example.com", "name": "Iñigo Montoya",
                           "signed_up_at": 1_522_086_291}),
                ),
                upsert_company(
                    json!({"company_id": "123", "name": "Iñigo & Friends Holding Company"}),
                ),
                attach(),
            ],
        ),
        (
            "seed: remove: true detaches the company",
            json!({"type": "identify", "userId": "019mr8mf4r", "traits": {
                "name": "Michael Bolton", "email": "mbolton@example.com", "plan": "Enterprise",
                "company": {"id": 12345, "remove": true},
                "createdAt": "Thu Mar 24 2016 17:46:45 GMT+0000 (UTC)"}}),
            vec![
                search("external_id", "019mr8mf4r"),
                put(
                    json!({"external_id": "019mr8mf4r", "email": "mbolton@example.com", "name": "Michael Bolton",
                           "signed_up_at": 1_458_841_605,
                           "custom_attributes": {"plan": "Enterprise"}}),
                ),
                json!({"method": "GET", "path": "/companies?company_id=12345", "body": null}),
                json!({"method": "DELETE", "path": "/contacts/{contact_id}/companies/{company_id}", "body": null}),
            ],
        ),
        (
            "seed: context.active false leaves last_seen_at alone; firstName + lastName; createdAt in ms",
            json!({"type": "identify", "userId": "some_user_id", "traits": {
                "email": "ben@intercom.io", "firstName": "Ben", "lastName": "McRedmond",
                "createdAt": 1_363_902_294_011_i64, "plan": "Premium"},
                "context": {"ip": "192.168.0.1", "active": false, "userAgent": "Mozilla/5.0"},
                "timestamp": "2024-05-01T00:00:00Z"}),
            vec![
                search("external_id", "some_user_id"),
                put(
                    json!({"external_id": "some_user_id", "email": "ben@intercom.io", "name": "Ben McRedmond",
                           "signed_up_at": 1_363_902_294,
                           "custom_attributes": {"plan": "Premium"}}),
                ),
            ],
        ),
        (
            "seed: unsubscribedFromEmails in context.Intercom",
            json!({"type": "identify", "userId": "4832094283057439285723523452345",
                "anonymousId": "43254364571",
                "context": {"Intercom": {"unsubscribedFromEmails": true}},
                "traits": {"firstName": "John ", "lastName": "Jacob", "email": "jingleheimer@schmidt.com"}}),
            vec![
                search("external_id", "4832094283057439285723523452345"),
                put(
                    json!({"external_id": "4832094283057439285723523452345", "email": "jingleheimer@schmidt.com", "name": "John Jacob",
                           "unsubscribed_from_emails": true}),
                ),
            ],
        ),
        (
            "unsubscribedFromEmails in integrations.Intercom",
            json!({"type": "identify", "userId": "u1",
                "integrations": {"All": false, "Intercom": {"unsubscribedFromEmails": false}}}),
            vec![
                search("external_id", "u1"),
                put(json!({"external_id": "u1", "unsubscribed_from_emails": false})),
            ],
        ),
        (
            "context.active true: last_seen_at is the message timestamp",
            json!({"type": "identify", "userId": "u1", "context": {"active": true},
                   "timestamp": "2024-05-01T00:00:00Z"}),
            vec![
                search("external_id", "u1"),
                put(json!({"external_id": "u1", "last_seen_at": 1_714_521_600})),
            ],
        ),
        (
            "context.active true: lastRequestAt wins over the timestamp",
            json!({"type": "identify", "userId": "u1", "context": {"active": true},
                   "traits": {"lastRequestAt": "2024-04-30T00:00:00Z"},
                   "timestamp": "2024-05-01T00:00:00Z"}),
            vec![
                search("external_id", "u1"),
                put(json!({"external_id": "u1", "last_seen_at": 1_714_435_200})),
            ],
        ),
        (
            "context.active true without a timestamp: last_seen_at is the caller's now",
            json!({"type": "identify", "userId": "u1", "context": {"active": true}}),
            vec![
                search("external_id", "u1"),
                put(json!({"external_id": "u1", "last_seen_at": NOW})),
            ],
        ),
        (
            "phone, avatar; null clears a nullable field",
            json!({"type": "identify", "userId": "u1",
                   "traits": {"phone": "+353871234567", "avatar": "https://example.com/a.png", "name": null}}),
            vec![
                search("external_id", "u1"),
                put(
                    json!({"external_id": "u1", "name": null, "phone": "+353871234567", "avatar": "https://example.com/a.png"}),
                ),
            ],
        ),
        (
            "no userId: found by traits.email",
            json!({"type": "identify", "traits": {"email": "a@example.com", "score": 5}}),
            vec![
                search("email", "a@example.com"),
                put(json!({"email": "a@example.com", "custom_attributes": {"score": 5}})),
            ],
        ),
        (
            "no userId: found by context.traits.email (Personas puts it there too)",
            json!({"type": "identify", "traits": {"vip": true},
                   "context": {"traits": {"email": "b@example.com"}}}),
            vec![
                search("email", "b@example.com"),
                put(json!({"email": "b@example.com", "custom_attributes": {"vip": true}})),
            ],
        ),
        (
            "company string: company_id is the string-hash of the name",
            json!({"type": "identify", "userId": "u1", "traits": {"company": "Segment"}}),
            vec![
                search("external_id", "u1"),
                upsert_company(json!({"company_id": "2017828326", "name": "Segment"})),
                attach(),
            ],
        ),
        (
            "companies array: each upserted and attached, or detached",
            json!({"type": "identify", "userId": "u1", "traits": {"companies": [
                {"company_id": "acme", "name": "Acme", "plan": "Pro", "monthly_spend": 99.9,
                 "createdAt": "2020-01-01T00:00:00Z", "seats": 12},
                {"name": "Globex"},
                {"id": "old", "remove": true}]}}),
            vec![
                search("external_id", "u1"),
                upsert_company(json!({"company_id": "acme", "name": "Acme", "plan": "Pro",
                                       "monthly_spend": 99, "remote_created_at": 1_577_836_800,
                                       "custom_attributes": {"seats": 12}})),
                attach(),
                upsert_company(json!({"company_id": "2207408510", "name": "Globex"})),
                attach(),
                json!({"method": "GET", "path": "/companies?company_id=old", "body": null}),
                json!({"method": "DELETE", "path": "/contacts/{contact_id}/companies/{company_id}", "body": null}),
            ],
        ),
        (
            "custom attribute value rules: objects dropped, arrays joined, dates as unix seconds",
            json!({"type": "identify", "userId": "u1", "traits": {
                "address": {"city": "Paris"}, "tags": ["a", "b", 3], "nested": [[1]],
                "renewal": "2024-05-01T00:00:00Z", "ltv": 12.5, "vip": true}}),
            vec![
                search("external_id", "u1"),
                put(
                    json!({"external_id": "u1", "custom_attributes": {"tags": "a, b, 3", "renewal": 1_714_521_600,
                                                  "ltv": 12.5, "vip": true}}),
                ),
            ],
        ),
        (
            "strings over 255 characters are cut on a character boundary",
            json!({"type": "identify", "userId": "u1", "traits": {"bio": "ü".repeat(256)}}),
            vec![
                search("external_id", "u1"),
                put(json!({"external_id": "u1", "custom_attributes": {"bio": "ü".repeat(255)}})),
            ],
        ),
        (
            "Personas exit: false and null are written, nothing else",
            json!({"type": "identify", "userId": "u1",
                   "traits": {"email": "a@example.com", "high_value": false, "ltv_bucket": null},
                   "integrations": {"All": false, "Intercom": true},
                   "context": {"personas": {"computation_class": "audience", "computation_key": "high_value"}}}),
            vec![
                search("external_id", "u1"),
                put(json!({"external_id": "u1", "email": "a@example.com",
                            "custom_attributes": {"high_value": false, "ltv_bucket": null}})),
            ],
        ),
        (
            "identity only: no write beyond the search (the resolve creates a missing contact)",
            json!({"type": "identify", "traits": {"email": "a@example.com"}}),
            vec![search("email", "a@example.com")],
        ),
    ];
    for (what, message, expected) in cases {
        assert_eq!(requests(&plan(message)), expected, "{what}");
    }
}

#[test]
fn when_a_contact_may_be_created() {
    // (what, message, the POST /contacts body the resolve step may send, or None = never create)
    let cases: Vec<(&str, Value, Option<Value>)> = vec![
        (
            "an audience entry creates a missing contact, as a user, never a lead, with its values",
            json!({"type": "identify", "userId": "u1", "traits": {"vip": true, "email": "a@example.com"}}),
            Some(
                json!({"role": "user", "external_id": "u1", "email": "a@example.com",
                        "custom_attributes": {"vip": true}}),
            ),
        ),
        (
            "an exit (false) creates none",
            json!({"type": "identify", "userId": "u1", "traits": {"vip": false, "email": "a@example.com"}}),
            None,
        ),
        (
            "a trait gone (null) creates none",
            json!({"type": "identify", "userId": "u1", "traits": {"ltv": null}}),
            None,
        ),
        (
            "leaving an account only (companies remove) creates none",
            json!({"type": "identify", "userId": "u1", "traits": {"companies": [{"id": "acme", "remove": true}]}}),
            None,
        ),
        (
            "an exit plus a new value creates (the new value must land), with both values",
            json!({"type": "identify", "userId": "u1", "traits": {"vip": false, "ltv": 5}}),
            Some(json!({"role": "user", "external_id": "u1",
                        "custom_attributes": {"vip": false, "ltv": 5}})),
        ),
        (
            "a Personas trait whose value is false creates (it is a value, not an exit)",
            json!({"type": "identify", "userId": "u1", "traits": {"power_user": false},
                   "context": {"personas": {"computation_class": "trait", "computation_key": "power_user"}}}),
            Some(json!({"role": "user", "external_id": "u1",
                        "custom_attributes": {"power_user": false}})),
        ),
        (
            "a Personas audience exit (false) creates none",
            json!({"type": "identify", "userId": "u1", "traits": {"vip": false},
                   "context": {"personas": {"computation_class": "audience", "computation_key": "vip"}}}),
            None,
        ),
        (
            "a coalesced Personas identify with an audience exit and a trait false creates",
            json!({"type": "identify", "userId": "u1", "traits": {"vip": false, "power_user": false},
                   "context": {"personas": {"computation_class": "audience", "computation_key": "vip",
                       "computations": [
                           {"computation_class": "audience", "computation_key": "vip"},
                           {"computation_class": "trait", "computation_key": "power_user"}]}}}),
            Some(json!({"role": "user", "external_id": "u1",
                        "custom_attributes": {"vip": false, "power_user": false}})),
        ),
        (
            "a coalesced Personas identify of exits only creates none",
            json!({"type": "identify", "userId": "u1", "traits": {"vip": false, "ltv": null},
                   "context": {"personas": {"computation_class": "audience", "computation_key": "vip",
                       "computations": [
                           {"computation_class": "audience", "computation_key": "vip"},
                           {"computation_class": "trait", "computation_key": "ltv"}]}}}),
            None,
        ),
        (
            "an email-only user is created by email",
            json!({"type": "identify", "traits": {"email": "a@example.com", "name": "Ann"}}),
            Some(json!({"role": "user", "email": "a@example.com", "name": "Ann"})),
        ),
        (
            "the create carries every field the update writes; clears (null) are left out",
            json!({"type": "identify", "userId": "u1", "timestamp": "2024-05-01T00:00:00Z",
                   "traits": {"email": "a@example.com", "firstName": "Ann", "lastName": "Lee",
                              "phone": 353_871_234_567_i64, "avatar": "https://example.com/a.png",
                              "createdAt": "2020-01-01T00:00:00Z", "vip": true, "gone": null,
                              "tags": ["a", "b"]},
                   "context": {"active": true, "Intercom": {"unsubscribedFromEmails": true}}}),
            Some(
                json!({"role": "user", "external_id": "u1", "email": "a@example.com",
                        "name": "Ann Lee", "phone": "353871234567",
                        "avatar": "https://example.com/a.png", "signed_up_at": 1_577_836_800,
                        "last_seen_at": 1_714_521_600, "unsubscribed_from_emails": true,
                        "custom_attributes": {"vip": true, "tags": "a, b"}}),
            ),
        ),
        (
            "a value with a cleared field: the clear is not in the create",
            json!({"type": "identify", "userId": "u1", "traits": {"name": null, "ltv": 5}}),
            Some(json!({"role": "user", "external_id": "u1", "custom_attributes": {"ltv": 5}})),
        ),
        (
            "a plain identify (identity only) creates",
            json!({"type": "identify", "userId": "u1"}),
            Some(json!({"role": "user", "external_id": "u1"})),
        ),
        (
            "a group attach creates a member Intercom does not know (joining is not an exit)",
            json!({"type": "group", "userId": "u1", "groupId": "acme", "traits": {"name": "Acme"},
                   "context": {"traits": {"email": "u1@example.com"}}}),
            Some(json!({"role": "user", "external_id": "u1", "email": "u1@example.com"})),
        ),
    ];
    for (what, message, expected) in cases {
        let plan = plan(message);
        assert!(
            matches!(plan.steps[0].op, Op::ResolveContact { .. }),
            "{what}: starts with the resolve step"
        );
        assert_eq!(create_body(&plan), expected, "{what}");
    }
}

#[test]
fn the_plan_says_what_depends_on_what_and_what_each_step_produces() {
    let plan = plan(json!({"type": "identify", "userId": "su3r73", "traits": {
        "email": "avenger@example.com", "company": {"id": "123", "name": "Iñigo & Co"}}}));
    let shape: Vec<(Op, Vec<StepId>, Option<Produces>)> = plan
        .steps
        .iter()
        .map(|s| (s.op.clone(), s.depends_on.clone(), s.produces.clone()))
        .collect();
    // The create carries what the update writes, and the update says it is done by it.
    let create = create_body(&plan).unwrap();
    assert_eq!(
        create,
        json!({"role": "user", "external_id": "su3r73", "email": "avenger@example.com"})
    );
    assert_eq!(
        plan.steps[1].request.body,
        Some(json!({"external_id": "su3r73", "email": "avenger@example.com"}))
    );
    assert_eq!(
        shape,
        vec![
            (
                Op::ResolveContact {
                    lookup: ContactLookup::ExternalId("su3r73".into()),
                    on_missing: OnMissing::Create(plan.contact_create().unwrap().clone()),
                },
                vec![],
                Some(Produces::ContactId),
            ),
            (
                Op::UpdateContact {
                    done_by_create: true
                },
                vec![StepId(0)],
                None
            ),
            (
                Op::UpsertCompany {
                    company_id: "123".into()
                },
                vec![],
                Some(Produces::CompanyId {
                    company_id: "123".into()
                }),
            ),
            (
                Op::AttachCompany {
                    company_id: "123".into()
                },
                vec![StepId(1), StepId(2)],
                None
            ),
        ]
    );
}

#[test]
fn known_ids_skip_the_lookups() {
    let known = KnownIds {
        contact_id: Some("65f0c0ffee".into()),
        company_ids: BTreeMap::from([("acme".to_string(), "6600aa".to_string())]),
    };
    let identify = plan_with(
        json!({"type": "identify", "userId": "u1", "traits": {"vip": true,
               "companies": [{"id": "acme", "remove": true}, {"id": "acme2", "name": "Acme 2"}]}}),
        &known,
        LongStrings::Truncate,
    )
    .unwrap();
    assert_eq!(
        requests(&identify),
        vec![
            json!({"method": "PUT", "path": "/contacts/65f0c0ffee", "body": {"external_id": "u1", "custom_attributes": {"vip": true}}}),
            json!({"method": "DELETE", "path": "/contacts/65f0c0ffee/companies/6600aa", "body": null}),
            upsert_company(json!({"company_id": "acme2", "name": "Acme 2"})),
            json!({"method": "POST", "path": "/contacts/65f0c0ffee/companies", "body": {"id": "{company_id}"}}),
        ]
    );
    let track = plan_with(
        json!({"type": "track", "userId": "u1", "event": "Signed Up", "timestamp": "2024-05-01T00:00:00Z"}),
        &known,
        LongStrings::Truncate,
    )
    .unwrap();
    assert_eq!(
        requests(&track),
        vec![event(
            json!({"event_name": "Signed Up", "created_at": 1_714_521_600, "id": "65f0c0ffee"})
        )]
    );
}

#[test]
fn a_company_only_attached_to_is_not_upserted_when_its_id_is_known() {
    let known = KnownIds {
        contact_id: None,
        company_ids: BTreeMap::from([("acme".to_string(), "6600aa".to_string())]),
    };
    let attach_to = |contact: &str| json!({"method": "POST", "path": format!("/contacts/{contact}/companies"), "body": {"id": "6600aa"}});
    // A Personas membership group: a user, no traits.
    let membership = json!({"type": "group", "userId": "u1", "groupId": "acme", "traits": {},
        "context": {"traits": {"email": "u1@example.com"},
                    "personas": {"computation_class": "audience", "computation_key": "high_value"}}});
    let plan = plan_with(membership.clone(), &known, LongStrings::Truncate).unwrap();
    assert_eq!(
        requests(&plan),
        vec![search("external_id", "u1"), attach_to("{contact_id}")]
    );
    assert_eq!(plan.steps[1].depends_on, vec![StepId(0)]);
    assert!(plan.attributes.is_empty());
    // With the contact's id known too: the attach is the whole message.
    let both = KnownIds {
        contact_id: Some("65f0c0ffee".into()),
        ..known.clone()
    };
    let plan = plan_with(membership.clone(), &both, LongStrings::Truncate).unwrap();
    assert_eq!(requests(&plan), vec![attach_to("65f0c0ffee")]);
    assert_eq!(
        plan.steps[0].op,
        Op::AttachCompany {
            company_id: "acme".into()
        }
    );
    assert!(plan.steps[0].depends_on.is_empty());
    // An identify's `company` that names only the id: the same.
    let identify = plan_with(
        json!({"type": "identify", "userId": "u1", "traits": {"vip": true, "company": {"id": "acme"}}}),
        &both,
        LongStrings::Truncate,
    )
    .unwrap();
    assert_eq!(
        requests(&identify),
        vec![
            json!({"method": "PUT", "path": "/contacts/65f0c0ffee",
                   "body": {"external_id": "u1", "custom_attributes": {"vip": true}}}),
            attach_to("65f0c0ffee"),
        ]
    );
    // Without the id: upserted, and attached by the id the upsert answers with.
    let unknown = plan_with(membership, &KnownIds::nothing(), LongStrings::Truncate).unwrap();
    assert_eq!(
        requests(&unknown),
        vec![
            search("external_id", "u1"),
            upsert_company(json!({"company_id": "acme"})),
            attach()
        ]
    );
    // A group carrying traits still upserts, with the id known; the attach then takes the
    // upsert's answer (`{company_id}`), not the cached id.
    for message in [
        json!({"type": "group", "userId": "u1", "groupId": "acme", "traits": {"name": "Acme"}}),
        json!({"type": "group", "userId": "u1", "groupId": "acme", "traits": {"high_value": true},
               "context": {"personas": {"computation_class": "audience", "computation_key": "high_value"}}}),
        json!({"type": "group", "userId": "u1", "groupId": "acme", "traits": {"gone": null}}),
    ] {
        let plan = plan_with(message.clone(), &both, LongStrings::Truncate).unwrap();
        let requests = requests(&plan);
        assert_eq!(requests.len(), 2, "{message}");
        assert_eq!(requests[0]["path"], "/companies", "{message}");
        assert_eq!(
            requests[1],
            json!({"method": "POST", "path": "/contacts/65f0c0ffee/companies", "body": {"id": "{company_id}"}}),
            "{message}"
        );
    }
    // An account's own group (no user) upserts, known id or not.
    let account = plan_with(
        json!({"type": "group", "groupId": "acme", "traits": {}}),
        &both,
        LongStrings::Truncate,
    )
    .unwrap();
    assert_eq!(
        requests(&account),
        vec![upsert_company(json!({"company_id": "acme"}))]
    );
}

#[test]
fn the_update_is_done_by_the_create_only_when_the_resolve_step_may_create() {
    let update_flags = |plan: &Plan| -> Vec<bool> {
        plan.steps
            .iter()
            .filter_map(|s| match s.op {
                Op::UpdateContact { done_by_create } => Some(done_by_create),
                _ => None,
            })
            .collect()
    };
    let entry = json!({"type": "identify", "userId": "u1", "traits": {"vip": true}});
    assert_eq!(update_flags(&plan(entry.clone())), vec![true]);
    // An exit may not create: its update always runs (on a contact the search found).
    let exit = json!({"type": "identify", "userId": "u1", "traits": {"vip": false}});
    assert_eq!(update_flags(&plan(exit)), vec![false]);
    // A known contact id: no resolve step, nothing creates, the update runs.
    let known = KnownIds {
        contact_id: Some("65f0c0ffee".into()),
        company_ids: BTreeMap::new(),
    };
    let plan = plan_with(entry, &known, LongStrings::Truncate).unwrap();
    assert_eq!(update_flags(&plan), vec![false]);
    assert_eq!(plan.contact_create(), None);
}

#[test]
fn the_dry_run_shows_the_create_with_its_values_in_place_of_the_update() {
    let dry_run = |plan: &Plan| -> Vec<Value> {
        plan.dry_run_requests()
            .into_iter()
            .map(|r| r.to_json())
            .collect()
    };
    let entry = plan(json!({"type": "identify", "userId": "u1", "traits": {
        "email": "a@example.com", "vip": true, "company": {"id": "acme", "name": "Acme"}}}));
    assert_eq!(
        dry_run(&entry),
        vec![
            search("external_id", "u1"),
            json!({"method": "POST", "path": "/contacts", "body": {"role": "user",
                   "external_id": "u1", "email": "a@example.com", "custom_attributes": {"vip": true}}}),
            upsert_company(json!({"company_id": "acme", "name": "Acme"})),
            attach(),
        ]
    );
    // An exit creates nothing: the update an existing contact gets.
    let exit = plan(json!({"type": "identify", "userId": "u1", "traits": {"vip": false}}));
    assert_eq!(
        dry_run(&exit),
        vec![
            search("external_id", "u1"),
            put(json!({"external_id": "u1", "custom_attributes": {"vip": false}})),
        ]
    );
    // A group attach creates a missing member with its identity.
    let group = plan(json!({"type": "group", "userId": "u1", "groupId": "acme", "traits": {}}));
    assert_eq!(
        dry_run(&group),
        vec![
            search("external_id", "u1"),
            json!({"method": "POST", "path": "/contacts", "body": {"role": "user", "external_id": "u1"}}),
            upsert_company(json!({"company_id": "acme"})),
            attach(),
        ]
    );
}

#[test]
fn track_rules() {
    let ts = "2024-05-01T00:00:00Z";
    let t = 1_714_521_600;
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "seed: the purchase with revenue and currency",
            json!({"type": "track", "userId": "u1", "event": "Product Purchased", "timestamp": ts,
                   "properties": {"order_ID": "2969302398", "category": "boots",
                                  "product_name": "yellow_cowboy_boots", "revenue": 99.95, "currency": "EUR"}}),
            json!({"event_name": "Product Purchased", "created_at": t, "user_id": "u1",
                   "metadata": {"order_ID": "2969302398", "category": "boots",
                                "product_name": "yellow_cowboy_boots",
                                "price": {"amount": 9995, "currency": "EUR"}}}),
        ),
        (
            "seed: the track example with price and currency but no revenue keeps them as metadata",
            json!({"type": "track", "userId": "u1", "event": "Product Purchased", "timestamp": ts,
                   "properties": {"order_ID": "2969302398", "category": "boots",
                                  "product_name": "yellow_cowboy_boots", "price": 99.95, "currency": "EUR"}}),
            json!({"event_name": "Product Purchased", "created_at": t, "user_id": "u1",
                   "metadata": {"order_ID": "2969302398", "category": "boots",
                                "product_name": "yellow_cowboy_boots", "price": 99.95, "currency": "EUR"}}),
        ),
        (
            "revenue without currency: usd",
            json!({"type": "track", "userId": "u1", "event": "Order Completed", "timestamp": ts,
                   "properties": {"revenue": 2999}}),
            json!({"event_name": "Order Completed", "created_at": t, "user_id": "u1",
                   "metadata": {"price": {"amount": 299_900, "currency": "usd"}}}),
        ),
        (
            "Personas audience event: booleans as strings",
            json!({"type": "track", "userId": "u1", "event": "Audience Entered", "timestamp": ts,
                   "properties": {"audience_key": "high_value", "high_value": true}}),
            json!({"event_name": "Audience Entered", "created_at": t, "user_id": "u1",
                   "metadata": {"audience_key": "high_value", "high_value": "true"}}),
        ),
        (
            "metadata: scalars only, arrays joined, objects and nulls dropped, strings cut",
            json!({"type": "track", "userId": "u1", "event": "E", "timestamp": ts,
                   "properties": {"a": {"b": 1}, "list": ["x", 2], "deep": [{"c": 1}], "none": null,
                                  "n": 3, "s": "y".repeat(300)}}),
            json!({"event_name": "E", "created_at": t, "user_id": "u1",
                   "metadata": {"list": "x, 2", "n": 3, "s": "y".repeat(255)}}),
        ),
        (
            "at most 10 metadata keys, the first ones kept",
            json!({"type": "track", "userId": "u1", "event": "E", "timestamp": ts,
                   "properties": {"k01": 1, "k02": 2, "k03": 3, "k04": 4, "k05": 5, "k06": 6,
                                  "k07": 7, "k08": 8, "k09": 9, "k10": 10, "k11": 11, "k12": 12}}),
            json!({"event_name": "E", "created_at": t, "user_id": "u1",
                   "metadata": {"k01": 1, "k02": 2, "k03": 3, "k04": 4, "k05": 5, "k06": 6,
                                "k07": 7, "k08": 8, "k09": 9, "k10": 10}}),
        ),
        (
            "no userId: the email from context.traits; no properties: no metadata",
            json!({"type": "track", "event": "E", "timestamp": ts,
                   "context": {"traits": {"email": "a@example.com"}}}),
            json!({"event_name": "E", "created_at": t, "email": "a@example.com"}),
        ),
        (
            "no timestamp: created_at is the caller's now",
            json!({"type": "track", "userId": "u1", "event": "E"}),
            json!({"event_name": "E", "created_at": NOW, "user_id": "u1"}),
        ),
        (
            "no timestamp: created_at is originalTimestamp",
            json!({"type": "track", "userId": "u1", "event": "E",
                   "originalTimestamp": "2024-05-01T02:00:00+02:00"}),
            json!({"event_name": "E", "created_at": t, "user_id": "u1"}),
        ),
        (
            "timestamp wins over originalTimestamp",
            json!({"type": "track", "userId": "u1", "event": "E", "timestamp": ts,
                   "originalTimestamp": "2020-01-01T00:00:00Z"}),
            json!({"event_name": "E", "created_at": t, "user_id": "u1"}),
        ),
        (
            "Intercom's typed metadata objects pass: Monetary Amount and Rich Link",
            json!({"type": "track", "userId": "u1", "event": "Invoice Paid", "timestamp": ts,
                   "properties": {
                       "price": {"amount": 34_999, "currency": "eur"},
                       "invoice": {"url": "https://example.com/i/1", "value": "Invoice 1"}}}),
            json!({"event_name": "Invoice Paid", "created_at": t, "user_id": "u1",
                   "metadata": {
                       "price": {"amount": 34_999, "currency": "eur"},
                       "invoice": {"url": "https://example.com/i/1", "value": "Invoice 1"}}}),
        ),
        (
            "typed objects of the wrong shape are dropped, as are arrays holding them",
            json!({"type": "track", "userId": "u1", "event": "E", "timestamp": ts,
                   "properties": {
                       "float_cents": {"amount": 99.95, "currency": "usd"},
                       "text_cents": {"amount": "9995", "currency": "usd"},
                       "no_currency": {"amount": 9995},
                       "extra_key": {"amount": 9995, "currency": "usd", "tax": 1},
                       "link_number": {"url": "https://example.com", "value": 1},
                       "links": [{"url": "https://example.com", "value": "x"}],
                       "kept": "yes"}}),
            json!({"event_name": "E", "created_at": t, "user_id": "u1",
                   "metadata": {"kept": "yes"}}),
        ),
        (
            "revenue + currency still become price, and a typed object counts toward the 10 keys",
            json!({"type": "track", "userId": "u1", "event": "E", "timestamp": ts,
                   "properties": {"link": {"url": "https://example.com", "value": "x"},
                                  "k02": 2, "k03": 3, "k04": 4, "k05": 5, "k06": 6, "k07": 7,
                                  "k08": 8, "k09": 9, "revenue": 1.5, "currency": "gbp",
                                  "k11": 11}}),
            json!({"event_name": "E", "created_at": t, "user_id": "u1",
                   "metadata": {"link": {"url": "https://example.com", "value": "x"},
                                "k02": 2, "k03": 3, "k04": 4, "k05": 5, "k06": 6, "k07": 7,
                                "k08": 8, "k09": 9,
                                "price": {"amount": 150, "currency": "gbp"}}}),
        ),
    ];
    for (what, message, body) in cases {
        let plan = plan(message);
        assert_eq!(requests(&plan), vec![event(body)], "{what}");
        assert!(
            plan.attributes.is_empty(),
            "{what}: events need no data attributes"
        );
    }
}

#[test]
fn group_rules() {
    let cases: Vec<(&str, Value, Vec<Value>)> = vec![
        (
            "seed: group without a user upserts the company only",
            json!({"type": "group", "groupId": "companyId123", "traits": {"name": "Segment"}}),
            vec![upsert_company(
                json!({"company_id": "companyId123", "name": "Segment"}),
            )],
        ),
        (
            "group with a user: upsert, then attach by the Intercom company id",
            json!({"type": "group", "userId": "u1", "groupId": "acme", "traits": {
                "name": "Acme", "plan": "Enterprise", "monthly_spend": 155.98,
                "createdAt": "2020-01-01T00:00:00Z", "employees": 100, "website": "https://acme.test",
                "industry": "Anvils", "region": "EU", "vip": true}}),
            vec![
                search("external_id", "u1"),
                upsert_company(
                    json!({"company_id": "acme", "name": "Acme", "plan": "Enterprise",
                                       "website": "https://acme.test", "industry": "Anvils",
                                       "size": 100, "monthly_spend": 155,
                                       "remote_created_at": 1_577_836_800,
                                       "custom_attributes": {"region": "EU", "vip": true}}),
                ),
                attach(),
            ],
        ),
        (
            "Personas account computation: prefix + KEY on the company, even for a key like `plan`",
            json!({"type": "group", "groupId": "acme", "traits": {"high_value": true, "plan": "Gold"},
                   "context": {"personas": {"computation_class": "audience", "computation_key": "high_value",
                                            "computations": [{"computation_key": "plan"}]}}}),
            vec![upsert_company(json!({"company_id": "acme",
                 "custom_attributes": {"account_high_value": true, "account_plan": "Gold"}}))],
        ),
        (
            "Personas membership group (attach) with no traits",
            json!({"type": "group", "userId": "u1", "groupId": "acme", "traits": {},
                   "context": {"personas": {"computation_class": "audience", "computation_key": "high_value"}}}),
            vec![
                search("external_id", "u1"),
                upsert_company(json!({"company_id": "acme"})),
                attach(),
            ],
        ),
        (
            "Intercom's standard company fields are fields: size (or employees) truncated, \
             remote_created_at, monthly_spend from a numeric string",
            json!({"type": "group", "userId": "u1", "groupId": "acme", "traits": {
                "name": "Acme", "size": 51.9, "employees": 7, "remote_created_at": 1_577_836_800,
                "monthlySpend": "99.5", "plan": "Pro", "website": "https://acme.test",
                "industry": "Anvils", "seats": 3}}),
            vec![
                search("external_id", "u1"),
                upsert_company(json!({"company_id": "acme", "name": "Acme", "plan": "Pro",
                                      "website": "https://acme.test", "industry": "Anvils",
                                      "size": 51, "monthly_spend": 99,
                                      "remote_created_at": 1_577_836_800,
                                      "custom_attributes": {"seats": 3}})),
                attach(),
            ],
        ),
        (
            "a standard field of a type it cannot take is left out, not made a custom attribute",
            json!({"type": "group", "groupId": "acme", "traits": {
                "size": "51-200", "plan": {"tier": 1}, "industry": true, "vip": true}}),
            vec![upsert_company(
                json!({"company_id": "acme", "custom_attributes": {"vip": true}}),
            )],
        ),
        (
            "a generic group keeps its trait names",
            json!({"type": "group", "groupId": "acme", "traits": {"high_value": true}}),
            vec![upsert_company(
                json!({"company_id": "acme", "custom_attributes": {"high_value": true}}),
            )],
        ),
    ];
    for (what, message, expected) in cases {
        assert_eq!(requests(&plan(message)), expected, "{what}");
    }
}

#[test]
fn the_data_attributes_a_message_needs() {
    let identify = plan(json!({"type": "identify", "userId": "u1", "traits": {
        "email": "a@example.com", "vip": true, "ltv": 5, "tags": ["a"], "bucket": "gold",
        "gone": null, "address": {"city": "x"}, "company": {"id": "acme", "seats": 3}}}));
    let need = |model, name: &str, data_type| AttributeNeed {
        model,
        name: name.into(),
        data_type,
    };
    assert_eq!(
        identify.attributes,
        vec![
            need(Model::Contact, "vip", DataType::Boolean),
            need(Model::Contact, "ltv", DataType::Float),
            need(Model::Contact, "tags", DataType::String),
            need(Model::Contact, "bucket", DataType::String),
            need(Model::Company, "seats", DataType::Float),
        ]
    );
    assert_eq!(
        identify.attributes[0].create_request().to_json(),
        json!({"method": "POST", "path": "/data_attributes",
               "body": {"name": "vip", "model": "contact", "data_type": "boolean"}})
    );
    let group = plan(
        json!({"type": "group", "groupId": "acme", "traits": {"high_value": true},
        "context": {"personas": {"computation_key": "high_value"}}}),
    );
    assert_eq!(
        group.attributes,
        vec![need(
            Model::Company,
            "account_high_value",
            DataType::Boolean
        )]
    );
    // Intercom's standard company fields are never data attributes to create.
    let standard = plan(json!({"type": "group", "groupId": "acme", "traits": {
        "name": "Acme", "plan": "Pro", "size": 10, "employees": 12, "website": "https://a.test",
        "industry": "Anvils", "monthly_spend": 5, "monthlySpend": 6, "remote_created_at": 1,
        "createdAt": 2, "created_at": 3, "seats": 4}}));
    assert_eq!(
        standard.attributes,
        vec![need(Model::Company, "seats", DataType::Float)]
    );
    let body = standard.steps[0].request.body.clone().unwrap();
    assert_eq!(body["custom_attributes"], json!({"seats": 4}));
    assert_eq!(body["size"], json!(10));
    assert_eq!(body["monthly_spend"], json!(5));
    assert_eq!(body["remote_created_at"], json!(1));
}

#[test]
fn warnings_name_what_was_changed() {
    let plan = plan(json!({"type": "identify", "userId": "u1", "traits": {
        "address": {"city": "x"}, "bio": "a".repeat(300), "createdAt": "someday",
        "company": {"plan": "x"}}}));
    assert_eq!(
        plan.warnings,
        vec![
            Warning::UnparsableDate {
                field: "createdAt".into()
            },
            Warning::DroppedObject {
                field: "address".into()
            },
            Warning::Truncated {
                field: "bio".into(),
                chars: 300
            },
            Warning::CompanyWithoutId {
                field: "company".into()
            },
        ]
    );
    let group = self::plan(json!({"type": "group", "groupId": "acme", "traits": {
        "size": "51-200", "plan": {"tier": 1}, "industry": true}}));
    assert_eq!(
        group.warnings,
        vec![
            Warning::WrongFieldType {
                field: "plan".into(),
                expected: "a string"
            },
            Warning::WrongFieldType {
                field: "industry".into(),
                expected: "a string"
            },
            Warning::WrongFieldType {
                field: "size".into(),
                expected: "a number"
            },
        ]
    );
    let metadata = self::plan(json!({"type": "track", "userId": "u1", "event": "E",
        "properties": {"price": {"amount": 99.95, "currency": "usd"}}}));
    assert_eq!(
        metadata.warnings,
        vec![Warning::DroppedMetadataObject {
            field: "price".into()
        }]
    );
    assert!(
        metadata.warnings[0]
            .to_string()
            .contains("neither a Monetary Amount")
    );
    let track = self::plan(
        json!({"type": "track", "userId": "u1", "event": "E", "properties": {
        "k01": 1, "k02": 2, "k03": 3, "k04": 4, "k05": 5, "k06": 6, "k07": 7, "k08": 8, "k09": 9,
        "k10": 10, "k11": 11, "k12": 12}}),
    );
    assert_eq!(
        track.warnings,
        vec![Warning::DroppedMetadataKeys {
            keys: vec!["k11".into(), "k12".into()]
        }]
    );
}

#[test]
fn messages_that_cannot_be_mapped() {
    let cases: Vec<(&str, Value, LongStrings, MapError)> = vec![
        (
            "identify with neither userId nor email",
            json!({"type": "identify", "anonymousId": "a1", "traits": {"vip": true}}),
            LongStrings::Truncate,
            MapError::NoIdentifier,
        ),
        (
            "track with neither userId nor email",
            json!({"type": "track", "anonymousId": "a1", "event": "E"}),
            LongStrings::Truncate,
            MapError::NoIdentifier,
        ),
        (
            "a long string with intercom.long_strings = reject",
            json!({"type": "identify", "userId": "u1", "traits": {"bio": "ü".repeat(256)}}),
            LongStrings::Reject,
            MapError::LongString {
                field: "bio".into(),
                chars: 256,
            },
        ),
        (
            "a long company name with reject",
            json!({"type": "group", "groupId": "g", "traits": {"name": "n".repeat(300)}}),
            LongStrings::Reject,
            MapError::LongString {
                field: "name".into(),
                chars: 300,
            },
        ),
    ];
    for (what, message, long_strings, expected) in cases {
        assert_eq!(
            plan_with(message, &KnownIds::nothing(), long_strings),
            Err(expected),
            "{what}"
        );
    }
    assert_eq!(
        MapError::NoIdentifier.to_string(),
        "Intercom needs a user id or an email: the message has neither `userId` nor an email"
    );
}

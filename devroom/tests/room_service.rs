//! Twirp RoomService against devroom, driven by the official Rust server SDK (`livekit-api`,
//! binary protobuf) and by raw protojson requests.

mod common;

use common::{grant_token, http, Devroom, API_KEY, API_SECRET};
use livekit_api::access_token::VideoGrants;
use livekit_api::services::room::{CreateRoomOptions, RoomClient};
use livekit_api::services::ServiceError;

fn twirp_code(e: &ServiceError) -> String {
    match e {
        ServiceError::Twirp(livekit_api::services::ServerError::Twirp(c)) => c.code.clone(),
        other => format!("not a twirp error: {other}"),
    }
}

#[tokio::test]
async fn room_client_creates_lists_and_deletes_rooms() {
    let server = Devroom::start("roomclient", &[]);
    let client = RoomClient::with_api_key(&server.http_url(), API_KEY, API_SECRET);

    let room = client
        .create_room(
            "svc-room",
            CreateRoomOptions {
                empty_timeout: 120,
                departure_timeout: 7,
                max_participants: 5,
                metadata: "hello".into(),
                ..Default::default()
            },
        )
        .await
        .expect("create_room");
    assert_eq!(room.name, "svc-room");
    assert!(room.sid.starts_with("RM_"), "{}", room.sid);
    assert_eq!(room.empty_timeout, 120);
    assert_eq!(room.departure_timeout, 7);
    assert_eq!(room.max_participants, 5);
    assert_eq!(room.metadata, "hello");
    assert!(room.creation_time > 0);

    // Creating it again returns the same room.
    let again = client.create_room("svc-room", Default::default()).await.unwrap();
    assert_eq!(again.sid, room.sid);

    client.create_room("other-room", Default::default()).await.unwrap();
    let all = client.list_rooms(vec![]).await.expect("list_rooms");
    let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
    assert!(names.contains(&"svc-room") && names.contains(&"other-room"), "{names:?}");
    let one = client.list_rooms(vec!["svc-room".into()]).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].sid, room.sid);

    let participants = client.list_participants("svc-room").await.expect("list_participants");
    assert!(participants.is_empty());

    client.delete_room("svc-room").await.expect("delete_room");
    let after = client.list_rooms(vec![]).await.unwrap();
    assert!(after.iter().all(|r| r.name != "svc-room"));
    let err = client.delete_room("svc-room").await.unwrap_err();
    assert_eq!(twirp_code(&err), "not_found");
    let err = client.list_participants("nope").await.unwrap_err();
    assert_eq!(twirp_code(&err), "not_found");
}

#[tokio::test]
async fn room_client_is_refused_without_valid_credentials() {
    let server = Devroom::start("roomclient_auth", &[]);
    let wrong_secret = RoomClient::with_api_key(&server.http_url(), API_KEY, "not-the-secret");
    let err = wrong_secret.create_room("x", Default::default()).await.unwrap_err();
    assert_eq!(twirp_code(&err), "unauthenticated");
    let err = wrong_secret.list_rooms(vec![]).await.unwrap_err();
    assert_eq!(twirp_code(&err), "unauthenticated");

    let wrong_key = RoomClient::with_api_key(&server.http_url(), "otherkey", API_SECRET);
    assert_eq!(
        twirp_code(&wrong_key.list_rooms(vec![]).await.unwrap_err()),
        "unauthenticated"
    );

    // A join-only token has no roomCreate / roomList / roomAdmin.
    let join_only = RoomClient::with_token(&server.http_url(), &common::join_token("alice", "r"));
    assert_eq!(
        twirp_code(&join_only.create_room("r", Default::default()).await.unwrap_err()),
        "unauthenticated"
    );
    assert_eq!(twirp_code(&join_only.list_rooms(vec![]).await.unwrap_err()), "unauthenticated");

    // Nothing was created by the refused calls.
    let ok = RoomClient::with_api_key(&server.http_url(), API_KEY, API_SECRET);
    assert!(ok.list_rooms(vec![]).await.unwrap().is_empty());
}

#[tokio::test]
async fn twirp_protojson_bodies_and_errors() {
    let server = Devroom::start("twirp_json", &[]);
    let url = |m: &str| format!("{}/twirp/livekit.RoomService/{m}", server.http_url());
    let create = grant_token(VideoGrants {
        room_create: true,
        room_list: true,
        ..Default::default()
    });
    let bearer = format!("Bearer {create}");
    let json = [("Content-Type", "application/json"), ("Authorization", bearer.as_str())];

    // camelCase and snake_case field names are both accepted.
    let (st, ct, body) = http(
        "POST",
        &url("CreateRoom"),
        &json,
        br#"{"name":"json-room","emptyTimeout":30,"max_participants":3}"#.to_vec(),
    )
    .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    assert!(ct.starts_with("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["name"], "json-room");
    assert_eq!(v["emptyTimeout"], 30);
    assert_eq!(v["maxParticipants"], 3);

    let (st, _, body) = http("POST", &url("ListRooms"), &json, b"{}".to_vec()).await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["rooms"][0]["name"], "json-room");

    // No token at all.
    let (st, ct, body) = http(
        "POST",
        &url("ListRooms"),
        &[("Content-Type", "application/json")],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(st, 401);
    assert!(ct.starts_with("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], "unauthenticated");
    assert!(v["msg"].as_str().unwrap().len() > 3);

    // Expired token.
    let expired = devroom::auth::sign(
        &serde_json::json!({"iss": API_KEY, "exp": 1000, "video": {"roomList": true}}),
        API_SECRET,
    );
    let b = format!("Bearer {expired}");
    let (st, _, body) = http(
        "POST",
        &url("ListRooms"),
        &[("Content-Type", "application/json"), ("Authorization", &b)],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(st, 401);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], "unauthenticated");
    assert!(v["msg"].as_str().unwrap().contains("expired"), "{v}");

    // roomAdmin for another room does not grant ListParticipants here.
    let admin_other = grant_token(VideoGrants {
        room_admin: true,
        room: "another".into(),
        ..Default::default()
    });
    let b = format!("Bearer {admin_other}");
    let (st, _, body) = http(
        "POST",
        &url("ListParticipants"),
        &[("Content-Type", "application/json"), ("Authorization", &b)],
        br#"{"room":"json-room"}"#.to_vec(),
    )
    .await;
    assert_eq!(st, 401, "{}", String::from_utf8_lossy(&body));

    // Malformed body, unknown method, wrong content type.
    let (st, _, body) = http("POST", &url("CreateRoom"), &json, b"{not json".to_vec()).await;
    assert_eq!(st, 400);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["code"], "malformed");
    let (st, _, body) = http("POST", &url("NoSuchMethod"), &json, b"{}".to_vec()).await;
    assert_eq!(st, 404);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["code"], "bad_route");
    let (st, _, _) = http(
        "POST",
        &url("ListRooms"),
        &[("Content-Type", "text/plain"), ("Authorization", bearer.as_str())],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(st, 404);
    // Binary protobuf garbage is a clean 400, not a crash.
    let (st, _, _) = http(
        "POST",
        &url("CreateRoom"),
        &[("Content-Type", "application/protobuf"), ("Authorization", bearer.as_str())],
        vec![0xff, 0xff, 0xff, 0x01],
    )
    .await;
    assert_eq!(st, 400);

    // DeleteRoom via JSON.
    let (st, _, _) = http("POST", &url("DeleteRoom"), &json, br#"{"room":"json-room"}"#.to_vec()).await;
    assert_eq!(st, 200);
    let (st, _, body) = http("POST", &url("DeleteRoom"), &json, br#"{"room":"json-room"}"#.to_vec()).await;
    assert_eq!(st, 404);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["code"], "not_found");
}

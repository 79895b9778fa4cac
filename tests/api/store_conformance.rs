//! One conformance suite for every storage backend: the same checks, run against each.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use tempfile::TempDir;
use tracknum::config::FsyncPolicy;
use tracknum::domain::{Codec, Country, OrderInput, Record, TrackingNumber, packed};
use tracknum::store::embedded::BUCKET_SERIALS as EMBEDDED_BUCKET;
use tracknum::store::{
    EmbeddedOptions, EmbeddedStore, ImportPart, ImportQueue, ImportStore, LeaseSource, RecordEntry,
    RecordStore, RedisOptions, RedisStore, Removal, ReplyStore, Store, StoreError, Swap,
    clock_serial,
};

use crate::helpers::{RedisLike, TestRedis, sleep_past, sleep_past_time};
use chrono::SubsecRound;
use tracknum::store::redis::{
    BUCKET_SERIALS as REDIS_BUCKET, HISTORY_KEY, LEAD, LEASE_LEAST, SERIAL_KEY, SKEW_MARGIN,
    bucket_place,
};

fn tn(number: &str) -> TrackingNumber {
    TrackingNumber::parse(number).unwrap()
}

fn entry(number: &str, ttl: Duration) -> RecordEntry {
    RecordEntry {
        tracking_number: tn(number),
        serial: None,
        expires_at: Utc::now() + chrono::Duration::from_std(ttl).unwrap(),
        value: Bytes::from(format!(r#"{{"tracking_number":"{number}"}}"#)),
    }
}

fn with_json(mut entry: RecordEntry, json: &str) -> RecordEntry {
    entry.value = Bytes::from(json.to_owned());
    entry
}

async fn conformance(store: &dyn Store) {
    records(store).await;
    changes(store).await;
    idempotency_keys(store).await;
    imports(store).await;
    import_swaps(store).await;
    import_queue(store).await;
}

/// An import part changes only from what its writer read (a job's state: never written over by
/// a writer that missed a change); a call sent again after it landed is told it did.
async fn import_swaps(store: &dyn Store) {
    store.sync().await.unwrap();
    let hour = Utc::now() + chrono::Duration::hours(1);
    let swap = |expected: Option<&'static [u8]>, new: &'static [u8]| {
        store.swap_import_part("S1", ImportPart::Job, expected, new, hour)
    };
    let read = || store.import_part("S1", ImportPart::Job);
    assert!(swap(None, b"v1").await.unwrap(), "made where there is none");
    assert!(!swap(None, b"v2").await.unwrap(), "not made twice");
    assert!(
        !swap(Some(b"v0"), b"v2").await.unwrap(),
        "not from another value"
    );
    assert_eq!(read().await.unwrap(), Some(Bytes::from_static(b"v1")));
    assert!(swap(Some(b"v1"), b"v2").await.unwrap());
    assert!(
        swap(Some(b"v1"), b"v2").await.unwrap(),
        "sent again after it landed"
    );
    assert!(
        !swap(Some(b"v1"), b"v3").await.unwrap(),
        "a writer that missed v2 loses"
    );
    assert_eq!(read().await.unwrap(), Some(Bytes::from_static(b"v2")));
    // Gone (a store that lost its data): nothing is written back from what was read.
    store
        .drop_import_parts("S1", &[ImportPart::Job])
        .await
        .unwrap();
    assert!(!swap(Some(b"v2"), b"v3").await.unwrap());
    assert_eq!(read().await.unwrap(), None);

    // An expired part is no part.
    let soon = Utc::now() + chrono::Duration::milliseconds(300);
    let brief = |expected: Option<&'static [u8]>, new: &'static [u8], until| {
        store.swap_import_part("S2", ImportPart::Job, expected, new, until)
    };
    assert!(brief(None, b"brief", soon).await.unwrap());
    sleep_past_time(soon).await;
    store.sync().await.unwrap();
    assert!(!brief(Some(b"brief"), b"late", hour).await.unwrap());
    assert!(brief(None, b"again", hour).await.unwrap());
    assert_eq!(
        store.import_part("S2", ImportPart::Job).await.unwrap(),
        Some(Bytes::from_static(b"again"))
    );
}

/// Queued imports go to one worker each, in order; a job whose worker goes quiet goes to the
/// next worker that asks, and an acknowledged one never comes back.
async fn import_queue(store: &dyn Store) {
    // What the application's sync chore does every 200 ms (here, after the waits above):
    // without it, a write-behind store refuses new writes once a second has passed unsynced.
    store.sync().await.unwrap();
    // Each wait below is the staleness, waited out from the moment it counts from.
    let stale = Duration::from_millis(600);
    assert_eq!(store.next_import("w1", stale).await.unwrap(), None);
    store.enqueue_import("Q1").await.unwrap();
    store.enqueue_import("Q2").await.unwrap();
    let first = store.next_import("w1", stale).await.unwrap().unwrap();
    assert_eq!(first.id, "Q1");
    let second = store.next_import("w2", stale).await.unwrap().unwrap();
    let w2_heard = Instant::now();
    assert_eq!(second.id, "Q2");
    assert_eq!(store.next_import("w3", stale).await.unwrap(), None);

    // w1 keeps working on its job (half the staleness in); w2 goes quiet.
    tokio::time::sleep(stale / 2).await;
    store.touch_import("w1", &first).await.unwrap();
    sleep_past(w2_heard + stale).await;
    let taken_over = store.next_import("w3", stale).await.unwrap().unwrap();
    assert_eq!(
        taken_over.id, "Q2",
        "the quiet worker's job goes to another"
    );
    assert_eq!(store.next_import("w4", stale).await.unwrap(), None);

    store.ack_import(&first).await.unwrap();
    store.ack_import(&taken_over).await.unwrap();
    sleep_past(Instant::now() + stale).await;
    assert_eq!(store.next_import("w5", stale).await.unwrap(), None);
    store.sync().await.unwrap();
    store.enqueue_import("Q3").await.unwrap();
    let third = store.next_import("w5", stale).await.unwrap().unwrap();
    assert_eq!(third.id, "Q3");
    store.ack_import(&third).await.unwrap();

    // Two quiet workers: their jobs go to two others, one each.
    store.enqueue_import("Q4").await.unwrap();
    store.enqueue_import("Q5").await.unwrap();
    store.next_import("w6", stale).await.unwrap().unwrap();
    store.next_import("w7", stale).await.unwrap().unwrap();
    sleep_past(Instant::now() + stale).await;
    let mut taken: Vec<String> = Vec::new();
    for worker in ["w8", "w9"] {
        let job = store.next_import(worker, stale).await.unwrap().unwrap();
        store.sync().await.unwrap();
        store.ack_import(&job).await.unwrap();
        taken.push(job.id);
    }
    taken.sort();
    assert_eq!(taken, ["Q4", "Q5"]);
    assert_eq!(store.next_import("w10", stale).await.unwrap(), None);
}

/// Import parts read back whole until they expire, apart from other imports' parts; listings
/// come newest first, per owner and of all owners, and page by creation time.
async fn imports(store: &dyn Store) {
    let hour = Utc::now() + chrono::Duration::hours(1);
    // Dropped parts are gone at once; parts not named, and other imports, stay.
    for part in [ImportPart::File(0), ImportPart::File(1), ImportPart::Job] {
        store.put_import_part("D1", part, b"x", hour).await.unwrap();
    }
    store
        .put_import_part("D2", ImportPart::File(0), b"y", hour)
        .await
        .unwrap();
    store
        .drop_import_parts(
            "D1",
            &[ImportPart::File(0), ImportPart::File(1), ImportPart::Cancel],
        )
        .await
        .unwrap();
    assert_eq!(
        store.import_part("D1", ImportPart::File(0)).await.unwrap(),
        None
    );
    assert_eq!(
        store.import_part("D1", ImportPart::File(1)).await.unwrap(),
        None
    );
    assert!(
        store
            .import_part("D1", ImportPart::Job)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .import_part("D2", ImportPart::File(0))
            .await
            .unwrap()
            .is_some()
    );
    store.drop_import_parts("D1", &[]).await.unwrap();
    store.purge_expired().await.unwrap();

    assert_eq!(
        store.import_part("I1", ImportPart::Job).await.unwrap(),
        None
    );
    store
        .put_import_part("I1", ImportPart::Job, b"{\"v\":1}", hour)
        .await
        .unwrap();
    store
        .put_import_part("I1", ImportPart::Job, b"{\"v\":2}", hour)
        .await
        .unwrap();
    let chunk: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    store
        .put_import_part("I1", ImportPart::File(3), &chunk, hour)
        .await
        .unwrap();
    assert_eq!(
        store.import_part("I1", ImportPart::Job).await.unwrap(),
        Some(Bytes::from_static(b"{\"v\":2}"))
    );
    assert_eq!(
        store.import_part("I1", ImportPart::File(3)).await.unwrap(),
        Some(Bytes::from(chunk))
    );
    for (id, part) in [
        ("I1", ImportPart::File(4)),
        ("I1", ImportPart::Results(3)),
        ("I2", ImportPart::Job),
        ("I1", ImportPart::Cancel),
    ] {
        assert_eq!(store.import_part(id, part).await.unwrap(), None, "{part:?}");
    }

    let soon = Utc::now() + chrono::Duration::milliseconds(300);
    store
        .put_import_part("I3", ImportPart::Cancel, b"1", soon)
        .await
        .unwrap();
    store.list_import("brief", "I3", 5, soon).await.unwrap();
    assert!(
        store
            .import_part("I3", ImportPart::Cancel)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(ids(store, Some("brief"), i64::MAX, 10).await, ["I3"]);

    store.list_import("acme", "A1", 1_000, hour).await.unwrap();
    store.list_import("acme", "A2", 2_000, hour).await.unwrap();
    store.list_import("other", "B1", 1_500, hour).await.unwrap();
    assert_eq!(ids(store, Some("acme"), i64::MAX, 10).await, ["A2", "A1"]);
    assert_eq!(ids(store, Some("other"), i64::MAX, 10).await, ["B1"]);
    assert!(ids(store, Some("nobody"), i64::MAX, 10).await.is_empty());
    let newest = store.listed_imports(None, i64::MAX, 2).await.unwrap();
    assert_eq!(newest[0].id, "A2");
    assert_eq!(newest[0].created_us, 2_000);
    assert_eq!(newest[1].id, "B1");
    assert_eq!(
        ids(store, None, 1_500, 10).await[0],
        "A1",
        "a page starts below the cursor"
    );

    sleep_past_time(soon).await;
    assert_eq!(
        store.import_part("I3", ImportPart::Cancel).await.unwrap(),
        None
    );
    assert!(ids(store, Some("brief"), i64::MAX, 10).await.is_empty());
    assert_eq!(ids(store, Some("acme"), i64::MAX, 10).await, ["A2", "A1"]);
    store.purge_expired().await.unwrap();
    assert!(
        store
            .import_part("I1", ImportPart::Job)
            .await
            .unwrap()
            .is_some()
    );
}

async fn ids(store: &dyn Store, owner: Option<&str>, before_us: i64, limit: usize) -> Vec<String> {
    let listed = store.listed_imports(owner, before_us, limit).await.unwrap();
    listed.into_iter().map(|import| import.id).collect()
}

/// Compare-and-swap, expiry moves and removal: on a record just written (which a store may
/// still buffer) and on one that has been synced.
async fn changes(store: &dyn Store) {
    let long = Duration::from_secs(3600);
    for synced in [false, true] {
        let number = if synced { "CHG2" } else { "CHG1" };
        let first = entry(number, long);
        assert_eq!(
            store
                .insert_new(std::slice::from_ref(&first))
                .await
                .unwrap(),
            [true]
        );
        if synced {
            store.sync().await.unwrap();
        }
        let second = with_json(entry(number, long), r#"{"v":2}"#);
        let wrong = Bytes::from_static(b"{\"v\":0}");
        assert_eq!(store.replace(&wrong, &second).await.unwrap(), Swap::Changed);
        assert_eq!(
            store.get(&tn(number)).await.unwrap(),
            Some(first.value.clone())
        );
        assert_eq!(
            store.replace(&first.value, &second).await.unwrap(),
            Swap::Replaced
        );
        assert_eq!(
            store.get(&tn(number)).await.unwrap(),
            Some(second.value.clone())
        );
        let third = with_json(entry(number, long), r#"{"v":3}"#);
        assert_eq!(
            store.replace(&first.value, &third).await.unwrap(),
            Swap::Changed,
            "a swap from a version already replaced loses"
        );
        assert_eq!(
            store.get(&tn(number)).await.unwrap(),
            Some(second.value.clone())
        );
        assert_eq!(
            store
                .insert_new(std::slice::from_ref(&first))
                .await
                .unwrap(),
            [false],
            "a changed record still holds its number"
        );

        // Removal: conditional on the version when one is given.
        assert_eq!(
            store.remove(&tn(number), Some(&first.value)).await.unwrap(),
            Removal::Changed
        );
        assert_eq!(
            store
                .remove(&tn(number), Some(&second.value))
                .await
                .unwrap(),
            Removal::Removed
        );
        assert_eq!(store.get(&tn(number)).await.unwrap(), None);
        assert_eq!(
            store.remove(&tn(number), None).await.unwrap(),
            Removal::Missing
        );
        assert_eq!(
            store.replace(&second.value, &second).await.unwrap(),
            Swap::Changed
        );
    }
    assert_eq!(
        store.remove(&tn("NEVER"), None).await.unwrap(),
        Removal::Missing
    );

    // Expiry moves with a swap: shortened, the record goes; extended, it stays past its first
    // expiry and through a purge.
    let short = Duration::from_millis(300);
    let shortened = entry("SHRT", long);
    let extended = entry("XTND", short);
    store
        .insert_new(&[shortened.clone(), extended.clone()])
        .await
        .unwrap();
    let sooner = with_json(entry("SHRT", short), r#"{"v":"sooner"}"#);
    let later = with_json(entry("XTND", long), r#"{"v":"later"}"#);
    assert_eq!(
        store.replace(&shortened.value, &sooner).await.unwrap(),
        Swap::Replaced
    );
    assert_eq!(
        store.replace(&extended.value, &later).await.unwrap(),
        Swap::Replaced
    );
    sleep_past_time(sooner.expires_at.max(extended.expires_at)).await;
    store.purge_expired().await.unwrap();
    assert_eq!(store.get(&tn("SHRT")).await.unwrap(), None);
    assert_eq!(
        store.get(&tn("XTND")).await.unwrap(),
        Some(later.value.clone())
    );
    assert_eq!(
        store.replace(&sooner.value, &sooner).await.unwrap(),
        Swap::Changed,
        "an expired record cannot be changed"
    );
    store.sync().await.unwrap();
    assert_eq!(store.get(&tn("XTND")).await.unwrap(), Some(later.value));
}

/// Idempotency keys: one claim wins, completes with a reply that later claims see, expires.
async fn idempotency_keys(store: &dyn Store) {
    let ttl = Duration::from_secs(60);
    assert_eq!(store.claim("key-1", b"claim-a", ttl).await.unwrap(), None);
    assert_eq!(
        store.claim("key-1", b"claim-b", ttl).await.unwrap(),
        Some(Bytes::from_static(b"claim-a")),
        "a claimed key is not claimed again"
    );
    assert!(
        !store
            .complete("key-1", b"claim-b", b"reply-b", ttl)
            .await
            .unwrap()
    );
    assert!(
        store
            .complete("key-1", b"claim-a", b"reply-a", ttl)
            .await
            .unwrap()
    );
    assert_eq!(
        store.claim("key-1", b"claim-c", ttl).await.unwrap(),
        Some(Bytes::from_static(b"reply-a"))
    );
    store.sync().await.unwrap();
    assert_eq!(
        store.claim("key-1", b"claim-c", ttl).await.unwrap(),
        Some(Bytes::from_static(b"reply-a")),
        "a reply outlives a sync"
    );

    // A released claim frees the key; releasing someone else's claim does not.
    assert_eq!(store.claim("key-2", b"claim-a", ttl).await.unwrap(), None);
    store.release("key-2", b"claim-x").await.unwrap();
    assert!(
        store
            .claim("key-2", b"claim-b", ttl)
            .await
            .unwrap()
            .is_some()
    );
    store.release("key-2", b"claim-a").await.unwrap();
    assert_eq!(store.claim("key-2", b"claim-b", ttl).await.unwrap(), None);

    // Many keys at once: each answers as it would alone.
    let pair = |key: &str, claim: &str| (key.to_owned(), claim.as_bytes().to_vec());
    let held = store
        .claim_many(
            &[
                pair("key-1", "claim-m"),
                pair("many-a", "claim-m"),
                pair("key-2", "claim-m"),
                pair("many-b", "claim-m"),
            ],
            ttl,
        )
        .await
        .unwrap();
    assert_eq!(
        held,
        [
            Some(Bytes::from_static(b"reply-a")),
            None,
            Some(Bytes::from_static(b"claim-b")),
            None
        ]
    );
    let triple = |key: &str, claim: &str, reply: &str| {
        (
            key.to_owned(),
            claim.as_bytes().to_vec(),
            reply.as_bytes().to_vec(),
        )
    };
    let ours = store
        .complete_many(
            &[
                triple("many-a", "claim-m", "reply-m"),
                triple("key-2", "claim-m", "reply-x"),
                triple("many-b", "claim-m", "reply-n"),
            ],
            ttl,
        )
        .await
        .unwrap();
    assert_eq!(ours, [true, false, true], "only our own claims complete");
    assert_eq!(
        store.claim("many-b", b"claim-z", ttl).await.unwrap(),
        Some(Bytes::from_static(b"reply-n"))
    );
    assert_eq!(store.claim_many(&[], ttl).await.unwrap(), []);

    // Replies kept in one step (an import's order ids bound to their numbers): kept where the
    // key holds nothing, as a reply (no claim to complete), and what a key holds is answered.
    let kept = store
        .keep_new_many(
            &[
                ("bind-a".into(), b"reply-a".to_vec()),
                ("many-b".into(), b"reply-x".to_vec()),
            ],
            ttl,
        )
        .await
        .unwrap();
    assert_eq!(kept, [None, Some(Bytes::from_static(b"reply-n"))]);
    assert_eq!(
        store.claim("bind-a", b"claim-q", ttl).await.unwrap(),
        Some(Bytes::from_static(b"reply-a"))
    );
    assert!(
        !store
            .complete("bind-a", b"claim-q", b"reply-q", ttl)
            .await
            .unwrap()
    );
    let again = store
        .keep_new_many(&[("bind-a".into(), b"reply-b".to_vec())], ttl)
        .await
        .unwrap();
    assert_eq!(again, [Some(Bytes::from_static(b"reply-a"))]);
    assert_eq!(store.keep_new_many(&[], ttl).await.unwrap(), []);

    // More keys than one call of the store takes (an import's chunk of order ids): each still
    // answers as it would alone.
    let keys: Vec<String> = (0..600).map(|i| format!("chunk-{i}")).collect();
    let theirs: Vec<(String, Vec<u8>)> = keys[..150]
        .iter()
        .map(|key| (key.clone(), b"claim-theirs".to_vec()))
        .collect();
    assert!(
        store
            .claim_many(&theirs, ttl)
            .await
            .unwrap()
            .iter()
            .all(Option::is_none)
    );
    let ours: Vec<(String, Vec<u8>)> = keys
        .iter()
        .map(|key| (key.clone(), b"claim-ours".to_vec()))
        .collect();
    let held = store.claim_many(&ours, ttl).await.unwrap();
    for (at, held) in held.iter().enumerate() {
        let expected = (at < 150).then(|| Bytes::from_static(b"claim-theirs"));
        assert_eq!(held, &expected, "key {at}");
    }
    let done: Vec<(String, Vec<u8>, Vec<u8>)> = keys
        .iter()
        .map(|key| {
            (
                key.clone(),
                b"claim-ours".to_vec(),
                format!("reply-{key}").into_bytes(),
            )
        })
        .collect();
    let completed = store.complete_many(&done, ttl).await.unwrap();
    for (at, completed) in completed.iter().enumerate() {
        assert_eq!(*completed, at >= 150, "key {at}");
    }
    let replayed = store.claim_many(&ours[590..], ttl).await.unwrap();
    for (at, held) in replayed.into_iter().enumerate() {
        assert_eq!(
            held.unwrap(),
            format!("reply-chunk-{}", 590 + at).as_bytes()
        );
    }

    // Long keys and keys with spaces work; replies expire.
    let long_key = "k ".repeat(127);
    assert_eq!(store.claim(&long_key, b"c", ttl).await.unwrap(), None);
    let reply_ttl = Duration::from_millis(300);
    assert!(
        store
            .complete(&long_key, b"c", b"r", reply_ttl)
            .await
            .unwrap()
    );
    let completed = Instant::now();
    assert!(store.claim(&long_key, b"d", ttl).await.unwrap().is_some());
    sleep_past(completed + reply_ttl).await;
    store.purge_expired().await.unwrap();
    assert_eq!(
        store.claim(&long_key, b"d", ttl).await.unwrap(),
        None,
        "the reply expired"
    );
}

async fn records(store: &dyn Store) {
    // Leases: the requested size, disjoint, increasing, above the caller's floor.
    let a = lease(store, 100, 0).await;
    assert_eq!(a.end - a.start, 100);
    let b = lease(store, 100, a.end).await;
    assert_eq!(b.end - b.start, 100);
    assert!(b.start >= a.end, "{a:?} then {b:?}");
    let floor = b.end + 1_000_000_000;
    let c = lease(store, 10, floor).await;
    assert!(c.start >= floor, "a lease honours the floor: {c:?}");

    // Records: insert once, read back, never overwrite a live one.
    let long = Duration::from_secs(3600);
    let stored = store
        .insert_new(&[entry("CONF1", long), entry("CONF2", long)])
        .await
        .unwrap();
    assert_eq!(stored, [true, true]);
    let other = with_json(
        entry("CONF1", long),
        r#"{"tracking_number":"CONF1","other":1}"#,
    );
    let again = store
        .insert_new(&[other, entry("CONF3", long)])
        .await
        .unwrap();
    assert_eq!(
        again,
        [false, true],
        "an existing record is never overwritten"
    );
    let json = store.get(&tn("CONF1")).await.unwrap().expect("stored");
    assert_eq!(json, Bytes::from(r#"{"tracking_number":"CONF1"}"#));
    let json = store.get(&tn("CONF2")).await.unwrap().expect("stored");
    assert_eq!(json, Bytes::from(r#"{"tracking_number":"CONF2"}"#));
    assert_eq!(store.get(&tn("MISSING")).await.unwrap(), None);
    assert_eq!(store.insert_new(&[]).await.unwrap(), Vec::<bool>::new());

    // Expiry: gone after its time, its space reclaimed, its key free again.
    let short = entry("SHORT", Duration::from_millis(300));
    assert_eq!(
        store
            .insert_new(std::slice::from_ref(&short))
            .await
            .unwrap(),
        [true]
    );
    assert!(store.get(&tn("SHORT")).await.unwrap().is_some());
    sleep_past_time(short.expires_at).await;
    assert_eq!(store.get(&tn("SHORT")).await.unwrap(), None);
    store.purge_expired().await.unwrap();
    assert_eq!(store.get(&tn("SHORT")).await.unwrap(), None);
    assert!(
        store.get(&tn("CONF1")).await.unwrap().is_some(),
        "purge keeps live records"
    );
    assert_eq!(
        store.insert_new(&[entry("SHORT", long)]).await.unwrap(),
        [true]
    );

    store.ping().await.unwrap();
    // Whatever a store buffers, a sync moves to where it lasts; reads see no difference.
    store.sync().await.unwrap();
    let json = store
        .get(&tn("CONF2"))
        .await
        .unwrap()
        .expect("still stored after a sync");
    assert_eq!(json, Bytes::from(r#"{"tracking_number":"CONF2"}"#));
    let other = with_json(
        entry("CONF2", long),
        r#"{"tracking_number":"CONF2","other":1}"#,
    );
    assert_eq!(store.insert_new(&[other]).await.unwrap(), [false]);
}

// Buckets: records of our numbers kept by serial, a bucket of consecutive serials together.
// Each case below is store-generic: a backend runs them with its codec (which maps its
// numbers to serials) and its bucket size. The corrupt-record case comes in two halves, with
// the backend's own way of damaging a stored record between them.

/// A number of ours: `serial` under `codec`, with origin `country` (None where the codec
/// passes the serial over).
fn number_at(codec: &Codec, country: &str, serial: u64) -> Option<TrackingNumber> {
    codec.encode(Country::parse(country), 0, serial)
}

/// The first serial of a bucket, some way past the clock (so past anything a lease handed
/// out), whose serials from `first` to `first + size` (inclusive) all get a number.
fn fresh_bucket(codec: &Codec, size: u64, skip: u64) -> u64 {
    let mut first = (clock_serial(std::time::SystemTime::now()) / size + 1000 + skip) * size;
    while !(first..=first + size).all(|s| number_at(codec, "DE", s).is_some()) {
        first += size;
    }
    first
}

/// A record of ours as the issuer writes it (serial known): packed, as the service packs it,
/// with `label` and its serial as the customer's name, so that its bytes are unique to it.
fn ours(codec: &Codec, serial: u64, ttl: Duration, label: &str) -> RecordEntry {
    let number = number_at(codec, "DE", serial).unwrap();
    RecordEntry {
        serial: Some(serial),
        ..packed_entry(number, serial, ttl, label)
    }
}

/// A new version of `entry` (made by [`ours`]) as a change writes it: the serial left for the
/// store to find.
fn next_version(entry: &RecordEntry, ttl: Duration, label: &str) -> RecordEntry {
    let serial = entry.serial.expect("an entry made by ours");
    packed_entry(entry.tracking_number, serial, ttl, label)
}

fn packed_entry(number: TrackingNumber, serial: u64, ttl: Duration, label: &str) -> RecordEntry {
    let input = OrderInput {
        customer_name: Some(format!("{label}-{serial}").into()),
        ..OrderInput::default()
    };
    packed_record(number, serial, ttl, input)
}

/// The record of `number` (serial `serial`) with `input`, until `ttl` from now, packed as the
/// service packs it; the store is left to find the serial, as in a change.
fn packed_record(
    number: TrackingNumber,
    serial: u64,
    ttl: Duration,
    input: OrderInput<'_>,
) -> RecordEntry {
    let created = Utc::now().trunc_subsecs(6);
    let expires = created + chrono::Duration::from_std(ttl).unwrap();
    let record = Record::new(number, created, expires, input.parse().unwrap(), None);
    let mut value = Vec::new();
    packed::pack(&record, Some(serial), &mut value);
    RecordEntry {
        tracking_number: number,
        serial: None,
        expires_at: expires,
        value: Bytes::from(value),
    }
}

async fn value_of(store: &dyn Store, entry: &RecordEntry) -> Option<Bytes> {
    store.get(&entry.tracking_number).await.unwrap()
}

/// Every bucket case but the corrupt one, on buckets of `size` serials numbered by `codec`.
async fn bucket_cases(store: &dyn Store, codec: &Codec, size: u64) {
    bucket_first_and_last_serial(store, codec, size).await;
    bucket_records_with_different_expiries(store, codec, size).await;
    bucket_patches_move_expiry(store, codec, size).await;
    bucket_delete_one_record(store, codec, size).await;
    bucket_concurrent_swaps(store, codec, size).await;
}

/// The first and last serial of a bucket, and the serials just outside it, each keep their
/// own record; a number with another prefix on the same serial is another number.
async fn bucket_first_and_last_serial(store: &dyn Store, codec: &Codec, size: u64) {
    let long = Duration::from_secs(3600);
    let first = fresh_bucket(codec, size, 0);
    let serials = [first - 1, first, first + size - 1, first + size];
    let entries: Vec<RecordEntry> = serials
        .iter()
        .map(|&s| ours(codec, s, long, "edge"))
        .collect();
    assert_eq!(
        store.insert_new(&entries).await.unwrap(),
        [true, true, true, true]
    );
    // A taken serial stays taken. (Only checked before a sync: a write-behind store trusts
    // that a fresh serial has no record on disk, as leases start past every one there.)
    let again = with_json(entries[1].clone(), "\u{F0}other");
    assert_eq!(store.insert_new(&[again]).await.unwrap(), [false]);
    for synced in [false, true] {
        for entry in &entries {
            assert_eq!(
                value_of(store, entry).await,
                Some(entry.value.clone()),
                "{} (synced: {synced})",
                entry.tracking_number
            );
        }
        let elsewhere = number_at(codec, "FR", first).unwrap();
        assert_eq!(store.get(&elsewhere).await.unwrap(), None, "another prefix");
        assert_eq!(
            store.remove(&elsewhere, None).await.unwrap(),
            Removal::Missing
        );
        store.sync().await.unwrap();
    }
    let first_number = &entries[1].tracking_number;
    assert_eq!(
        store.remove(first_number, None).await.unwrap(),
        Removal::Removed
    );
    for entry in [&entries[0], &entries[2], &entries[3]] {
        assert_eq!(value_of(store, entry).await, Some(entry.value.clone()));
    }
    assert_eq!(store.get(first_number).await.unwrap(), None);
}

/// Records of one bucket with different expiries: each goes at its own time, through a
/// purge, and the others stay.
async fn bucket_records_with_different_expiries(store: &dyn Store, codec: &Codec, size: u64) {
    let first = fresh_bucket(codec, size, 10);
    let (short, long) = (Duration::from_millis(300), Duration::from_secs(3600));
    let brief = ours(codec, first + 3, short, "brief");
    let lasting = ours(codec, first + 4, long, "lasting");
    store
        .insert_new(&[brief.clone(), lasting.clone()])
        .await
        .unwrap();
    store.sync().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = ours(codec, first + 5, short, "later");
    assert_eq!(
        store
            .insert_new(std::slice::from_ref(&later))
            .await
            .unwrap(),
        [true]
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(value_of(store, &brief).await, None, "expired");
    assert_eq!(value_of(store, &later).await, Some(later.value.clone()));
    store.purge_expired().await.unwrap();
    store.sync().await.unwrap();
    assert_eq!(value_of(store, &brief).await, None);
    assert_eq!(value_of(store, &later).await, Some(later.value.clone()));
    assert_eq!(value_of(store, &lasting).await, Some(lasting.value.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.purge_expired().await.unwrap();
    assert_eq!(value_of(store, &later).await, None);
    assert_eq!(value_of(store, &lasting).await, Some(lasting.value.clone()));
    // An expired record is no record: it cannot be changed or removed.
    let late = next_version(&brief, long, "late");
    assert_eq!(
        store.replace(&brief.value, &late).await.unwrap(),
        Swap::Changed
    );
    assert_eq!(
        store.remove(&later.tracking_number, None).await.unwrap(),
        Removal::Missing
    );
}

/// A PATCH that lengthens a record's expiry keeps it past its first expiry and through
/// purges; one that shortens it lets it go sooner. Their bucket neighbour is untouched.
async fn bucket_patches_move_expiry(store: &dyn Store, codec: &Codec, size: u64) {
    let first = fresh_bucket(codec, size, 20);
    let (short, long) = (Duration::from_millis(300), Duration::from_secs(3600));
    let lengthened = ours(codec, first, short, "v1");
    let shortened = ours(codec, first + 1, long, "v1");
    let neighbour = ours(codec, first + 2, long, "v1");
    let all = [lengthened.clone(), shortened.clone(), neighbour.clone()];
    assert_eq!(store.insert_new(&all).await.unwrap(), [true, true, true]);
    store.sync().await.unwrap();
    let longer = next_version(&lengthened, long, "v2");
    let sooner = next_version(&shortened, short, "v2");
    assert_eq!(
        store.replace(&lengthened.value, &longer).await.unwrap(),
        Swap::Replaced
    );
    assert_eq!(
        store.replace(&shortened.value, &sooner).await.unwrap(),
        Swap::Replaced
    );
    assert_eq!(
        value_of(store, &shortened).await,
        Some(sooner.value.clone())
    );
    sleep_past_time(sooner.expires_at.max(lengthened.expires_at)).await;
    store.purge_expired().await.unwrap();
    store.sync().await.unwrap();
    store.purge_expired().await.unwrap();
    assert_eq!(
        value_of(store, &lengthened).await,
        Some(longer.value.clone())
    );
    assert_eq!(value_of(store, &shortened).await, None, "shortened: gone");
    assert_eq!(
        value_of(store, &neighbour).await,
        Some(neighbour.value.clone())
    );
    // The lengthened record changes again from its new version only.
    let third = next_version(&lengthened, long, "v3");
    assert_eq!(
        store.replace(&lengthened.value, &third).await.unwrap(),
        Swap::Changed
    );
    assert_eq!(
        store.replace(&longer.value, &third).await.unwrap(),
        Swap::Replaced
    );
    assert_eq!(value_of(store, &lengthened).await, Some(third.value));
}

/// Deleting one record of a bucket leaves the others as they were; the deleted one stays
/// gone, cannot be changed, and its number is not taken by a stale write.
async fn bucket_delete_one_record(store: &dyn Store, codec: &Codec, size: u64) {
    let first = fresh_bucket(codec, size, 30);
    let long = Duration::from_secs(3600);
    let entries: Vec<RecordEntry> = (0..5)
        .map(|i| ours(codec, first + 10 + i, long, "del"))
        .collect();
    store.insert_new(&entries).await.unwrap();
    for synced in [false, true] {
        let gone = &entries[if synced { 3 } else { 1 }];
        assert_eq!(
            store
                .remove(
                    &gone.tracking_number,
                    Some(&Bytes::from_static(b"\xF0stale"))
                )
                .await
                .unwrap(),
            Removal::Changed
        );
        assert_eq!(
            store
                .remove(&gone.tracking_number, Some(&gone.value))
                .await
                .unwrap(),
            Removal::Removed
        );
        assert_eq!(value_of(store, gone).await, None);
        assert_eq!(
            store.remove(&gone.tracking_number, None).await.unwrap(),
            Removal::Missing
        );
        let stale = next_version(gone, long, "stale");
        assert_eq!(
            store.replace(&gone.value, &stale).await.unwrap(),
            Swap::Changed
        );
        store.sync().await.unwrap();
    }
    for i in [0, 2, 4] {
        assert_eq!(
            value_of(store, &entries[i]).await,
            Some(entries[i].value.clone())
        );
    }
    // Every record gone: the bucket is empty, and reads still answer "not found".
    for i in [0, 2, 4] {
        assert_eq!(
            store
                .remove(&entries[i].tracking_number, None)
                .await
                .unwrap(),
            Removal::Removed
        );
    }
    for entry in &entries {
        assert_eq!(value_of(store, entry).await, None);
    }
}

/// Concurrent compare-and-swaps in one bucket: on one record, exactly one of several writers
/// from the same version wins; on different records, every one lands (none undoes another).
async fn bucket_concurrent_swaps(store: &dyn Store, codec: &Codec, size: u64) {
    use futures_util::future::join_all;
    let first = fresh_bucket(codec, size, 40);
    let long = Duration::from_secs(3600);
    let entries: Vec<RecordEntry> = (0..16)
        .map(|i| ours(codec, first + i, long, "v1"))
        .collect();
    store.insert_new(&entries).await.unwrap();
    for synced in [false, true] {
        let round = if synced { "b" } else { "a" };
        // Each record's current version: v1, then what round "a" left.
        let current: Vec<Bytes> = join_all(entries.iter().map(|e| value_of(store, e)))
            .await
            .into_iter()
            .map(Option::unwrap)
            .collect();
        let contenders: Vec<(usize, RecordEntry)> = (0..entries.len())
            .flat_map(|i| (0..3).map(move |w| (i, format!("{round}-writer{w}"))))
            .map(|(i, label)| (i, next_version(&entries[i], long, &label)))
            .collect();
        let outcomes = join_all(
            contenders
                .iter()
                .map(|(i, new)| store.replace(&current[*i], new)),
        )
        .await;
        for (i, entry) in entries.iter().enumerate() {
            let won: Vec<&RecordEntry> = contenders
                .iter()
                .zip(&outcomes)
                .filter(|((at, _), outcome)| {
                    *at == i && *outcome.as_ref().unwrap() == Swap::Replaced
                })
                .map(|((_, new), _)| new)
                .collect();
            assert_eq!(
                won.len(),
                1,
                "{}: {} writers won",
                entry.tracking_number,
                won.len()
            );
            assert_eq!(value_of(store, entry).await, Some(won[0].value.clone()));
        }
        store.sync().await.unwrap();
    }
}

/// The corrupt-record case, first half: stores records on five consecutive serials of one
/// bucket and makes sure they last (synced). The backend then damages the stored bytes of the
/// middle one (its value is unique, so it can be found) and calls
/// [`corrupt_record_second_half`].
async fn corrupt_record_first_half(
    store: &dyn Store,
    codec: &Codec,
    size: u64,
) -> Vec<RecordEntry> {
    let first = fresh_bucket(codec, size, 50);
    let long = Duration::from_secs(3600);
    let entries: Vec<RecordEntry> = (0..5)
        .map(|i| ours(codec, first + 100 + i, long, "corruptible"))
        .collect();
    assert_eq!(store.insert_new(&entries).await.unwrap(), [true; 5]);
    store.sync().await.unwrap();
    entries
}

/// The corrupt-record case, second half, on a store whose copy of `entries[2]` was damaged:
/// that record is an error (a 500: never served, never "not found"), its neighbours read,
/// change and go as usual, and the damaged one stays an error through their changes.
async fn corrupt_record_second_half(store: &dyn Store, entries: &[RecordEntry]) {
    let victim = &entries[2];
    let refused = store.get(&victim.tracking_number).await;
    assert!(
        matches!(refused, Err(StoreError::Corrupt(_))),
        "a damaged record: {refused:?}"
    );
    for (i, entry) in entries.iter().enumerate().filter(|(i, _)| *i != 2) {
        assert_eq!(
            value_of(store, entry).await,
            Some(entry.value.clone()),
            "neighbour {i}"
        );
    }
    let long = Duration::from_secs(3600);
    let changed = next_version(&entries[1], long, "changed");
    assert_eq!(
        store.replace(&entries[1].value, &changed).await.unwrap(),
        Swap::Replaced
    );
    assert_eq!(
        store
            .remove(&entries[3].tracking_number, Some(&entries[3].value))
            .await
            .unwrap(),
        Removal::Removed
    );
    store.sync().await.unwrap();
    assert_eq!(value_of(store, &entries[1]).await, Some(changed.value));
    assert_eq!(value_of(store, &entries[3]).await, None);
    for entry in [&entries[0], &entries[4]] {
        assert_eq!(value_of(store, entry).await, Some(entry.value.clone()));
    }
    assert!(matches!(
        store.get(&victim.tracking_number).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(
        store
            .replace(&victim.value, &next_version(victim, long, "x"))
            .await
            .is_err(),
        "a damaged record is not changed from what it held"
    );
}

fn options(fsync: FsyncPolicy) -> EmbeddedOptions {
    EmbeddedOptions {
        fsync,
        ..EmbeddedOptions::default()
    }
}

#[tokio::test]
async fn embedded_store_conforms() {
    let dir = TempDir::new().unwrap();
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Everysec] {
        let sub = dir.path().join(format!("{fsync:?}"));
        let (store, _secret) = EmbeddedStore::open(&sub, None, options(fsync)).unwrap();
        conformance(&store).await;
    }
}

#[tokio::test]
async fn embedded_buckets_conform() {
    let dir = TempDir::new().unwrap();
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Everysec] {
        let sub = dir.path().join(format!("{fsync:?}"));
        let (store, _secret) = EmbeddedStore::open(&sub, None, options(fsync)).unwrap();
        let codec = store.codec().clone();
        bucket_cases(&store, &codec, EMBEDDED_BUCKET).await;
    }
}

/// A lease starts past every bucket on disk, whole (its last entries could be damaged), even
/// one past the counter (a file restored from elsewhere, a counter gone back).
#[tokio::test]
async fn embedded_a_lease_starts_past_every_bucket() {
    let dir = TempDir::new().unwrap();
    let (store, _) = EmbeddedStore::open(dir.path(), None, options(FsyncPolicy::Everysec)).unwrap();
    let codec = store.codec().clone();
    // A minute ahead of the clock, so neither the counter nor the clock is past it.
    let ahead = clock_serial(std::time::SystemTime::now()) + 60_000_000;
    let serial = (ahead..)
        .find(|&s| number_at(&codec, "DE", s).is_some())
        .unwrap();
    let record = ours(&codec, serial, Duration::from_secs(3600), "ahead");
    assert_eq!(store.insert_new(&[record]).await.unwrap(), [true]);
    store.sync().await.unwrap();
    let leased = store.lease(10, 0).await.unwrap();
    let bucket_end = (serial / EMBEDDED_BUCKET + 1) * EMBEDDED_BUCKET;
    assert!(
        leased.start >= bucket_end,
        "{leased:?}, bucket ends at {bucket_end}"
    );
}

/// A data dir keeps the bucket size it was made with: opened again with another, its records
/// are still found where they are.
#[tokio::test]
async fn embedded_a_data_dir_keeps_its_bucket_size() {
    let dir = TempDir::new().unwrap();
    let sized = |serials| EmbeddedOptions {
        bucket_serials: serials,
        ..options(FsyncPolicy::Always)
    };
    assert!(
        EmbeddedStore::open(dir.path(), None, sized(100)).is_err(),
        "100 does not divide a node"
    );
    let (store, _) = EmbeddedStore::open(dir.path(), None, sized(64)).unwrap();
    let codec = store.codec().clone();
    let first = fresh_bucket(&codec, 64, 0);
    let entries: Vec<RecordEntry> = (first + 60..first + 70)
        .map(|s| ours(&codec, s, Duration::from_secs(3600), "sized"))
        .collect();
    store.insert_new(&entries).await.unwrap();
    drop(store);
    let (store, _) = EmbeddedStore::open(dir.path(), None, sized(EMBEDDED_BUCKET)).unwrap();
    for entry in &entries {
        assert_eq!(value_of(&store, entry).await, Some(entry.value.clone()));
    }
    let leased = store.lease(10, 0).await.unwrap();
    assert!(
        leased.start >= (first / 64 + 2) * 64,
        "past the 64-serial bucket: {leased:?}"
    );
}

/// A flipped byte in the data file, inside one record's entry in its bucket.
#[tokio::test]
async fn embedded_corrupt_record_beside_healthy_ones() {
    let dir = TempDir::new().unwrap();
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Everysec] {
        let sub = dir.path().join(format!("{fsync:?}"));
        let (store, _secret) = EmbeddedStore::open(&sub, None, options(fsync)).unwrap();
        let codec = store.codec().clone();
        let entries = corrupt_record_first_half(&store, &codec, EMBEDDED_BUCKET).await;
        drop(store);
        let file = sub.join("tracknum.redb");
        let mut bytes = std::fs::read(&file).unwrap();
        let value = &entries[2].value;
        let found = bytes
            .windows(value.len())
            .enumerate()
            .filter(|(_, window)| *window == value.as_ref())
            .map(|(at, _)| at)
            .collect::<Vec<_>>();
        assert!(!found.is_empty(), "the record's bytes are in the file");
        for at in found {
            bytes[at + value.len() / 2] ^= 0x01;
        }
        std::fs::write(&file, &bytes).unwrap();
        let (store, _secret) = EmbeddedStore::open(&sub, None, options(fsync)).unwrap();
        corrupt_record_second_half(&store, &entries).await;
    }
}

#[tokio::test]
async fn embedded_purge_reclaims_expired_records() {
    let dir = TempDir::new().unwrap();
    let (store, _) = EmbeddedStore::open(dir.path(), None, options(FsyncPolicy::Always)).unwrap();
    let short = Duration::from_millis(100);
    let entries: Vec<_> = (0..50).map(|i| entry(&format!("P{i}"), short)).collect();
    store.insert_new(&entries).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.purge_expired().await.unwrap(), 50);
    assert_eq!(store.purge_expired().await.unwrap(), 0);
}

/// Uploads that never became a job (no `job` part) are found and removed, all their parts, apart
/// from the live ones; imports that are jobs stay whole.
#[tokio::test]
async fn embedded_abandoned_uploads_are_removed_and_jobs_kept() {
    let dir = TempDir::new().unwrap();
    let (store, _) = EmbeddedStore::open(dir.path(), None, options(FsyncPolicy::Always)).unwrap();
    let hour = Utc::now() + chrono::Duration::hours(1);
    let later = hour + chrono::Duration::hours(1);
    let put = |id: &'static str, part, until| store.put_import_part(id, part, b"x", until);
    for id in ["U1", "U2", "U3"] {
        put(id, ImportPart::File(0), hour).await.unwrap();
        put(id, ImportPart::File(1), hour).await.unwrap();
    }
    // Written again with another expiry: the part is found by its newer entry as well.
    put("U1", ImportPart::File(1), later).await.unwrap();
    assert!(
        store
            .swap_import_part("U2", ImportPart::Job, None, b"{}", hour)
            .await
            .unwrap()
    );
    let removed = store
        .drop_abandoned_uploads(&|id| id == "U3")
        .await
        .unwrap();
    assert_eq!(removed, 1, "U1 only");
    for part in [ImportPart::File(0), ImportPart::File(1)] {
        assert_eq!(store.import_part("U1", part).await.unwrap(), None);
        assert!(store.import_part("U2", part).await.unwrap().is_some());
        assert!(store.import_part("U3", part).await.unwrap().is_some());
    }
    assert_eq!(store.drop_abandoned_uploads(&|_| false).await.unwrap(), 1);
    assert_eq!(
        store.import_part("U3", ImportPart::File(0)).await.unwrap(),
        None
    );
    assert_eq!(store.drop_abandoned_uploads(&|_| false).await.unwrap(), 0);
    assert!(
        store
            .import_part("U2", ImportPart::Job)
            .await
            .unwrap()
            .is_some()
    );
    // Nothing of U1 comes back when its old expiry entries come due.
    store.purge_expired().await.unwrap();
    assert_eq!(
        store.import_part("U1", ImportPart::File(1)).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn embedded_queued_imports_outlive_a_restart() {
    let dir = TempDir::new().unwrap();
    let hour = Duration::from_secs(3600);
    let (store, _) = EmbeddedStore::open(dir.path(), None, options(FsyncPolicy::Everysec)).unwrap();
    store.enqueue_import("R1").await.unwrap();
    let taken = store.next_import("w1", hour).await.unwrap().unwrap();
    assert_eq!(taken.id, "R1");
    assert_eq!(store.next_import("w2", hour).await.unwrap(), None);
    drop(store);
    let (store, _) = EmbeddedStore::open(dir.path(), None, options(FsyncPolicy::Everysec)).unwrap();
    let again = store.next_import("w2", hour).await.unwrap().unwrap();
    assert_eq!(
        again.id, "R1",
        "a job taken before the restart is taken again"
    );
    store.ack_import(&again).await.unwrap();
    assert_eq!(store.next_import("w3", hour).await.unwrap(), None);
}

/// Replies kept in one step (an import's order ids) are on disk, not only in memory as a
/// claim is: they outlive a restart under both fsync policies.
#[tokio::test]
async fn embedded_kept_replies_outlive_a_restart() {
    let ttl = Duration::from_secs(3600);
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Everysec] {
        let dir = TempDir::new().unwrap();
        let (store, _) = EmbeddedStore::open(dir.path(), None, options(fsync)).unwrap();
        let keys = [(":order:A".to_owned(), b"reply-a".to_vec())];
        assert_eq!(store.keep_new_many(&keys, ttl).await.unwrap(), [None]);
        store.sync().await.unwrap();
        drop(store);
        let (store, _) = EmbeddedStore::open(dir.path(), None, options(fsync)).unwrap();
        assert_eq!(
            store.claim(":order:A", b"claim", ttl).await.unwrap(),
            Some(Bytes::from_static(b"reply-a")),
            "{fsync:?}"
        );
    }
}

#[tokio::test]
async fn embedded_counter_survives_reopening() {
    let dir = TempDir::new().unwrap();
    let (store, secret) =
        EmbeddedStore::open(dir.path(), None, options(FsyncPolicy::Everysec)).unwrap();
    let first = store.lease(1000, 0).await.unwrap();
    drop(store);
    let (store, again) =
        EmbeddedStore::open(dir.path(), None, options(FsyncPolicy::Everysec)).unwrap();
    assert_eq!(secret, again, "the generated secret is kept");
    let second = store.lease(1000, 0).await.unwrap();
    assert!(second.start >= first.end);
}

/// A big block is handed over at once, ahead of the clock: the pool paces its serials
/// (`paced_in`), so none is handed out before the clock has passed it, and a restart (the
/// file wiped or not) starts past every one of them.
#[tokio::test]
async fn embedded_a_big_lease_comes_at_once_and_is_paced_by_the_pool() {
    let dir = TempDir::new().unwrap();
    let (store, _) = EmbeddedStore::open(dir.path(), None, options(FsyncPolicy::Everysec)).unwrap();
    assert_eq!(
        store.paced_in(),
        Some(tracknum::domain::codec::NODE_SERIALS)
    );
    let started = std::time::Instant::now();
    let block = store.lease(2_000_000, 0).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "a 2 s block waited {:?}",
        started.elapsed()
    );
    let now = clock_serial(std::time::SystemTime::now());
    let partition = tracknum::domain::codec::NODE_SERIALS;
    assert!(
        block.end % partition > now + 500_000,
        "{block:?} is ahead of {now}"
    );
    drop(store);
    std::fs::remove_dir_all(dir.path()).unwrap();
    let (store, _) = EmbeddedStore::open(dir.path(), None, options(FsyncPolicy::Everysec)).unwrap();
    let after = store.lease(1000, 0).await.unwrap();
    // A wiped file starts at the clock: past what the pool handed out, not past the block.
    assert!(after.start % partition >= now, "{after:?} after {now}");
}

const REDIS_SECRET: &[u8] = b"conformance";

fn redis_options() -> RedisOptions {
    RedisOptions {
        fingerprint: "fp".into(),
        timeout: Duration::from_millis(500),
        wait_replicas: 0,
        codec: Codec::new(REDIS_SECRET),
    }
}

on_each_redis!(
    redis_store_conforms,
    redis_claims_by_script_conform,
    redis_records_of_our_numbers_share_buckets,
    redis_bucket_records_change_and_go_one_by_one,
    redis_import_queue_comes_back_after_data_loss,
    redis_lease_jumps_past_everything_after_data_loss,
    redis_lease_jumps_when_the_counter_moved_back,
    redis_lease_is_cut_to_the_room_the_lead_leaves,
);

async fn redis_import_queue_comes_back_after_data_loss(mut redis: TestRedis) {
    let store = RedisStore::new(&redis.target(), redis_options()).unwrap();
    let stale = Duration::from_secs(60);
    store.enqueue_import("L1").await.unwrap();
    assert_eq!(
        store.next_import("w1", stale).await.unwrap().unwrap().id,
        "L1"
    );
    redis.restart_empty();
    let store = RedisStore::new(&redis.target(), redis_options()).unwrap();
    // The stream and its group are gone with the data: the queue starts again.
    assert_eq!(store.next_import("w1", stale).await.unwrap(), None);
    store.enqueue_import("L2").await.unwrap();
    assert_eq!(
        store.next_import("w2", stale).await.unwrap().unwrap().id,
        "L2"
    );
}

async fn redis_store_conforms(redis: TestRedis) {
    let store = RedisStore::new(&redis.target(), redis_options()).unwrap();
    conformance(&store).await;
    bucket_cases(&store, &Codec::new(REDIS_SECRET), REDIS_BUCKET).await;
}

/// Claims as on Redis 6.2, which refuses `SET … NX … GET`: by script, with the same results.
async fn redis_claims_by_script_conform(redis: TestRedis) {
    let store = RedisStore::new(&redis.target(), redis_options()).unwrap();
    store.claim_by_script();
    idempotency_keys(&store).await;
}

async fn redis_lease_jumps_past_everything_after_data_loss(mut redis: TestRedis) {
    let store = RedisStore::new(&redis.target(), redis_options()).unwrap();
    let before = lease(&store, 1000, 0).await;
    redis.restart_empty();
    // A fresh store, as a new instance would have: no floor of its own.
    let fresh = RedisStore::new(&redis.target(), redis_options()).unwrap();
    let after = lease(&fresh, 1000, 0).await;
    assert!(after.start >= before.end, "{before:?} then {after:?}");
}

/// What a failover that lost writes leaves behind, made by hand: a counter behind what was
/// leased, on a node with another replication history (or below a caller's floor).
async fn redis_lease_jumps_when_the_counter_moved_back(redis: TestRedis) {
    let store = RedisStore::new(&redis.target(), redis_options()).unwrap();
    let a = lease(&store, 1000, 0).await;
    let b = lease(&store, 1000, a.end).await;
    assert_eq!(b.start, a.end, "no jump while nothing was lost");

    // Lost writes on a promoted replica: the counter is back at `a`, the history is another's.
    let back = a.start.to_string();
    let _: () = redis.cmd(&["SET", SERIAL_KEY, &back]);
    let _: () = redis.cmd(&["SET", HISTORY_KEY, "an-older-master 0"]);
    let fresh = RedisStore::new(&redis.target(), redis_options()).unwrap();
    let c = lease(&fresh, 1000, 0).await;
    assert!(c.start >= b.end, "{b:?} then {c:?}");
    let d = lease(&fresh, 1000, c.end).await;
    assert_eq!(d.start, c.end, "one jump per history");

    // The same history, but a counter below what a caller already holds: it jumps too.
    let _: () = redis.cmd(&["SET", SERIAL_KEY, &back]);
    let e = lease(&store, 1000, d.end).await;
    assert!(e.start > d.end, "{d:?} then {e:?}");

    // A lease that would run the counter further ahead of the clock than the lead waits.
    let err = store.lease(LEAD + 1, e.end).await.unwrap_err();
    assert!(matches!(err, StoreError::WaitForClock(_)), "{err:?}");
    lease(&store, 1000, e.end).await;
}

/// After a jump the counter stands at the end of the lead: a big lease then gets the room the
/// clock has made since, not a wait until all of it fits (a fleet that leased 2 s blocks
/// stopped issuing for 2 s after every restart of an empty Redis).
async fn redis_lease_is_cut_to_the_room_the_lead_leaves(redis: TestRedis) {
    let store = RedisStore::new(&redis.target(), redis_options()).unwrap();
    // An empty Redis: the first lease jumps to the clock plus the lead and the margin.
    let jump = lease(&store, 1000, 0).await;
    let err = store.lease(LEASE_LEAST, jump.end).await.unwrap_err();
    assert!(matches!(err, StoreError::WaitForClock(_)), "{err:?}");
    // Once the margin has passed, the clock makes room at 10^6 serials a second.
    tokio::time::sleep(Duration::from_micros(SKEW_MARGIN) + Duration::from_millis(60)).await;
    let big = 10_000_000;
    let cut = store.lease(big, jump.end).await.unwrap();
    assert_eq!(cut.start, jump.end);
    let len = cut.end - cut.start;
    assert!(
        len >= LEASE_LEAST && len < big / 10,
        "{cut:?}: {len} serials"
    );
    let counter: u64 = redis.cmd::<String>(&["GET", SERIAL_KEY]).parse().unwrap();
    assert_eq!(counter, cut.end, "the counter moved by what was leased");
    // The room is used up: the next lease waits for the clock, then gets some. (A test that
    // stalled here for over LEASE_LEAST µs finds that much room, and gets only that.)
    match store.lease(big, cut.end).await {
        Err(StoreError::WaitForClock(_)) => {}
        Ok(stalled) => {
            assert_eq!(stalled.start, cut.end);
            assert!(stalled.end - stalled.start < big / 10, "{stalled:?}");
        }
        Err(err) => panic!("lease failed: {err:?}"),
    }
    let floor: u64 = redis.cmd::<String>(&["GET", SERIAL_KEY]).parse().unwrap();
    let next = lease(&store, big, floor).await;
    assert_eq!(next.start, floor);
    assert!(next.end - next.start < big, "{next:?}");
}

/// A lease, asked again while the store says its counter waits for the clock (as the refill
/// task does).
async fn lease(store: &dyn Store, size: u64, floor: u64) -> std::ops::Range<u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        match store.lease(size, floor).await {
            Ok(range) => return range,
            Err(StoreError::WaitForClock(wait)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(wait).await;
            }
            Err(err) => panic!("lease failed: {err:?}"),
        }
    }
}

/// A record with all seven inputs, varied as real orders are (countries, weights, order times
/// with their offsets, customer ids, names and slugs), as the issuer packs it.
fn varied_record(codec: &Codec, serial: u64, i: u64) -> Option<RecordEntry> {
    const COUNTRIES: [&str; 8] = ["MY", "ID", "SG", "TH", "VN", "PH", "DE", "US"];
    const NAMES: [&str; 6] = [
        "RedBox Logistics",
        "Acme Parcel Co",
        "Kedai Runcit Ahmad",
        "Nordlicht Versand GmbH",
        "Toko Sinar Jaya",
        "Blue Harbour Trading",
    ];
    let pick = |salt: u64, n: usize| {
        (i.wrapping_mul(2_654_435_761).rotate_left(salt as u32) % n as u64) as usize
    };
    let name = format!("{} {}", NAMES[pick(3, NAMES.len())], i % 997);
    let origin = COUNTRIES[pick(1, 8)];
    let input = OrderInput {
        origin_country_id: Some(origin.into()),
        destination_country_id: Some(COUNTRIES[pick(7, 8)].into()),
        weight: Some(format!("{}.{:03}", 1 + i % 30, i * 7 % 1000).into()),
        created_at: Some(
            format!(
                "2026-{:02}-{:02}T{:02}:{:02}:{:02}+0{}:00",
                1 + i % 12,
                1 + i % 28,
                i % 24,
                i * 7 % 60,
                i * 13 % 60,
                i % 9
            )
            .into(),
        ),
        customer_id: Some(
            uuid::Uuid::from_u128(u128::from(i) * 0x9E37_79B9_7F4A_7C15)
                .to_string()
                .into(),
        ),
        customer_name: Some(name.into()),
        customer_slug: None,
    };
    let tag = codec.customer_tag(Some("key"));
    let number = codec.encode(Country::parse(origin), tag, serial)?;
    let month = Duration::from_secs(30 * 86_400);
    Some(RecordEntry {
        serial: Some(serial),
        ..packed_record(number, serial, month, input)
    })
}

/// Not a test: the measurement behind the bucket size. For each size, 200,000 records with
/// all seven inputs, in batches of 1000, moved to disk every `per_flush` records (the sync
/// tick: about 16,000 at 80,000 a second, 1,000 at 5,000 a second); then the data file's
/// growth per record, and the time the flushes took (a debug build: compare sizes only).
/// `cargo test --test api bucket_sizes_measured -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn embedded_bucket_sizes_measured() {
    use std::os::unix::fs::MetadataExt;
    const RECORDS: u64 = 200_000;
    for per_flush in [16_000u64, 1_000] {
        for size in [96u64, 128, 192, 256, 384] {
            let dir = TempDir::new().unwrap();
            let options = EmbeddedOptions {
                bucket_serials: size,
                ..options(FsyncPolicy::Everysec)
            };
            let (store, _) = EmbeddedStore::open(dir.path(), None, options).unwrap();
            let codec = store.codec().clone();
            let file = dir.path().join("tracknum.redb");
            store.sync().await.unwrap();
            let before = std::fs::metadata(&file).unwrap();
            let (mut stored, mut i, mut since_flush) = (0u64, 0u64, 0u64);
            let mut flushing = Duration::ZERO;
            while stored < RECORDS {
                let serials = store.lease(1000, 0).await.unwrap();
                let batch: Vec<RecordEntry> = serials
                    .filter_map(|serial| {
                        i += 1;
                        varied_record(&codec, serial, i)
                    })
                    .collect();
                stored += batch.len() as u64;
                since_flush += batch.len() as u64;
                store.insert_new(&batch).await.unwrap();
                if since_flush >= per_flush {
                    let started = std::time::Instant::now();
                    store.sync().await.unwrap();
                    flushing += started.elapsed();
                    since_flush = 0;
                }
            }
            store.sync().await.unwrap();
            drop(store);
            let after = std::fs::metadata(&file).unwrap();
            let grown = |a: u64, b: u64| (a as f64 - b as f64) / stored as f64;
            eprintln!(
                "bucket {size:>3}, flush every {per_flush:>5}: {:>6.1} B/record file, {:>6.1} \
                 B/record on disk, flushes {:?} in all",
                grown(after.len(), before.len()),
                grown(after.blocks() * 512, before.blocks() * 512),
                flushing
            );
        }
    }
}

/// A record of our number with `serial` and origin `origin`, packed as the service packs it,
/// until `ttl` from now; `weight` tells versions apart, `name` makes it longer.
fn packed_ours(
    serial: u64,
    origin: &str,
    ttl: Duration,
    weight: &str,
    name: Option<&str>,
) -> RecordEntry {
    let input = OrderInput {
        origin_country_id: Some(origin.into()),
        weight: Some(weight.into()),
        customer_name: name.map(Into::into),
        ..OrderInput::default()
    };
    let number = number_at(&Codec::new(REDIS_SECRET), origin, serial).unwrap();
    RecordEntry {
        serial: Some(serial),
        ..packed_record(number, serial, ttl, input)
    }
}

/// A version of `entry` to swap in: another weight, another expiry.
fn version(entry: &RecordEntry, ttl: Duration, weight: &str) -> RecordEntry {
    let serial = entry.serial.unwrap();
    let origin = &entry.tracking_number.as_str()[..2];
    let mut next = packed_ours(serial, origin, ttl, weight, None);
    next.serial = None; // as the service swaps: the store reads the serial from the number
    next
}

/// The first serial of a bucket a while from now (no other record of the test near it).
fn a_bucket(index: u64) -> u64 {
    let now = tracknum::store::clock_serial(std::time::SystemTime::now());
    (now / REDIS_BUCKET + 1_000 + index) * REDIS_BUCKET
}

const HOUR: Duration = Duration::from_secs(3600);

/// Records of our numbers on Redis: the first and last serial of a bucket and its neighbours'
/// are apart; a number that shares a serial with an issued one (another prefix) is another
/// record; a write sent again is its own, another record for a taken number is refused; a
/// record too long for a bucket is kept all the same; the bucket lives as long as its
/// longest-lived record, in Redis' compact form.
async fn redis_records_of_our_numbers_share_buckets(redis: TestRedis) {
    let store = RedisStore::new(&redis.target(), redis_options()).unwrap();
    let first = a_bucket(0);
    let last = first + REDIS_BUCKET - 1;
    let entries: Vec<RecordEntry> = [first - 1, first, first + 1, last, last + 1]
        .iter()
        .map(|&serial| packed_ours(serial, "MY", HOUR, "1", None))
        .collect();
    assert_eq!(store.insert_new(&entries).await.unwrap(), [true; 5]);
    for entry in &entries {
        assert_eq!(
            store.get(&entry.tracking_number).await.unwrap(),
            Some(entry.value.clone())
        );
    }
    let codec = Codec::new(REDIS_SECRET);
    let place = |entry: &RecordEntry| bucket_place(&codec, &entry.tracking_number).unwrap();
    assert_eq!(place(&entries[1]).bucket, place(&entries[3]).bucket);
    assert_ne!(place(&entries[0]).bucket, place(&entries[1]).bucket);
    assert_ne!(place(&entries[4]).bucket, place(&entries[3]).bucket);

    // Another prefix on the same serial is another number: not found, then a record of its own.
    let same_serial = packed_ours(first, "SG", HOUR, "2", None);
    assert_eq!(store.get(&same_serial.tracking_number).await.unwrap(), None);
    assert_eq!(
        store
            .insert_new(std::slice::from_ref(&same_serial))
            .await
            .unwrap(),
        [true]
    );
    assert_eq!(
        store.get(&entries[1].tracking_number).await.unwrap(),
        Some(entries[1].value.clone())
    );

    // The same write again is its own; another record for a taken number is refused, and
    // changes nothing.
    let mut twice = entries[1..3].to_vec();
    let mut other = packed_ours(first + 1, "MY", HOUR, "3", None);
    other.tracking_number = entries[2].tracking_number;
    twice[1] = other;
    twice.push(packed_ours(first + 3, "MY", HOUR, "1", None));
    assert_eq!(store.insert_new(&twice).await.unwrap(), [true, false, true]);
    assert_eq!(
        store.get(&entries[2].tracking_number).await.unwrap(),
        Some(entries[2].value.clone())
    );

    // Longer than a field holds: its tail in a second field, read, changed and removed whole.
    let name = "Very Long Customer Name Incorporated, Shipping & Handling Division 42";
    let long = packed_ours(first + 4, "MY", HOUR, "1", Some(name));
    assert!(
        (65..=128).contains(&long.value.len()),
        "{} bytes",
        long.value.len()
    );
    let short = packed_ours(first + 5, "MY", HOUR, "1", None);
    assert_eq!(
        store
            .insert_new(&[long.clone(), short.clone()])
            .await
            .unwrap(),
        [true, true]
    );
    assert_eq!(
        store.get(&long.tracking_number).await.unwrap(),
        Some(long.value.clone())
    );
    let tail: Option<Vec<u8>> = redis.cmd(&["HGET", &place(&long).bucket, &place(&long).tail()]);
    assert_eq!(
        tail.as_deref(),
        Some(&long.value[64..]),
        "the tail in its own field"
    );
    assert_eq!(
        store.insert_new(std::slice::from_ref(&long)).await.unwrap(),
        [true],
        "its own write, sent again"
    );
    // Another record whose first part is the same: only its tail differs.
    let mut bytes = long.value.to_vec();
    *bytes.last_mut().unwrap() ^= 1;
    let other = RecordEntry {
        value: Bytes::from(bytes),
        ..long.clone()
    };
    assert_eq!(
        store
            .insert_new(std::slice::from_ref(&other))
            .await
            .unwrap(),
        [false],
        "another record, however alike"
    );
    // Swapped for a short one (the tail goes), then for a long one again (a tail again).
    let shorter = version(&long, HOUR, "2");
    assert!(shorter.value.len() <= 64);
    assert_eq!(
        store.replace(&long.value, &shorter).await.unwrap(),
        Swap::Replaced
    );
    assert_eq!(
        store.get(&long.tracking_number).await.unwrap(),
        Some(shorter.value.clone())
    );
    let tail: Option<Vec<u8>> = redis.cmd(&["HGET", &place(&long).bucket, &place(&long).tail()]);
    assert_eq!(tail, None);
    let mut longer = packed_ours(first + 4, "MY", HOUR, "3", Some(name));
    longer.serial = None;
    assert_eq!(
        store.replace(&long.value, &longer).await.unwrap(),
        Swap::Changed
    );
    assert_eq!(
        store.replace(&shorter.value, &longer).await.unwrap(),
        Swap::Replaced
    );
    assert_eq!(
        store.get(&long.tracking_number).await.unwrap(),
        Some(longer.value.clone())
    );
    assert_eq!(
        store
            .remove(&long.tracking_number, Some(&long.value))
            .await
            .unwrap(),
        Removal::Changed
    );
    assert_eq!(
        store
            .remove(&long.tracking_number, Some(&longer.value))
            .await
            .unwrap(),
        Removal::Removed
    );
    assert_eq!(store.get(&long.tracking_number).await.unwrap(), None);
    let fields: Vec<String> = redis.cmd(&["HKEYS", &place(&long).bucket]);
    assert!(!fields.contains(&place(&long).tail()), "{fields:?}");
    assert_eq!(
        store.get(&short.tracking_number).await.unwrap(),
        Some(short.value.clone())
    );

    // Too long for a bucket: a key of its own, read, changed and removed there.
    let longest = packed_ours(first + 6, "MY", HOUR, "1", Some(&"Name ".repeat(30)));
    assert!(longest.value.len() > 128, "{} bytes", longest.value.len());
    assert_eq!(
        store
            .insert_new(std::slice::from_ref(&longest))
            .await
            .unwrap(),
        [true]
    );
    assert_eq!(
        store.get(&longest.tracking_number).await.unwrap(),
        Some(longest.value.clone())
    );
    let fields: Vec<String> = redis.cmd(&["HKEYS", &place(&longest).bucket]);
    assert!(!fields.contains(&place(&longest).field), "{fields:?}");
    let changed = version(&longest, HOUR, "2");
    assert_eq!(
        store.replace(&longest.value, &changed).await.unwrap(),
        Swap::Replaced
    );
    assert_eq!(
        store.get(&longest.tracking_number).await.unwrap(),
        Some(changed.value.clone())
    );
    assert_eq!(
        store
            .remove(&longest.tracking_number, Some(&changed.value))
            .await
            .unwrap(),
        Removal::Removed
    );
    assert_eq!(store.get(&longest.tracking_number).await.unwrap(), None);

    // A full bucket stays compact, of short records and of long ones (each with its tail), and
    // lives as long as its longest-lived record.
    for (index, name, fields) in [(10, "RedBox Logistics", 64), (11, name, 128)] {
        let full = a_bucket(index);
        let entries: Vec<RecordEntry> = (0..REDIS_BUCKET)
            .map(|i| {
                let ttl = if i == 17 { HOUR * 24 } else { HOUR };
                packed_ours(full + i, "ID", ttl, "1.234", Some(name))
            })
            .collect();
        assert!(
            store
                .insert_new(&entries)
                .await
                .unwrap()
                .iter()
                .all(|&stored| stored)
        );
        for entry in [&entries[0], &entries[63]] {
            assert_eq!(
                store.get(&entry.tracking_number).await.unwrap(),
                Some(entry.value.clone())
            );
        }
        let bucket = place(&entries[0]).bucket;
        let held: i64 = redis.cmd(&["HLEN", &bucket]);
        assert_eq!(held, fields);
        let encoding: String = match &redis {
            TestRedis::Single(server) => server.cmd(&["OBJECT", "ENCODING", &bucket]),
            TestRedis::Cluster(cluster) => cluster.cmd_on(
                cluster.master_of_key(&bucket),
                &["OBJECT", "ENCODING", &bucket],
            ),
        };
        assert!(
            ["listpack", "ziplist"].contains(&encoding.as_str()),
            "{encoding}"
        );
        let ttl_ms: i64 = redis.cmd(&["PTTL", &bucket]);
        assert!(ttl_ms > 23 * 3_600_000, "the bucket lives {ttl_ms} ms");
    }
}

/// Records of one bucket change and go one by one: different expiries, a swap that lengthens
/// and one that shortens the expiry, a removal, and swaps racing each other, each atomic on
/// its own record only.
async fn redis_bucket_records_change_and_go_one_by_one(redis: TestRedis) {
    let store = RedisStore::new(&redis.target(), redis_options()).unwrap();
    let short = Duration::from_millis(300);

    // Different expiries in one bucket: the short one goes, its neighbour stays.
    let base = a_bucket(0);
    let brief = packed_ours(base, "MY", short, "1", None);
    let lasting = packed_ours(base + 1, "MY", HOUR, "1", None);
    store
        .insert_new(&[brief.clone(), lasting.clone()])
        .await
        .unwrap();
    // In a bucket of their own: one whose expiry a swap lengthens, one whose it shortens.
    let base = a_bucket(1);
    let lengthened = packed_ours(base, "MY", short, "1", None);
    let shortened = packed_ours(base + 63, "MY", HOUR, "1", None);
    store
        .insert_new(&[lengthened.clone(), shortened.clone()])
        .await
        .unwrap();
    let longer = version(&lengthened, HOUR, "2");
    let sooner = version(&shortened, short, "2");
    assert_eq!(
        store.replace(&lengthened.value, &longer).await.unwrap(),
        Swap::Replaced
    );
    assert_eq!(
        store.replace(&shortened.value, &sooner).await.unwrap(),
        Swap::Replaced
    );
    let last = [&brief, &lengthened, &sooner].map(|entry| entry.expires_at);
    sleep_past_time(*last.iter().max().unwrap()).await;
    assert_eq!(store.get(&brief.tracking_number).await.unwrap(), None);
    assert_eq!(
        store.get(&lasting.tracking_number).await.unwrap(),
        Some(lasting.value.clone())
    );
    assert_eq!(
        store.get(&longer.tracking_number).await.unwrap(),
        Some(longer.value.clone())
    );
    assert_eq!(store.get(&sooner.tracking_number).await.unwrap(), None);
    let later = version(&shortened, HOUR, "3");
    assert_eq!(
        store.replace(&sooner.value, &later).await.unwrap(),
        Swap::Changed,
        "an expired record cannot be changed"
    );
    assert_eq!(
        store
            .remove(&sooner.tracking_number, Some(&sooner.value))
            .await
            .unwrap(),
        Removal::Missing
    );
    assert_eq!(
        store.remove(&brief.tracking_number, None).await.unwrap(),
        Removal::Missing
    );
    assert_eq!(store.get(&sooner.tracking_number).await.unwrap(), None);

    // A removal takes one record of a bucket, and only while it is the one expected.
    let base = a_bucket(2);
    let three: Vec<RecordEntry> = (0..3)
        .map(|i| packed_ours(base + i, "SG", HOUR, "1", None))
        .collect();
    store.insert_new(&three).await.unwrap();
    let changed = version(&three[1], HOUR, "2");
    assert_eq!(
        store
            .remove(&three[1].tracking_number, Some(&changed.value))
            .await
            .unwrap(),
        Removal::Changed
    );
    assert_eq!(
        store
            .remove(&three[1].tracking_number, Some(&three[1].value))
            .await
            .unwrap(),
        Removal::Removed
    );
    assert_eq!(store.get(&three[1].tracking_number).await.unwrap(), None);
    for kept in [&three[0], &three[2]] {
        assert_eq!(
            store.get(&kept.tracking_number).await.unwrap(),
            Some(kept.value.clone())
        );
    }
    assert_eq!(
        store
            .remove(&three[1].tracking_number, Some(&three[1].value))
            .await
            .unwrap(),
        Removal::Missing
    );
    assert_eq!(
        store.replace(&three[1].value, &changed).await.unwrap(),
        Swap::Changed
    );
    assert_eq!(
        store.remove(&three[0].tracking_number, None).await.unwrap(),
        Removal::Removed
    );
    assert_eq!(
        store.get(&three[2].tracking_number).await.unwrap(),
        Some(three[2].value.clone())
    );

    // Racing swaps in one bucket: of two from the same version, one wins; swaps of different
    // records never get in each other's way.
    let base = a_bucket(3);
    let racing: Vec<RecordEntry> = (0..16)
        .map(|i| packed_ours(base + i, "DE", HOUR, "1", None))
        .collect();
    store.insert_new(&racing).await.unwrap();
    let swaps = racing.iter().flat_map(|entry| {
        ["2", "3"].map(|weight| {
            let store = &store;
            let next = version(entry, HOUR, weight);
            async move { (store.replace(&entry.value, &next).await.unwrap(), next) }
        })
    });
    let outcomes = futures_util::future::join_all(swaps).await;
    for (entry, pair) in racing.iter().zip(outcomes.chunks(2)) {
        let won: Vec<&RecordEntry> = pair
            .iter()
            .filter(|(swap, _)| *swap == Swap::Replaced)
            .map(|(_, next)| next)
            .collect();
        assert_eq!(won.len(), 1, "{}: one swap wins", entry.tracking_number);
        assert_eq!(
            store.get(&entry.tracking_number).await.unwrap(),
            Some(won[0].value.clone())
        );
    }
}

//! Opening a data dir: the file, once its lock is free; the secret, the node and the bucket
//! size it was made with, settled on its first start and checked on every start after; and the
//! checksums added to values written before they had any.

use std::path::Path;
use std::time::SystemTime;

use redb::{Database, Durability, ReadableTable};

use crate::domain::codec::{Layout, fingerprint};
use crate::store::{StoreError, clock_serial};

use super::{
    BUCKET_EXPIRY, BUCKET_SIZE, BUCKETS, BucketSize, EXPIRY, GENERATED_SECRET, ISSUED, META,
    NODE_ID, NODE_LAYOUT, OTHERS, RECORD_FORMAT, SECRET_FINGERPRINT, SERIAL_NEXT, VALUE_VERSION,
    encode_value, imports,
};

/// Opens the database, waiting up to two seconds for a process that was just killed to let go
/// of the file lock (a restart right after `kill -9` would otherwise race the exiting process).
pub(super) fn open_when_free(
    path: &Path,
    cache_size: u64,
) -> Result<Database, redb::DatabaseError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut builder = redb::Builder::new();
    builder.set_cache_size(usize::try_from(cache_size).unwrap_or(usize::MAX));
    loop {
        match builder.create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

pub(super) fn settle_secret(db: &Database, given: Option<&str>) -> anyhow::Result<String> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let secret = {
        let mut meta = tx.open_table(META)?;
        let stored_fp = meta
            .get(SECRET_FINGERPRINT)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned());
        let generated = meta
            .get(GENERATED_SECRET)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned());
        let secret = match (given, generated, &stored_fp) {
            (Some(given), _, _) => given.to_owned(),
            (None, Some(generated), _) => generated,
            (None, None, Some(_)) => anyhow::bail!(
                "this data dir was started with --secret (TRACKNUM_SECRET); give the same secret again"
            ),
            (None, None, None) => {
                let fresh = random_secret();
                meta.insert(GENERATED_SECRET, fresh.as_bytes())?;
                fresh
            }
        };
        let ours = fingerprint(secret.as_bytes());
        match stored_fp {
            Some(stored) if stored != ours => {
                return Err(StoreError::SecretMismatch { stored, ours }.into());
            }
            Some(_) => {}
            None => {
                meta.insert(SECRET_FINGERPRINT, ours.as_bytes())?;
            }
        }
        // Make sure every table exists, so readers never see a missing table.
        let mut issued = tx.open_table(ISSUED)?;
        let mut others = tx.open_table(OTHERS)?;
        tx.open_table(EXPIRY)?;
        tx.open_table(BUCKETS)?;
        tx.open_table(BUCKET_EXPIRY)?;
        imports::create_tables(&tx)?;
        if meta.get(RECORD_FORMAT)?.is_none() {
            // A file from before records had checksums: give every record one, once.
            let migrated = add_checksums(&mut issued, &mut others)?;
            if migrated > 0 {
                tracing::info!(records = migrated, "records given checksums");
            }
            meta.insert(RECORD_FORMAT, [VALUE_VERSION].as_slice())?;
        }
        secret
    };
    tx.commit()?;
    Ok(secret)
}

/// Settles which node the data dir belongs to, and its layout: the ones it keeps, or (first
/// start with node ids) `known` (a file swapped under the running process keeps the process'),
/// else `given`, else node 0, kept now. A data dir started before node ids existed also keeps
/// where its serials end; and every data dir keeps the clock of its first start with node ids,
/// below which whole-space numbers are passed over ([`Layout::Nodes`]).
pub(super) fn settle_node(
    db: &Database,
    given: Option<u8>,
    known: Option<(u8, Layout)>,
) -> anyhow::Result<(u8, Layout)> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let settled = {
        let mut meta = tx.open_table(META)?;
        let stored = meta.get(NODE_ID)?.map(|v| v.value().to_vec());
        let layout = meta.get(NODE_LAYOUT)?.map(|v| v.value().to_vec());
        match (stored.as_deref(), layout.as_deref()) {
            (Some(&[stored]), Some(layout)) => {
                let layout = decode_layout(layout)
                    .ok_or_else(|| anyhow::anyhow!("the data dir's node layout is damaged"))?;
                if let Some(given) = given.filter(|&given| given != stored) {
                    anyhow::bail!(
                        "this data dir belongs to node id {stored}; it cannot start with \
                         --node-id {given} (TRACKNUM_NODE_ID). A data dir keeps the node id it was \
                         first started with, since two instances with one node id issue the same \
                         numbers. Start it with --node-id {stored} (or none), or give node {given} \
                         a data dir of its own"
                    );
                }
                if let Some((known, _)) = known.filter(|&(known, _)| known != stored) {
                    anyhow::bail!(
                        "the data file now at the path belongs to node id {stored}, not {known}"
                    );
                }
                (stored, layout)
            }
            (None, None) => {
                let (node, layout) = match known {
                    Some(known) => known,
                    None => {
                        let next = match meta.get(SERIAL_NEXT)? {
                            Some(v) => u64::from_be_bytes(v.value().try_into()?),
                            None => 0,
                        };
                        // Past every record of ours it holds too (0 in a new data dir).
                        let past_records = tx
                            .open_table(ISSUED)?
                            .last()?
                            .map_or(0, |(serial, _)| serial.value() + 1);
                        // (No buckets yet: they came after node ids.)
                        let legacy_below = next.max(past_records);
                        let skip_below = legacy_below.max(clock_serial(SystemTime::now()));
                        let layout = Layout::Nodes {
                            legacy_below,
                            skip_below,
                        };
                        (given.unwrap_or(0), layout)
                    }
                };
                meta.insert(NODE_ID, [node].as_slice())?;
                meta.insert(NODE_LAYOUT, encode_layout(layout).as_slice())?;
                (node, layout)
            }
            _ => anyhow::bail!("the data dir's node id is damaged"),
        }
    };
    tx.commit()?;
    Ok(settled)
}

/// Settles the data dir's bucket size: the one it keeps, else `wanted`, kept now.
pub(super) fn settle_buckets(db: &Database, wanted: u64) -> anyhow::Result<BucketSize> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let size = {
        let mut meta = tx.open_table(META)?;
        let kept = meta.get(BUCKET_SIZE)?.map(|v| v.value().to_vec());
        match kept {
            Some(kept) => <[u8; 8]>::try_from(kept.as_slice())
                .ok()
                .map(u64::from_be_bytes)
                .and_then(BucketSize::new)
                .ok_or_else(|| anyhow::anyhow!("the data dir's bucket size is damaged"))?,
            None => {
                let size = BucketSize::new(wanted).ok_or_else(|| {
                    anyhow::anyhow!("{wanted} serials per bucket: not a size a bucket can have")
                })?;
                meta.insert(BUCKET_SIZE, wanted.to_be_bytes().as_slice())?;
                size
            }
        }
    };
    tx.commit()?;
    Ok(size)
}

/// A node layout as kept in the data dir: `legacy_below` and `skip_below`, big-endian.
pub(super) fn encode_layout(layout: Layout) -> [u8; 16] {
    let (legacy_below, skip_below) = match layout {
        Layout::Nodes {
            legacy_below,
            skip_below,
        } => (legacy_below, skip_below),
        Layout::Shared => (0, 0),
    };
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&legacy_below.to_be_bytes());
    bytes[8..].copy_from_slice(&skip_below.to_be_bytes());
    bytes
}

fn decode_layout(bytes: &[u8]) -> Option<Layout> {
    let (legacy_below, skip_below) = bytes.split_at_checked(8)?;
    let legacy_below = u64::from_be_bytes(legacy_below.try_into().ok()?);
    let skip_below = u64::from_be_bytes(skip_below.try_into().ok()?);
    (skip_below >= legacy_below).then_some(Layout::Nodes {
        legacy_below,
        skip_below,
    })
}

/// Gives every record of a file from before checksums the current layout; returns how many.
fn add_checksums(
    issued: &mut redb::Table<'_, u64, &'static [u8]>,
    others: &mut redb::Table<'_, &'static str, &'static [u8]>,
) -> anyhow::Result<u64> {
    let mut serials = Vec::new();
    for row in issued.iter()? {
        let (key, value) = row?;
        if let Some(value) = with_checksum(value.value()) {
            serials.push((key.value(), value));
        }
    }
    let mut names = Vec::new();
    for row in others.iter()? {
        let (key, value) = row?;
        if let Some(value) = with_checksum(value.value()) {
            names.push((key.value().to_owned(), value));
        }
    }
    let count = (serials.len() + names.len()) as u64;
    for (serial, value) in serials {
        issued.insert(serial, value.as_slice())?;
    }
    for (name, value) in names {
        others.insert(name.as_str(), value.as_slice())?;
    }
    Ok(count)
}

/// A record of the layout without a checksum (expiry, number length, number, JSON), in the
/// current layout; None if it is not one.
fn with_checksum(old: &[u8]) -> Option<Vec<u8>> {
    let expires_ms = i64::from_be_bytes(old.get(..8)?.try_into().ok()?);
    let len = usize::from(*old.get(8)?);
    let number = std::str::from_utf8(old.get(9..9 + len)?).ok()?;
    let mut value = Vec::new();
    encode_value(&mut value, expires_ms, number, &old[9 + len..]);
    Some(value)
}

/// Stores a generated secret in a data file that holds none yet.
pub(super) fn keep_generated_secret(db: &Database, secret: &str) -> anyhow::Result<()> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    {
        let mut meta = tx.open_table(META)?;
        if meta.get(GENERATED_SECRET)?.is_none() && meta.get(SECRET_FINGERPRINT)?.is_none() {
            meta.insert(GENERATED_SECRET, secret.as_bytes())?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn random_secret() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(43)
        .map(char::from)
        .collect()
}

//! Import jobs on Redis: each part is one key with its own expiry, and the parts of one import
//! share a hash tag, so on a cluster they live on one node. Listings are sorted sets, one per
//! owner and one of all imports, scored by creation time; entries older than the expiry are
//! trimmed as new ones arrive, and the set expires with its newest import.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::RedisStore;
use crate::store::{ImportPart, ImportStore, ListedImport, StoreError};

const PART_PREFIX: &str = "tracknum:import:";
const LIST_PREFIX: &str = "tracknum:imports:";
/// The listing of all owners (no tenant name holds a `*`).
const ALL: &str = "*";

fn part_key(id: &str, part: ImportPart) -> String {
    format!("{PART_PREFIX}{{{id}}}:{}", part.name())
}

fn list_key(owner: &str) -> String {
    format!("{LIST_PREFIX}{owner}")
}

#[async_trait]
impl ImportStore for RedisStore {
    async fn put_import_part(
        &self,
        id: &str,
        part: ImportPart,
        value: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(part_key(id, part))
            .arg(value)
            .arg("PXAT")
            .arg(expires_at.timestamp_millis().max(1));
        self.query::<()>(&set).await
    }

    async fn import_part(&self, id: &str, part: ImportPart) -> Result<Option<Bytes>, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(part_key(id, part));
        let value: Option<Vec<u8>> = self.query(&get).await?;
        Ok(value.map(Bytes::from))
    }

    async fn list_import(
        &self,
        owner: &str,
        id: &str,
        created_us: i64,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let expires_ms = expires_at.timestamp_millis().max(1);
        let kept_us = (expires_ms * 1000).saturating_sub(created_us);
        for bucket in [owner, ALL] {
            // One key per pipeline: on a cluster its commands go to one node.
            let key = list_key(bucket);
            let mut pipe = redis::pipe();
            pipe.cmd("ZADD")
                .arg(&key)
                .arg(created_us)
                .arg(id)
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(format!("({}", created_us.saturating_sub(kept_us)))
                .ignore()
                // The set lives as long as its longest-lived import: set when it has no
                // expiry, moved only later.
                .cmd("PEXPIREAT")
                .arg(&key)
                .arg(expires_ms)
                .arg("NX")
                .ignore()
                .cmd("PEXPIREAT")
                .arg(&key)
                .arg(expires_ms)
                .arg("GT")
                .ignore();
            self.query_pipeline::<()>(&pipe).await?;
        }
        Ok(())
    }

    async fn listed_imports(
        &self,
        owner: Option<&str>,
        before_us: i64,
        limit: usize,
    ) -> Result<Vec<ListedImport>, StoreError> {
        let mut range = redis::cmd("ZRANGE");
        range
            .arg(list_key(owner.unwrap_or(ALL)))
            .arg(format!("({before_us}"))
            .arg("-inf")
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .arg("WITHSCORES");
        let found: Vec<(String, f64)> = self.query(&range).await?;
        Ok(found
            .into_iter()
            .map(|(id, score)| ListedImport {
                // Scores are µs since 1970, exact in an f64 until the year 2255.
                created_us: score as i64,
                id,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_of_one_import_share_a_hash_tag() {
        let job = part_key("abc", ImportPart::Job);
        let chunk = part_key("abc", ImportPart::File(7));
        assert_eq!(job, "tracknum:import:{abc}:job");
        assert_eq!(chunk, "tracknum:import:{abc}:file:7");
        assert_eq!(
            super::super::slots::slot_of(job.as_bytes()),
            super::super::slots::slot_of(chunk.as_bytes())
        );
    }
}

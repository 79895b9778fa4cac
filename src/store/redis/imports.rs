//! Import jobs on Redis: each part is one key with its own expiry, and the parts of one import
//! share a hash tag, so on a cluster they live on one node. Listings are sorted sets, one per
//! owner and one of all imports, scored by creation time; entries older than the expiry are
//! trimmed as new ones arrive, and the set expires with its newest import.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use redis::Value;

use super::RedisStore;
use crate::store::{
    ALL_IMPORTS, ImportPart, ImportQueue, ImportStore, IsLive, ListedImport, QueuedImport,
    StoreError,
};

const PART_PREFIX: &str = "tracknum:import:";
const LIST_PREFIX: &str = "tracknum:imports:";
/// The stream of queued imports, and the consumer group of every instance's workers. Its
/// name is outside `tracknum:imports:`, where any tenant name may follow.
const QUEUE_KEY: &str = "tracknum:import-queue";
const GROUP: &str = "workers";

/// Compare-and-swap of an import part: KEYS = the part; ARGV = '1' and the expected value (or
/// '0' and '' for none), the new value, its expiry (Unix ms). Returns 1 when the part holds the
/// new value afterwards: a script sent again after its first run landed finds its own value.
static SWAP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
if current == ARGV[3] then return 1 end
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'PXAT', ARGV[4])
return 1
"#,
    )
});

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

    async fn swap_import_part(
        &self,
        id: &str,
        part: ImportPart,
        expected: Option<&[u8]>,
        new: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut invocation = SWAP.prepare_invoke();
        invocation.key(part_key(id, part));
        match expected {
            Some(expected) => invocation.arg("1").arg(expected),
            None => invocation.arg("0").arg(""),
        };
        invocation
            .arg(new)
            .arg(expires_at.timestamp_millis().max(1));
        let swapped: i64 = self.run(invocation).await?;
        Ok(swapped == 1)
    }

    async fn drop_abandoned_uploads(&self, _is_live: &IsLive) -> Result<u64, StoreError> {
        // Finding them would take a SCAN of every node; they expire by themselves instead.
        Ok(0)
    }

    async fn import_part(&self, id: &str, part: ImportPart) -> Result<Option<Bytes>, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(part_key(id, part));
        let value: Option<Vec<u8>> = self.query(&get).await?;
        Ok(value.map(Bytes::from))
    }

    async fn drop_import_parts(&self, id: &str, parts: &[ImportPart]) -> Result<(), StoreError> {
        if parts.is_empty() {
            return Ok(());
        }
        // One hash tag per import: every part is on one node, and one DEL takes them all.
        let mut del = redis::cmd("DEL");
        for &part in parts {
            del.arg(part_key(id, part));
        }
        self.query::<()>(&del).await
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
        for bucket in [owner, ALL_IMPORTS] {
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
            .arg(list_key(owner.unwrap_or(ALL_IMPORTS)))
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

impl RedisStore {
    /// Runs a command on the queue's consumer group, making the group first when Redis has
    /// none (a new Redis, or one that lost its data).
    async fn on_group<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        match self.query(cmd).await {
            Err(StoreError::Unavailable(text)) if text.contains("NOGROUP") => {
                let mut create = redis::cmd("XGROUP");
                create
                    .arg("CREATE")
                    .arg(QUEUE_KEY)
                    .arg(GROUP)
                    .arg(0)
                    .arg("MKSTREAM");
                match self.query::<()>(&create).await {
                    Err(StoreError::Unavailable(text)) if text.contains("BUSYGROUP") => {}
                    other => other?,
                }
                self.query(cmd).await
            }
            other => other,
        }
    }
}

/// The first entry of a list of stream entries (`[[id, [field, value, ...]], ...]`) that
/// names an import.
fn first_import(entries: &Value) -> Option<QueuedImport> {
    let Value::Array(entries) = entries else {
        return None;
    };
    entries.iter().find_map(|entry| {
        let Value::Array(parts) = entry else {
            return None;
        };
        let [handle, Value::Array(fields)] = parts.as_slice() else {
            return None;
        };
        let handle: String = redis::from_redis_value(handle.clone()).ok()?;
        let at = fields
            .iter()
            .position(|field| matches!(field, Value::BulkString(name) if name == b"id"))?;
        let id: String = redis::from_redis_value(fields.get(at + 1)?.clone()).ok()?;
        Some(QueuedImport { id, handle })
    })
}

#[async_trait]
impl ImportQueue for RedisStore {
    async fn enqueue_import(&self, id: &str) -> Result<(), StoreError> {
        let mut add = redis::cmd("XADD");
        add.arg(QUEUE_KEY).arg("*").arg("id").arg(id);
        self.query::<String>(&add).await.map(drop)
    }

    async fn next_import(
        &self,
        worker: &str,
        stale: Duration,
    ) -> Result<Option<QueuedImport>, StoreError> {
        // A job whose worker went quiet first: [cursor, entries, deleted], one job at a time
        // (a claimed entry is this worker's from then on), through the whole pending list.
        let idle_ms = u64::try_from(stale.as_millis()).unwrap_or(u64::MAX);
        let mut cursor = "0-0".to_owned();
        loop {
            let mut claim = redis::cmd("XAUTOCLAIM");
            claim
                .arg(QUEUE_KEY)
                .arg(GROUP)
                .arg(worker)
                .arg(idle_ms)
                .arg(&cursor)
                .arg("COUNT")
                .arg(1);
            let Value::Array(reply) = self.on_group::<Value>(&claim).await? else {
                break;
            };
            if let Some(job) = reply.get(1).and_then(first_import) {
                return Ok(Some(job));
            }
            cursor = match reply
                .first()
                .map(|next| redis::from_redis_value(next.clone()))
            {
                Some(Ok(next)) if next != "0-0" => next,
                _ => break,
            };
        }
        // Then a new one: [[stream, entries]], or nil.
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(GROUP)
            .arg(worker)
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(QUEUE_KEY)
            .arg(">");
        let read: Value = self.on_group(&read).await?;
        let Value::Array(streams) = read else {
            return Ok(None);
        };
        Ok(streams.iter().find_map(|stream| match stream {
            Value::Array(pair) => pair.get(1).and_then(first_import),
            _ => None,
        }))
    }

    async fn touch_import(&self, worker: &str, job: &QueuedImport) -> Result<(), StoreError> {
        let mut claim = redis::cmd("XCLAIM");
        claim
            .arg(QUEUE_KEY)
            .arg(GROUP)
            .arg(worker)
            .arg(0)
            .arg(&job.handle)
            .arg("JUSTID");
        self.on_group::<Value>(&claim).await.map(drop)
    }

    async fn ack_import(&self, job: &QueuedImport) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(QUEUE_KEY)
            .arg(GROUP)
            .arg(&job.handle)
            .ignore()
            .cmd("XDEL")
            .arg(QUEUE_KEY)
            .arg(&job.handle)
            .ignore();
        self.query_pipeline::<()>(&pipe).await
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

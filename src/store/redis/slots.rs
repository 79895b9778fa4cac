//! Which master serves which hash slot, as the cluster last said (`CLUSTER SLOTS`), so that a
//! batch of records goes out as one pipeline per master instead of one per slot. A stale map
//! costs a second trip, never a wrong write: a node refuses a key it does not serve with
//! `MOVED` (or `ASK`), and the store writes that key again through the client's own routing.

use redis::Value;

/// Redis Cluster's hash slots.
const SLOTS: usize = 16384;

/// The hash slot of a key: CRC16 (XMODEM) of the key, or of its `{tag}` when it has a non-empty
/// one, modulo 16384, as Redis Cluster defines it.
pub fn slot_of(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS as u16
}

/// The masters, and for each slot the index of the master serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    masters: Vec<(String, u16)>,
    owner: Vec<Option<u16>>,
}

impl SlotMap {
    /// Reads the reply of `CLUSTER SLOTS`: `[[start, end, [host, port, …], replicas…], …]`.
    /// None when it is not one (or names a master without an address).
    pub fn parse(reply: &Value) -> Option<SlotMap> {
        let Value::Array(ranges) = reply else {
            return None;
        };
        let mut map = SlotMap {
            masters: Vec::new(),
            owner: vec![None; SLOTS],
        };
        for range in ranges {
            let Value::Array(fields) = range else {
                return None;
            };
            let (start, end) = (int(fields.first()?)?, int(fields.get(1)?)?);
            let Value::Array(master) = fields.get(2)? else {
                return None;
            };
            let host = text(master.first()?)?;
            let port = u16::try_from(int(master.get(1)?)?).ok()?;
            if host.is_empty() || start > end || end >= SLOTS as i64 || start < 0 {
                return None;
            }
            let address = (host, port);
            let index = match map.masters.iter().position(|known| *known == address) {
                Some(index) => index,
                None => {
                    map.masters.push(address);
                    map.masters.len() - 1
                }
            };
            for slot in start..=end {
                map.owner[slot as usize] = Some(index as u16);
            }
        }
        Some(map)
    }

    /// The index of the master serving `slot`, if the map has one.
    pub fn owner(&self, slot: u16) -> Option<usize> {
        self.owner
            .get(usize::from(slot))
            .copied()
            .flatten()
            .map(usize::from)
    }

    /// Host and port of a master.
    pub fn address(&self, master: usize) -> (&str, u16) {
        let (host, port) = &self.masters[master];
        (host, *port)
    }

    pub fn masters(&self) -> usize {
        self.masters.len()
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis_cluster() {
        // Values Redis itself gives (CLUSTER KEYSLOT).
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{tracknum}:serial"), slot_of(b"tracknum"));
        assert_eq!(
            slot_of(b"{user1000}.following"),
            slot_of(b"{user1000}.followers")
        );
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn a_slots_reply_becomes_a_map_of_masters() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7000),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.2", 7000),
            ]),
            Value::Array(vec![
                Value::Int(100),
                Value::Int(100),
                node("10.0.0.2", 7000),
            ]),
        ]);
        let map = SlotMap::parse(&reply).unwrap();
        assert_eq!(map.masters(), 2);
        assert_eq!(map.address(map.owner(0).unwrap()), ("10.0.0.1", 7000));
        assert_eq!(map.address(map.owner(100).unwrap()), ("10.0.0.2", 7000));
        assert_eq!(map.address(map.owner(16383).unwrap()), ("10.0.0.2", 7000));
        let partial = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(10),
            node("10.0.0.1", 7000),
        ])]);
        assert_eq!(SlotMap::parse(&partial).unwrap().owner(11), None);
        for bad in [
            Value::Nil,
            Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(16384),
                node("h", 1),
            ])]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(1),
                node("", 1),
            ])]),
        ] {
            assert_eq!(SlotMap::parse(&bad), None, "{bad:?}");
        }
    }
}

/// The slot map a store writes by: fetched on first use, and again once a write found it stale
/// (at most every [`REFRESH_EVERY`], so a cluster in the middle of a failover is not asked on
/// every batch).
#[derive(Default)]
pub struct SlotCache {
    state: std::sync::Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    map: Option<std::sync::Arc<SlotMap>>,
    stale: bool,
    fetched_at: Option<std::time::Instant>,
}

const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl SlotCache {
    /// The map, fetched again first when it is missing or stale; None when the cluster does not
    /// say (the caller then lets the client route every slot).
    pub async fn current(
        &self,
        cluster: &mut redis::cluster_async::ClusterConnection,
    ) -> Option<std::sync::Arc<SlotMap>> {
        let (map, due) = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let due = (state.map.is_none() || state.stale)
                && state
                    .fetched_at
                    .is_none_or(|at| at.elapsed() >= REFRESH_EVERY);
            (state.map.clone(), due)
        };
        if !due {
            return map;
        }
        let reply: Option<Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(cluster)
            .await
            .ok();
        let fresh = reply
            .as_ref()
            .and_then(SlotMap::parse)
            .map(std::sync::Arc::new);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.fetched_at = Some(std::time::Instant::now());
        if fresh.is_some() {
            state.map = fresh;
            state.stale = false;
        }
        state.map.clone()
    }

    pub fn mark_stale(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stale = true;
    }
}

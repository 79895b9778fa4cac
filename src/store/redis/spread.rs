//! Many calls in one go: one pipeline on a single server; on a Redis Cluster, one pipeline per
//! master, as the cached slot map says ([`super::slots`]), sent together. What a master refused
//! with a redirect, or could not take, goes again one pipeline per slot, routed by the client
//! (which follows redirects). A group commit's records and an import's idempotency claims go
//! this way: a call each, but one round trip per master.
//!
//! Scripts go as `EVALSHA`; a node that does not know one (restarted, flushed, newly promoted)
//! answers `NOSCRIPT` without running it, and the call goes again as `EVAL` with the script's
//! body, which also teaches the node the script.

use std::collections::HashMap;

use bytes::Bytes;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{Cmd, RedisError, Value};

use super::link::Conn;
use super::slots::{self, SlotCache};
use crate::store::StoreError;

/// A Lua script that can go in a pipeline: its body, and the SHA1 `EVALSHA` names it by.
pub struct Lua {
    body: &'static str,
    hash: String,
}

impl Lua {
    pub fn new(body: &'static str) -> Lua {
        Lua {
            body,
            hash: redis::Script::new(body).get_hash().to_owned(),
        }
    }
}

/// One call, routed by its key (its first key, for a script).
pub struct Call<'a> {
    pub key: String,
    pub body: Body<'a>,
}

pub enum Body<'a> {
    /// A plain command.
    Command(Cmd),
    /// A script, on the call's key and these further keys (of the same slot), with these
    /// arguments.
    Script {
        lua: &'a Lua,
        more_keys: Vec<String>,
        args: Vec<Bytes>,
    },
}

impl Call<'_> {
    /// The command to send: a script as `EVALSHA`, or with its body as `EVAL`.
    fn cmd(&self, with_body: bool) -> Cmd {
        match &self.body {
            Body::Command(cmd) => cmd.clone(),
            Body::Script {
                lua,
                more_keys,
                args,
            } => {
                let mut cmd = if with_body {
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(lua.body);
                    cmd
                } else {
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(&lua.hash);
                    cmd
                };
                cmd.arg(1 + more_keys.len()).arg(&self.key);
                for key in more_keys {
                    cmd.arg(key);
                }
                for arg in args {
                    cmd.arg(arg.as_ref());
                }
                cmd
            }
        }
    }
}

/// The most keys one call of a script over many keys takes: a script blocks the server while it
/// runs, and 256 keys take it well under a millisecond.
pub const KEYS_PER_CALL: usize = 256;

/// The indices of `keys` in groups that one script call may take: of one hash slot each on a
/// cluster (`by_slot`), any keys on one server; at most [`KEYS_PER_CALL`] a group, in the order
/// of `keys` within each.
pub fn key_groups(keys: &[String], by_slot: bool) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    if by_slot {
        let mut open: HashMap<u16, usize> = HashMap::new();
        for (at, key) in keys.iter().enumerate() {
            let slot = slots::slot_of(key.as_bytes());
            match open.get(&slot) {
                Some(&group) if groups[group].len() < KEYS_PER_CALL => groups[group].push(at),
                _ => {
                    open.insert(slot, groups.len());
                    groups.push(vec![at]);
                }
            }
        }
    } else {
        let all: Vec<usize> = (0..keys.len()).collect();
        groups.extend(all.chunks(KEYS_PER_CALL).map(<[usize]>::to_vec));
    }
    groups
}

/// Each call's reply, or why it has none: a node refused it, or could not be reached.
pub type Replies = Vec<Result<Value, StoreError>>;

/// Sends `calls` in one pipeline on one server, then `tail` (a `WAIT`, say); the calls whose
/// script the server did not know go again with its body, and `tail` after them. Returns each
/// call's reply and the tail's; an error when the connection failed.
pub async fn on_one_server(
    conn: &mut Conn,
    calls: &[Call<'_>],
    tail: Option<&Cmd>,
) -> Result<(Replies, Option<Value>), RedisError> {
    let all: Vec<usize> = (0..calls.len()).collect();
    let (mut replies, mut tail_reply) = send(conn, calls, &all, false, tail).await?;
    let unknown: Vec<usize> = all
        .into_iter()
        .filter(|&at| is_noscript(&replies[at]))
        .collect();
    if !unknown.is_empty() {
        let (again, again_tail) = send(conn, calls, &unknown, true, tail).await?;
        for (&at, reply) in unknown.iter().zip(again) {
            replies[at] = reply;
        }
        tail_reply = again_tail;
    }
    let replies = replies.into_iter().map(refused).collect();
    Ok((replies, tail_reply))
}

/// One pipeline of the calls at `indices` (then `tail`) on `conn`.
async fn send(
    conn: &mut Conn,
    calls: &[Call<'_>],
    indices: &[usize],
    with_body: bool,
    tail: Option<&Cmd>,
) -> Result<(Vec<Value>, Option<Value>), RedisError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for &at in indices {
        pipe.add_command(calls[at].cmd(with_body));
    }
    if let Some(tail) = tail {
        pipe.add_command(tail.clone());
    }
    let mut replies: Vec<Value> = pipe.query_async(conn).await?;
    let tail_reply = match tail {
        Some(_) => Some(replies.pop().ok_or_else(short_reply)?),
        None => None,
    };
    if replies.len() != indices.len() {
        return Err(short_reply());
    }
    Ok((replies, tail_reply))
}

/// Sends `calls` on a cluster: one pipeline per master, then what needs it again one pipeline
/// per slot through the client's routing. Each call's reply; and the last connection error, if
/// any (its calls have it as their error).
pub async fn on_cluster(
    cluster: &mut ClusterConnection,
    slot_cache: &SlotCache,
    calls: &[Call<'_>],
) -> (Replies, Option<RedisError>) {
    let mut replies: Replies = calls.iter().map(|_| Ok(Value::Nil)).collect();
    let mut again = Vec::new();
    // Whether the map sent a call where its slot is not (anymore).
    let mut stale = false;
    let map = slot_cache.current(cluster).await;
    let mut by_master: Vec<Vec<usize>> = vec![Vec::new(); map.as_ref().map_or(0, |m| m.masters())];
    for (at, call) in calls.iter().enumerate() {
        let owner = map
            .as_ref()
            .and_then(|map| map.owner(slots::slot_of(call.key.as_bytes())));
        match owner {
            Some(master) => by_master[master].push(at),
            None => again.push(at),
        }
    }
    if let Some(map) = &map {
        let groups: Vec<(usize, &Vec<usize>)> = by_master
            .iter()
            .enumerate()
            .filter(|(_, group)| !group.is_empty())
            .collect();
        let sends = groups.iter().map(|&(master, group)| {
            let mut pipe = redis::pipe();
            for &at in group {
                pipe.add_command(calls[at].cmd(false));
            }
            let (host, port) = map.address(master);
            let route = SingleNodeRoutingInfo::ByAddress {
                host: host.to_owned(),
                port,
            };
            let mut conn = cluster.clone();
            async move { conn.route_pipeline(pipe, 0, group.len(), route).await }
        });
        let sent = futures_util::future::join_all(sends).await;
        for ((_, group), reply) in groups.into_iter().zip(sent) {
            match reply {
                Ok(values) if values.len() == group.len() => {
                    for (&at, value) in group.iter().zip(values) {
                        if is_redirect(&value) || is_noscript(&value) {
                            stale |= is_redirect(&value);
                            again.push(at);
                        } else {
                            replies[at] = refused(value);
                        }
                    }
                }
                // A master we cannot reach (failing over, say): the client's routing decides.
                _ => {
                    stale = true;
                    again.extend(group);
                }
            }
        }
        if stale {
            slot_cache.mark_stale();
        }
    }
    let failure = by_slot(cluster, calls, &again, &mut replies).await;
    (replies, failure)
}

/// Sends the calls at `indices` one pipeline per hash slot, routed by the client, scripts with
/// their body; sets their replies and returns the last error.
async fn by_slot(
    cluster: &mut ClusterConnection,
    calls: &[Call<'_>],
    indices: &[usize],
    replies: &mut Replies,
) -> Option<RedisError> {
    let mut groups: HashMap<u16, Vec<usize>> = HashMap::new();
    for &at in indices {
        groups
            .entry(slots::slot_of(calls[at].key.as_bytes()))
            .or_default()
            .push(at);
    }
    let sends = groups.values().map(|group| {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for &at in group {
            pipe.add_command(calls[at].cmd(true));
        }
        let mut conn = cluster.clone();
        async move { pipe.query_async::<Vec<Value>>(&mut conn).await }
    });
    let sent = futures_util::future::join_all(sends).await;
    let mut failure = None;
    for (group, reply) in groups.values().zip(sent) {
        match reply {
            Ok(values) if values.len() == group.len() => {
                for (&at, value) in group.iter().zip(values) {
                    replies[at] = refused(value);
                }
            }
            Ok(_) => {
                for &at in group {
                    replies[at] = Err(StoreError::unavailable(short_reply()));
                }
            }
            Err(err) => {
                for &at in group {
                    replies[at] = Err(StoreError::unavailable(&err));
                }
                failure = Some(err);
            }
        }
    }
    failure
}

/// A reply, or the refusal it is (in our words: the code only, and whether it was the syntax).
fn refused(value: Value) -> Result<Value, StoreError> {
    match value {
        Value::ServerError(err) if is_syntax_error(err.code(), err.details()) => {
            Err(StoreError::Unavailable(SYNTAX_REFUSAL.to_owned()))
        }
        Value::ServerError(err) => Err(StoreError::Unavailable(format!(
            "Redis refused a call: {}",
            err.code()
        ))),
        value => Ok(value),
    }
}

/// How a call the server does not know the form of fails: a server older than the command's
/// form (`SET … NX … GET` before Redis 7.0, say) answers `ERR syntax error`.
const SYNTAX_REFUSAL: &str = "Redis refused a call's syntax";

fn is_syntax_error(code: &str, details: Option<&str>) -> bool {
    code == "ERR" && details.is_some_and(|details| details.starts_with("syntax error"))
}

/// Whether a call failed because the server does not know its form ([`refused`]).
pub fn is_syntax_refusal(err: &StoreError) -> bool {
    matches!(err, StoreError::Unavailable(why) if why == SYNTAX_REFUSAL)
}

fn is_redirect(value: &Value) -> bool {
    matches!(value, Value::ServerError(err) if matches!(err.code(), "MOVED" | "ASK"))
}

fn is_noscript(value: &Value) -> bool {
    matches!(value, Value::ServerError(err) if err.code() == "NOSCRIPT")
}

fn short_reply() -> RedisError {
    RedisError::from((redis::ErrorKind::Parse, "a pipeline's replies fell short"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_syntax_is_told_apart_from_other_refusals() {
        let server_error =
            |text: &str| redis::parse_redis_value(format!("-{text}\r\n").as_bytes()).unwrap();
        // What Redis 6.2 answers `SET k v NX PX 1000 GET`.
        let syntax = refused(server_error("ERR syntax error")).unwrap_err();
        assert!(is_syntax_refusal(&syntax));
        for other in [
            "ERR wrong number of arguments for 'set' command",
            "OOM command not allowed",
        ] {
            let err = refused(server_error(other)).unwrap_err();
            assert!(!is_syntax_refusal(&err), "{other}");
        }
        assert!(!is_syntax_refusal(&StoreError::unavailable(
            "connection refused"
        )));
    }

    #[test]
    fn on_one_server_any_keys_share_a_call_up_to_the_most_one_takes() {
        let keys: Vec<String> = (0..KEYS_PER_CALL + 3).map(|i| format!("k{i}")).collect();
        let groups = key_groups(&keys, false);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0], (0..KEYS_PER_CALL).collect::<Vec<_>>());
        assert_eq!(
            groups[1],
            vec![KEYS_PER_CALL, KEYS_PER_CALL + 1, KEYS_PER_CALL + 2]
        );
    }

    #[test]
    fn on_a_cluster_a_call_takes_keys_of_one_slot_only() {
        // `{a}x` and `{a}y` share a slot (hash tag); `b` and `c` are elsewhere.
        let keys: Vec<String> = ["{a}x", "b", "{a}y", "c"].map(String::from).to_vec();
        assert_ne!(slots::slot_of(b"b"), slots::slot_of(b"c"));
        let mut groups = key_groups(&keys, true);
        groups.sort();
        assert_eq!(groups, vec![vec![0, 2], vec![1], vec![3]]);
        for group in key_groups(&keys, true) {
            let slot = slots::slot_of(keys[group[0]].as_bytes());
            assert!(
                group
                    .iter()
                    .all(|&at| slots::slot_of(keys[at].as_bytes()) == slot)
            );
        }
    }

    #[test]
    fn a_slot_with_more_keys_than_a_call_takes_gets_more_calls() {
        let keys: Vec<String> = (0..KEYS_PER_CALL + 1)
            .map(|i| format!("{{t}}{i}"))
            .collect();
        let groups = key_groups(&keys, true);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].len(), KEYS_PER_CALL);
        assert_eq!(groups[1], vec![KEYS_PER_CALL]);
    }
}

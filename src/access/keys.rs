//! API keys: a file of named SHA-256 hashes, checked in constant time, and swapped in while
//! the service runs (on SIGHUP or when the file changes) without a lock on the request path.
//!
//! # File format
//! UTF-8 text, one key per line:
//! ```text
//! # comments and blank lines are ignored; surrounding whitespace is trimmed
//! billing-batch:sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! shop-a:sha256:60303AE22B998861BCE3B28F33EEC1BE758A213C86C93C076DBE9F558C11C752 tenant=acme
//! ops:sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae role=admin
//! ```
//! - the name is 1 to 64 characters of `A-Z a-z 0-9 . _ -`, unique in the file; it is what
//!   the service logs and rate-limits by, so it must not be secret;
//! - after the hash, optional attributes separated by blanks: `tenant=<name>` (same rule as a
//!   key name; default: the key's own name) says whose records the key reads and writes, and
//!   `role=admin` lets the key see every tenant's records (`role=member`, the default, its own);
//! - the hash is `sha256:` and the 64 hexadecimal digits (either case) of the SHA-256 of the
//!   key's UTF-8 bytes, e.g. `printf %s "$KEY" | sha256sum`; plaintext keys are refused;
//! - two names may not share a key.
//!
//! A file with an invalid line, or without any key, is refused as a whole; the error names the
//! line and what is wrong with it, never its content (it may hold a key).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::{Principal, Tenant};
use crate::periodic::{Ticker, Wake};

const MAX_NAME_LEN: usize = 64;
const LINE_FORMAT: &str = "expected `<name>:sha256:<64 hex digits>`";
/// The watcher never polls faster than this, whatever it is asked.
const MIN_POLL: Duration = Duration::from_millis(10);

type Hash = [u8; 32];

/// One key of the file: its name, whose data it reaches, and the SHA-256 of the key.
pub struct ApiKey {
    name: Box<str>,
    principal: Principal,
    hash: Hash,
}

impl ApiKey {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tenant the key acts for, and whether it is an admin.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }
}

/// A validated set of API keys: names and the SHA-256 of each key, never the keys.
pub struct ApiKeys {
    keys: Box<[ApiKey]>,
}

impl ApiKeys {
    /// Parses a key file's text (see the module documentation for the format).
    pub fn parse(text: &str) -> Result<ApiKeys, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut keys = Vec::new();
        let mut line_of_name: HashMap<&str, usize> = HashMap::new();
        let mut line_of_hash: HashMap<Hash, usize> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash, principal) =
                parse_line(line).map_err(|why| format!("line {number}: {why}"))?;
            if let Some(first) = line_of_name.insert(name, number) {
                return Err(format!(
                    "line {number}: the name is already used on line {first}"
                ));
            }
            if let Some(first) = line_of_hash.insert(hash, number) {
                return Err(format!(
                    "line {number}: the same key is already listed on line {first}"
                ));
            }
            keys.push(ApiKey {
                name: name.into(),
                principal,
                hash,
            });
        }
        if keys.is_empty() {
            return Err("no keys".into());
        }
        Ok(ApiKeys { keys: keys.into() })
    }

    /// Reads and parses a key file; errors name the path.
    pub fn load(path: &Path) -> Result<ApiKeys, String> {
        parse_file(path, read_file(path))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a key set without keys is refused when parsed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key `presented` is, if any. The key is hashed once and compared with every stored
    /// hash in constant time, without stopping at a match, so the time taken says nothing
    /// about which key matched or how much of a hash did.
    pub fn verify(&self, presented: &str) -> Option<&ApiKey> {
        if presented.is_empty() {
            return None;
        }
        let digest = Sha256::digest(presented.as_bytes());
        let mut found = Choice::from(0);
        let mut at = 0u64;
        for (index, key) in self.keys.iter().enumerate() {
            let matched = key.hash[..].ct_eq(&digest[..]);
            at.conditional_assign(&(index as u64), matched);
            found |= matched;
        }
        bool::from(found).then(|| &self.keys[at as usize])
    }
}

impl fmt::Debug for ApiKeys {
    /// Names only: hashes stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &*k.name))
            .finish()
    }
}

/// One non-blank, non-comment line: its name, hash and principal, or why it is not valid. The
/// reason never quotes the line.
fn parse_line(line: &str) -> Result<(&str, Hash, Principal), &'static str> {
    let mut words = line.split_ascii_whitespace();
    let key = words.next().ok_or(LINE_FORMAT)?;
    let (name, rest) = key.split_once(':').ok_or(LINE_FORMAT)?;
    if !valid_name(name) {
        return Err("the name must be 1 to 64 characters of A-Z a-z 0-9 . _ -");
    }
    let (scheme, hex) = rest.split_once(':').ok_or(
        "expected `sha256:<64 hex digits>` after the name (plaintext keys are not accepted)",
    )?;
    if scheme != "sha256" {
        return Err("only `sha256:` hashes are supported");
    }
    let hash = decode_hash(hex).ok_or("the hash must be 64 hexadecimal digits")?;
    let (mut tenant, mut admin) = (None, None);
    for word in words {
        let (slot, value) = match word.split_once('=') {
            Some(("tenant", value)) => (&mut tenant, value),
            Some(("role", value)) => (&mut admin, value),
            _ => return Err(ATTRIBUTE_FORMAT),
        };
        if slot.replace(value).is_some() {
            return Err("an attribute is given twice");
        }
    }
    let tenant = Tenant::parse(tenant.unwrap_or(name))
        .ok_or("the tenant must be 1 to 64 characters of A-Z a-z 0-9 . _ -")?;
    let principal = match admin {
        None | Some("member") => Principal::member(tenant),
        Some("admin") => Principal::admin(tenant),
        Some(_) => return Err("the role must be `admin` or `member`"),
    };
    Ok((name, hash, principal))
}

const ATTRIBUTE_FORMAT: &str =
    "after the hash, only `tenant=<name>` and `role=admin` or `role=member` may follow";

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The 32 bytes that 64 hexadecimal digits (either case) spell; `None` for anything else.
fn decode_hash(digits: &str) -> Option<Hash> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(digits, &mut hash).ok()?;
    Some(hash)
}

fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(path)
}

fn parse_file(path: &Path, read: io::Result<Vec<u8>>) -> Result<ApiKeys, String> {
    let bytes = read.map_err(|e| format!("cannot read API keys from {}: {e}", path.display()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("API keys in {}: the file is not UTF-8", path.display()))?;
    ApiKeys::parse(text).map_err(|why| format!("API keys in {}: {why}", path.display()))
}

/// The token of an `Authorization: Bearer <token>` header value: the scheme in any case, one or
/// more spaces, then visible ASCII without spaces. Anything else is `None`.
pub fn bearer_token(header: Option<&[u8]>) -> Option<&str> {
    let (scheme, rest) = header?.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    if start == 0 {
        return None;
    }
    let token = &rest[start..];
    if !token.iter().all(|b| (b'!'..=b'~').contains(b)) {
        return None;
    }
    std::str::from_utf8(token).ok()
}

/// What the key file held when last read, so the watcher acts on changes only.
#[derive(Clone, PartialEq)]
enum Seen {
    Content(Hash),
    Unreadable(io::ErrorKind),
}

/// The live key set of one key file. Requests read it with `current()` (lock-free); `reload()`
/// and the watcher swap in a new set only when the file parses, so a bad edit never locks
/// everyone out.
pub struct KeyRing {
    path: PathBuf,
    keys: ArcSwap<ApiKeys>,
    /// Also serialises reloads, so an older read never replaces a newer one.
    seen: Mutex<Seen>,
}

impl KeyRing {
    /// Loads the key file; an unreadable or invalid file is an error (start-up should fail).
    pub fn open(path: &Path) -> Result<Arc<KeyRing>, String> {
        let read = read_file(path);
        let seen = seen(&read);
        let keys = parse_file(path, read)?;
        Ok(Arc::new(KeyRing {
            path: path.to_owned(),
            keys: ArcSwap::from_pointee(keys),
            seen: Mutex::new(seen),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys in force; cheap enough for every request.
    pub fn current(&self) -> arc_swap::Guard<Arc<ApiKeys>> {
        self.keys.load()
    }

    /// Reads the file again and swaps the new keys in, returning how many there are. On error
    /// the keys in force stay.
    pub fn reload(&self) -> Result<usize, String> {
        self.apply(read_file(&self.path), true)
            .expect("a forced reload always has an outcome")
    }

    /// Swaps in what `read` holds: always when `force`, otherwise only when it differs from
    /// what was last seen (`None` then).
    fn apply(&self, read: io::Result<Vec<u8>>, force: bool) -> Option<Result<usize, String>> {
        let mut last = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = seen(&read);
        if !force && *last == now {
            return None;
        }
        *last = now;
        Some(parse_file(&self.path, read).map(|keys| {
            let count = keys.len();
            self.keys.store(Arc::new(keys));
            count
        }))
    }

    /// Reloads on SIGHUP (unix) and whenever the file's content changes, checked every `poll`
    /// by reading the file through any symlinks, so a Kubernetes secret volume (which swaps a
    /// symlink to a new directory) is followed. Ends when `stop` is cancelled.
    pub fn spawn_watch(
        self: &Arc<Self>,
        poll: Duration,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let ring = Arc::clone(self);
        tokio::spawn(async move {
            let mut hangups = Hangups::listen();
            let mut ticker = Ticker::new(poll.max(MIN_POLL), stop);
            while let Some(wake) = ticker.tick_or(hangups.recv()).await {
                let force = matches!(wake, Wake::Event(()));
                let read = tokio::fs::read(&ring.path).await;
                match ring.apply(read, force) {
                    None => {}
                    Some(Ok(count)) => tracing::info!(keys = count, "API keys reloaded"),
                    Some(Err(error)) => {
                        tracing::warn!(%error, "API keys not reloaded; keeping the old ones")
                    }
                }
            }
        })
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("path", &self.path)
            .field("keys", &self.current().len())
            .finish()
    }
}

fn seen(read: &io::Result<Vec<u8>>) -> Seen {
    match read {
        Ok(bytes) => Seen::Content(Sha256::digest(bytes).into()),
        Err(e) => Seen::Unreadable(e.kind()),
    }
}

/// SIGHUP as a stream; where there is none (or it cannot be listened for), it never fires.
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    #[cfg(unix)]
    fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let signal = signal(SignalKind::hangup())
            .inspect_err(|error| {
                tracing::warn!(%error, "cannot listen for SIGHUP; API keys reload on file changes only")
            })
            .ok();
        Hangups { signal }
    }

    #[cfg(not(unix))]
    fn listen() -> Self {
        Hangups {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
            self.signal = None;
        }
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }

    fn line(name: &str, key: &str) -> String {
        format!("{name}:sha256:{}\n", hash_of(key))
    }

    fn two_keys() -> ApiKeys {
        let text = format!(
            "# keys for tests\n\n  {}\t\n   # indented comment\n{}",
            line("alice", "key-of-alice").trim_end(),
            line("bob.batch_2-x", "key-of-bob")
        );
        ApiKeys::parse(&text).unwrap()
    }

    #[test]
    fn parses_names_hashes_comments_and_blank_lines() {
        let keys = two_keys();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.verify("key-of-alice").map(ApiKey::name), Some("alice"));
        assert_eq!(
            keys.verify("key-of-bob").map(ApiKey::name),
            Some("bob.batch_2-x")
        );
    }

    #[test]
    fn accepts_uppercase_hex_crlf_and_a_byte_order_mark() {
        let text = format!(
            "\u{feff}upper:sha256:{}\r\n# done\r\n",
            hash_of("k").to_uppercase()
        );
        let keys = ApiKeys::parse(&text).unwrap();
        assert_eq!(keys.verify("k").map(ApiKey::name), Some("upper"));
    }

    #[test]
    fn verify_refuses_wrong_empty_and_near_keys() {
        let keys = two_keys();
        for wrong in ["", "key-of-alic", "key-of-alice ", "KEY-OF-ALICE", "alice"] {
            assert!(keys.verify(wrong).is_none(), "{wrong:?}");
        }
        // The hash itself is not a key.
        assert_eq!(
            keys.verify(&hash_of("key-of-alice")).map(ApiKey::name),
            None
        );
    }

    #[test]
    fn verify_finds_the_last_of_many_keys() {
        let text: String = (0..100)
            .map(|i| line(&format!("k{i}"), &format!("secret-{i}")))
            .collect();
        let keys = ApiKeys::parse(&text).unwrap();
        assert_eq!(keys.verify("secret-99").map(ApiKey::name), Some("k99"));
        assert_eq!(keys.verify("secret-0").map(ApiKey::name), Some("k0"));
        assert_eq!(keys.verify("secret-100").map(ApiKey::name), None);
    }

    /// Every kind of bad line: the error names the line and the reason, never the content.
    #[test]
    fn refuses_bad_lines_without_echoing_them() {
        let good = line("good", "g");
        let hash = hash_of("x");
        let cases = [
            (
                "hunter2-plaintext-secret".to_owned(),
                "expected `<name>:sha256:",
            ),
            ("svc:hunter2-plaintext-secret".to_owned(), "plaintext keys"),
            (format!(":sha256:{hash}"), "the name must be"),
            (
                format!("{}:sha256:{hash}", "n".repeat(65)),
                "the name must be",
            ),
            (
                format!("bad name:sha256:{hash}"),
                "expected `<name>:sha256:",
            ),
            (format!("bad/name:sha256:{hash}"), "the name must be"),
            (format!("bad\u{e9}:sha256:{hash}"), "the name must be"),
            (format!("svc:md5:{hash}"), "only `sha256:`"),
            (format!("svc:SHA256:{hash}"), "only `sha256:`"),
            (
                format!("svc:sha256:{}", &hash[..63]),
                "64 hexadecimal digits",
            ),
            (format!("svc:sha256:{hash}0"), "64 hexadecimal digits"),
            (
                format!("svc:sha256:{}g", &hash[..63]),
                "64 hexadecimal digits",
            ),
            (
                format!("svc:sha256: {}", &hash[..63]),
                "64 hexadecimal digits",
            ),
            ("svc:sha256:".to_owned(), "64 hexadecimal digits"),
            (
                line("good", "other").trim().to_owned(),
                "name is already used on line 2",
            ),
            (
                line("other", "g").trim().to_owned(),
                "same key is already listed on line 2",
            ),
        ];
        for (bad, why) in cases {
            let text = format!("# header\n{good}\n{bad}\n");
            let error = ApiKeys::parse(&text)
                .err()
                .unwrap_or_else(|| panic!("{bad} parsed"));
            assert!(error.starts_with("line 4: "), "{error}");
            assert!(error.contains(why), "{error} should say {why}");
            assert!(
                !error.contains("hunter2") && !error.contains(&hash[..16]),
                "{error}"
            );
        }
        // A name of exactly 64 characters is fine.
        ApiKeys::parse(&line(&"n".repeat(64), "k")).unwrap();
    }

    #[test]
    fn keys_belong_to_their_own_tenant_unless_told_otherwise() {
        let text = format!(
            "{}{} tenant=acme\n{}  role=admin\t tenant=acme\n{} role=member\n",
            line("solo", "k1"),
            line("shop-a", "k2").trim_end(),
            line("ops", "k3").trim_end(),
            line("plain", "k4").trim_end(),
        );
        let keys = ApiKeys::parse(&text).unwrap();
        let principal = |key: &str| keys.verify(key).unwrap().principal().clone();
        let tenant = |name: &str| Tenant::parse(name).unwrap();
        assert_eq!(principal("k1"), Principal::member(tenant("solo")));
        assert_eq!(principal("k2"), Principal::member(tenant("acme")));
        assert_eq!(principal("k3"), Principal::admin(tenant("acme")));
        assert_eq!(principal("k4"), Principal::member(tenant("plain")));
    }

    #[test]
    fn refuses_bad_attributes_without_echoing_them() {
        let hash = hash_of("x");
        for (attributes, why) in [
            ("tenant=", "the tenant must be"),
            ("tenant=a/b", "the tenant must be"),
            ("role=root", "the role must be"),
            ("owner=hunter2", "only `tenant=<name>`"),
            ("hunter2", "only `tenant=<name>`"),
            ("tenant=a tenant=b", "given twice"),
        ] {
            let error = ApiKeys::parse(&format!("svc:sha256:{hash} {attributes}\n"))
                .err()
                .unwrap_or_else(|| panic!("{attributes} parsed"));
            assert!(error.contains(why), "{error} should say {why}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn refuses_a_file_without_keys() {
        for text in ["", "\n\n", "# only a comment\n   \n"] {
            assert_eq!(ApiKeys::parse(text).err().as_deref(), Some("no keys"));
        }
    }

    #[test]
    fn load_names_the_path_in_errors() {
        let dir = tempfile::TempDir::new().unwrap();
        let missing = dir.path().join("missing.keys");
        let error = ApiKeys::load(&missing).unwrap_err();
        assert!(error.contains("missing.keys"), "{error}");

        let bad = dir.path().join("bad.keys");
        std::fs::write(&bad, "# nothing\n").unwrap();
        let error = ApiKeys::load(&bad).unwrap_err();
        assert!(
            error.contains("bad.keys") && error.ends_with("no keys"),
            "{error}"
        );

        let binary = dir.path().join("binary.keys");
        std::fs::write(&binary, [0xff, 0xfe, b'\n']).unwrap();
        let error = ApiKeys::load(&binary).unwrap_err();
        assert!(
            error.contains("binary.keys") && error.contains("UTF-8"),
            "{error}"
        );
    }

    #[test]
    fn debug_shows_names_but_no_hashes() {
        let shown = format!("{:?}", two_keys());
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains(&hash_of("key-of-alice")[..8]), "{shown}");
    }

    #[test]
    fn bearer_tokens() {
        let token = |v: &'static str| bearer_token(Some(v.as_bytes()));
        assert_eq!(token("Bearer abc"), Some("abc"));
        assert_eq!(token("bearer abc"), Some("abc"));
        assert_eq!(token("BEARER   a.b-c_d~e+f/g="), Some("a.b-c_d~e+f/g="));
        assert_eq!(bearer_token(None), None);
        for bad in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer    ",
            "Bearerabc",
            "Bearer\tabc",
            "Basic abc",
            "Bearer abc def",
            "Bearer abc ",
            " Bearer abc",
            "Bearer ab\u{e9}",
            "Bearer ab\x7f",
            "Token abc",
            "Bear abc",
        ] {
            assert_eq!(token(bad), None, "{bad:?}");
        }
        assert_eq!(bearer_token(Some(b"Bearer \xff\xfe")), None);
    }

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn reload_swaps_good_files_and_keeps_the_old_keys_on_a_bad_one() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("api.keys");
        write(&path, &line("a", "ka"));
        let ring = KeyRing::open(&path).unwrap();
        assert_eq!(ring.current().verify("ka").map(ApiKey::name), Some("a"));

        write(&path, &(line("a", "ka2") + &line("b", "kb")));
        assert_eq!(ring.reload(), Ok(2));
        assert_eq!(ring.current().verify("ka").map(ApiKey::name), None);
        assert_eq!(ring.current().verify("ka2").map(ApiKey::name), Some("a"));

        write(&path, "a:plaintext\n");
        let error = ring.reload().unwrap_err();
        assert!(
            error.contains("api.keys") && error.contains("line 1"),
            "{error}"
        );
        assert!(!error.contains("plaintext\n"), "{error}");
        assert_eq!(ring.current().len(), 2);
        assert_eq!(ring.current().verify("kb").map(ApiKey::name), Some("b"));

        std::fs::remove_file(&path).unwrap();
        assert!(ring.reload().is_err());
        assert_eq!(ring.current().verify("kb").map(ApiKey::name), Some("b"));
    }

    #[test]
    fn open_refuses_a_missing_or_bad_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("api.keys");
        assert!(KeyRing::open(&path).unwrap_err().contains("api.keys"));
        write(&path, "\n");
        assert!(KeyRing::open(&path).unwrap_err().ends_with("no keys"));
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} never happened"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_watcher_follows_rewrites_and_survives_bad_ones() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("api.keys");
        write(&path, &line("a", "one"));
        let ring = KeyRing::open(&path).unwrap();
        let stop = CancellationToken::new();
        let watch = ring.spawn_watch(Duration::from_millis(50), stop.clone());

        write(&path, &line("a", "two"));
        eventually("reload of a rewrite", || {
            ring.current().verify("two").is_some()
        })
        .await;

        write(&path, "not a key file\n");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(ring.current().verify("two").map(ApiKey::name), Some("a"));

        write(&path, &line("a", "three"));
        eventually("reload after a bad file", || {
            ring.current().verify("three").is_some()
        })
        .await;

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), watch)
            .await
            .expect("the watcher stops")
            .unwrap();
    }

    /// A Kubernetes secret volume: `api.keys -> ..data/api.keys`, `..data -> ..<timestamp>`,
    /// and an update swaps the `..data` symlink to a new directory in one rename.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_watcher_follows_a_swapped_symlink() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::TempDir::new().unwrap();
        let root = dir.path();
        for (version, key) in [("..v1", "first"), ("..v2", "second")] {
            std::fs::create_dir(root.join(version)).unwrap();
            write(&root.join(version).join("api.keys"), &line("svc", key));
        }
        symlink("..v1", root.join("..data")).unwrap();
        symlink("..data/api.keys", root.join("api.keys")).unwrap();
        let ring = KeyRing::open(&root.join("api.keys")).unwrap();
        assert_eq!(
            ring.current().verify("first").map(ApiKey::name),
            Some("svc")
        );
        let stop = CancellationToken::new();
        let _watch = ring.spawn_watch(Duration::from_millis(50), stop.clone());

        symlink("..v2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        eventually("reload after a symlink swap", || {
            ring.current().verify("second").is_some()
        })
        .await;
        stop.cancel();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sighup_reloads() {
        use tokio::signal::unix::{SignalKind, signal};
        // Listening here first means a SIGHUP can never end the test process.
        let _hangups = signal(SignalKind::hangup()).unwrap();
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("api.keys");
        write(&path, &line("a", "before"));
        let ring = KeyRing::open(&path).unwrap();
        let stop = CancellationToken::new();
        // Polling is too slow to see the change: only SIGHUP can.
        let _watch = ring.spawn_watch(Duration::from_secs(3600), stop.clone());
        write(&path, &line("a", "after"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        // The watcher may not listen yet: signal until it has reloaded.
        while ring.current().verify("after").is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "SIGHUP did not reload"
            );
            let status = std::process::Command::new("sh")
                .args(["-c", &format!("kill -HUP {}", std::process::id())])
                .status()
                .unwrap();
            assert!(status.success());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.cancel();
    }
}

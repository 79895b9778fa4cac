//! The deploy recipes (Dockerfile, docker-compose.yml, fly.toml, deploy/k8s/) against the code:
//! they set only settings tracknum has, probe its real endpoints on its real port, and the
//! Dockerfile's dependency layer covers every target of the workspace's packages. File checks
//! only: nothing is built or deployed, and only `tracknum --help` runs.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use regex::Regex;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path))
        .unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// Every recipe as (path, text).
fn recipes() -> Vec<(String, String)> {
    let mut paths: Vec<String> = ["Dockerfile", "docker-compose.yml", "fly.toml"]
        .map(String::from)
        .into();
    let mut manifests: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("deploy/k8s"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .map(|name| format!("deploy/k8s/{name}"))
        .collect();
    manifests.sort();
    paths.extend(manifests);
    paths
        .into_iter()
        .map(|path| {
            let text = read(&path);
            (path, text)
        })
        .collect()
}

/// The first group of every match of `pattern` in `text`.
fn all(pattern: &str, text: &str) -> Vec<String> {
    Regex::new(pattern)
        .unwrap()
        .captures_iter(text)
        .map(|found| found[1].to_owned())
        .collect()
}

fn help() -> String {
    let help = Command::new(env!("CARGO_BIN_EXE_tracknum"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    String::from_utf8(help.stdout).unwrap()
}

#[test]
fn recipes_set_only_settings_tracknum_has() {
    let known: BTreeSet<String> = all(r"\[env: ([A-Z0-9_]+)", &help()).into_iter().collect();
    assert!(known.contains("REDIS_URL"), "{known:?}");
    for (path, text) in recipes() {
        let used = all(r"\b(TRACKNUM_[A-Z0-9_]+|REDIS_URL)\b", &text);
        for name in &used {
            assert!(
                known.contains(name),
                "{path} names {name}, which `tracknum --help` does not list"
            );
        }
        // tracknum refuses to start on Redis without a secret.
        let set: String = text
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .collect();
        if set.contains("REDIS_URL") {
            assert!(
                set.contains("TRACKNUM_SECRET"),
                "{path} sets REDIS_URL but not TRACKNUM_SECRET"
            );
        }
    }
}

#[test]
fn recipes_probe_the_real_endpoints_on_the_real_port() {
    let port = all(r"\[default: \d+\.\d+\.\d+\.\d+:(\d+)\]", &help());
    assert_eq!(port.len(), 1, "one default listen address in --help");
    let port = &port[0];
    let snapshot: serde_json::Value =
        serde_json::from_str(&read("tests/snapshots/openapi.json")).unwrap();
    for probe in ["/healthz", "/readyz"] {
        assert!(snapshot["paths"][probe].is_object(), "{probe} is gone");
    }

    for (path, text) in recipes() {
        // Probes must be the two endpoints that need no API key and are never rate limited.
        let probes = all(
            r#"(?:path = "|path: |127\.0\.0\.1:[^/\s"]*)(/[\w./-]*)"#,
            &text,
        );
        for probe in &probes {
            assert!(
                probe == "/healthz" || probe == "/readyz",
                "{path} probes {probe}"
            );
        }
        let ports = all(
            r"(?:EXPOSE |internal_port = |containerPort: |127\.0\.0\.1:|0\.0\.0\.0:)(\d+)",
            &text,
        );
        for found in &ports {
            assert_eq!(
                found, port,
                "{path} uses port {found}, tracknum listens on {port}"
            );
        }
        let runs_tracknum = ["Dockerfile", "docker-compose.yml", "fly.toml"].contains(&&*path)
            || path.ends_with("deployment.yaml");
        if runs_tracknum {
            assert!(!probes.is_empty(), "{path} has no health check");
            assert!(!ports.is_empty(), "{path} names no port");
        }
    }

    let deployment = read("deploy/k8s/deployment.yaml");
    let probe = |kind: &str| all(&format!(r"{kind}:\s*httpGet:\s*path: (\S+)"), &deployment);
    assert_eq!(probe("livenessProbe"), ["/healthz"]);
    assert_eq!(probe("readinessProbe"), ["/readyz"]);

    let upstreams = read("deploy/compose/tracknum-upstreams.conf");
    for found in all(r"(?m)^\s*server [\w.-]+:(\d+)", &upstreams) {
        assert_eq!(&found, port, "nginx sends to port {found}");
    }
}

#[test]
fn compose_runs_the_instances_nginx_balances() {
    let compose = read("docker-compose.yml");
    // The services are the two-space keys of the top-level `services:` block.
    let service = Regex::new(r"^  ([\w.-]+):").unwrap();
    let services: BTreeSet<String> = compose
        .lines()
        .skip_while(|line| *line != "services:")
        .skip(1)
        .take_while(|line| line.is_empty() || line.starts_with([' ', '#']))
        .filter_map(|line| Some(service.captures(line)?[1].to_owned()))
        .collect();
    let instances: BTreeSet<String> = services
        .iter()
        .filter(|name| name.starts_with("tracknum"))
        .cloned()
        .collect();
    let upstreams = read("deploy/compose/tracknum-upstreams.conf");
    let balanced: BTreeSet<String> = all(r"(?m)^\s*server ([\w.-]+):", &upstreams)
        .into_iter()
        .collect();
    assert!(!balanced.is_empty());
    assert_eq!(
        instances, balanced,
        "docker-compose.yml runs {instances:?}; tracknum-upstreams.conf balances {balanced:?}"
    );

    for file in all(r"- \./([^:\s]+):", &compose) {
        assert!(
            Path::new(ROOT).join(&file).is_file(),
            "docker-compose.yml mounts {file}, which does not exist"
        );
    }
    for included in all(r"include ([\w.-]+);", &read("deploy/nginx.conf")) {
        assert!(
            compose.contains(&format!(":/etc/nginx/{included}:ro")),
            "nginx.conf includes {included}, which docker-compose.yml does not mount"
        );
    }
}

/// Recipes that run several instances (Compose's three, Fly's two machines, the Deployment's
/// replicas) must share one counter: each refuses to start without Redis rather than run an
/// embedded store of its own, which would issue the numbers the others issue.
#[test]
fn recipes_of_several_instances_refuse_to_start_without_redis() {
    let several = [
        ("docker-compose.yml", r#"TRACKNUM_REQUIRE_REDIS: "true""#),
        ("fly.toml", r#"TRACKNUM_REQUIRE_REDIS = "true""#),
        (
            "deploy/k8s/deployment.yaml",
            "- name: TRACKNUM_REQUIRE_REDIS\n              value: \"true\"",
        ),
    ];
    for (path, setting) in several {
        assert!(
            read(path).contains(setting),
            "{path} does not set {setting}"
        );
    }
    assert!(read("fly.toml").contains("min_machines_running = 2"));
    // And the setting does what the recipes rely on: no Redis, no start, and the reason.
    let refused = Command::new(env!("CARGO_BIN_EXE_tracknum"))
        .env("TRACKNUM_REQUIRE_REDIS", "true")
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER_URLS")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("REDIS_URL") && said.contains("issue the same numbers"),
        "{said}"
    );
}

#[test]
fn the_dockerfile_stubs_every_target_in_the_workspace() {
    let dockerfile = read("Dockerfile");
    let root = read("Cargo.toml");
    // Cargo loads every member, so every member's targets need a stand-in.
    let members = workspace_members(&root);
    let mut declared = BTreeSet::new();
    for member in &members {
        if member == "." {
            declared.extend(declared_targets(&root));
        } else {
            let manifest = read(&format!("{member}/Cargo.toml"));
            let targets = declared_targets(&manifest).into_iter();
            declared.extend(targets.map(|target| format!("{member}/{target}")));
        }
    }
    let stubs: BTreeSet<String> = all(r"> (\S+\.rs)", &dockerfile).into_iter().collect();
    assert_eq!(
        stubs, declared,
        "the Dockerfile's dependency layer stubs {stubs:?}, but the workspace declares {declared:?}"
    );

    // The real sources of those targets are copied in, and .dockerignore lets them through.
    let mut sources = BTreeSet::new();
    for line in dockerfile.lines() {
        if let Some(args) = line
            .strip_prefix("COPY ")
            .filter(|_| !line.contains("--from"))
        {
            let args: Vec<&str> = args.split_whitespace().collect();
            sources.extend(args[..args.len() - 1].iter().map(|arg| arg.to_string()));
        }
    }
    for stub in &stubs {
        let dir = stub.split('/').next().unwrap();
        if members.iter().any(|member| member == dir) {
            // Another package: loaded with the workspace, its manifest at least is copied in.
            let manifest = format!("{dir}/Cargo.toml");
            assert!(
                sources.contains(dir) || sources.contains(&manifest),
                "the Dockerfile never copies {manifest}"
            );
        } else {
            assert!(sources.contains(dir), "the Dockerfile never copies {dir}/");
        }
    }
    let ignore = read(".dockerignore");
    for source in &sources {
        assert!(
            ignore
                .lines()
                .any(|line| line.trim().trim_end_matches('/') == format!("!{source}")),
            ".dockerignore keeps out {source}, which the Dockerfile copies"
        );
    }
}

/// The members of the workspace, as the root Cargo.toml lists them (`.` is the root package).
fn workspace_members(manifest: &str) -> Vec<String> {
    let lists = all(r"(?m)^members = \[([^\]]*)\]", manifest);
    assert_eq!(lists.len(), 1, "one members list in Cargo.toml");
    all(r#""([^"]+)""#, &lists[0])
}

/// The source file of every target a package's Cargo.toml declares, where cargo looks for it
/// (relative to the package).
fn declared_targets(manifest: &str) -> BTreeSet<String> {
    let package = all(r#"(?m)^name = "([^"]+)""#, manifest)[0].clone();
    let mut targets = BTreeSet::new();
    let (mut table, mut name, mut path) = (String::new(), None, None);
    for line in manifest.lines().map(str::trim).chain(["[end]"]) {
        if line.starts_with('[') {
            targets.extend(target_file(&table, name.take(), path.take(), &package));
            table = line.trim_matches(['[', ']']).to_owned();
        } else if let Some((key, value)) = line.split_once('=') {
            let value = Some(value.trim().trim_matches('"').to_owned());
            match key.trim() {
                "name" => name = value,
                "path" => path = value,
                _ => {}
            }
        }
    }
    targets
}

/// A target's `path`, or cargo's default for its kind; None for tables that are not targets.
fn target_file(
    table: &str,
    name: Option<String>,
    path: Option<String>,
    package: &str,
) -> Option<String> {
    let name = name.unwrap_or_default();
    let default = match table {
        "lib" => "src/lib.rs".to_owned(),
        "bin" if name == package => "src/main.rs".to_owned(),
        "bin" => format!("src/bin/{name}.rs"),
        "bench" => format!("benches/{name}.rs"),
        "test" => format!("tests/{name}.rs"),
        "example" => format!("examples/{name}.rs"),
        _ => return None,
    };
    Some(path.unwrap_or(default))
}

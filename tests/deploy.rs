//! The deployment files of doc/deploy/ (issue #14, deployment): the
//! systemd unit passes `systemd-analyze verify` and keeps its hardening,
//! the configurations in doc/deploy.md and in the Nomad job load, and the
//! certbot hook copies the certificate and asks for the reload.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_facteur");

fn doc(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("doc").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(doc(path)).unwrap()
}

/// Whether `tool` can be run; when it cannot, the test is skipped with a
/// notice, or fails if `FACTEUR_REQUIRE_SYSTEMD_ANALYZE=1` (scripts/test.sh
/// installs it).
fn have_systemd_analyze() -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("FACTEUR_REQUIRE_SYSTEMD_ANALYZE").as_deref() != Ok("1"),
            "systemd-analyze is required (apt-get install systemd)"
        );
        eprintln!(
            "notice: systemd unit checks skipped (no systemd-analyze; apt-get install systemd)"
        );
    }
    found
}

/// The unit with `ExecStart=` pointing at the binary just built, so that
/// `verify` checks it exists and is executable, in a directory of its own.
fn unit_here() -> (tempfile::TempDir, PathBuf) {
    let unit = read("deploy/facteur.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/facteur "), "{unit}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("facteur.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/facteur", BIN)).unwrap();
    (dir, path)
}

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    if !have_systemd_analyze() {
        return;
    }
    let (_dir, path) = unit_here();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // verify only warns about unknown keys and bad values, and succeeds.
    assert!(stderr.trim().is_empty(), "{stderr}");
}

/// `systemd-analyze security` scores what the unit leaves exposed (0 is
/// fully locked down, 10 unprotected); the shipped unit scores 1.8, and a
/// hardening line dropped by mistake raises it past 2.
#[test]
fn the_systemd_unit_stays_hardened() {
    let unit = read("deploy/facteur.service");
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for wanted in [
        "User=facteur",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "Environment=MALLOC_ARENA_MAX=2",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
    ] {
        assert!(lines.contains(&wanted), "{wanted} missing from the unit");
    }
    assert!(!lines.iter().any(|l| l.starts_with("ReadWritePaths=")));
    if !have_systemd_analyze() {
        return;
    }
    let (_dir, path) = unit_here();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first ```toml block of doc/deploy.md, as written there, loads.
#[test]
fn the_configuration_in_deploy_md_loads() {
    let text = read("deploy.md");
    let start = text.find("```toml\n").unwrap() + "```toml\n".len();
    let toml = &text[start..start + text[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster-secret"), "0123456789abcdef0123\n").unwrap();
    std::fs::write(dir.path().join("s3-secret-key"), "secret\n").unwrap();
    let path = dir.path().join("facteur.toml");
    std::fs::write(&path, toml).unwrap();
    let config = facteur::config::Config::load(&path).unwrap();
    config.cluster_secret().unwrap();
    assert_eq!(
        config.imap.certificate.as_deref(),
        Some(dir.path().join("tls/fullchain.pem").as_path())
    );
    assert_eq!(
        config.lmtp.listen,
        vec!["127.0.0.1:24".parse::<std::net::SocketAddr>().unwrap()]
    );
}

/// The `data` heredoc of the template rendered to `destination` in the
/// Nomad job.
fn nomad_template<'a>(job: &'a str, destination: &str) -> &'a str {
    let at = job
        .find(&format!("\"{destination}\""))
        .unwrap_or_else(|| panic!("no template for {destination}"));
    let start = at + job[at..].find("<<-EOT\n").unwrap() + "<<-EOT\n".len();
    &job[start..start + job[start..].find("EOT\n").unwrap()]
}

/// The Facteur configuration of the Nomad job, with its template
/// expressions rendered as Nomad would (by hand), loads; the certificate
/// templates signal SIGHUP rather than restart.
#[test]
fn the_nomad_job_renders_a_configuration_that_loads() {
    let job = read("deploy/facteur.nomad.hcl");
    let template = nomad_template(&job, "local/facteur.toml");
    let rendered = template
        .replace(
            "{{ with nomadVar \"nomad/jobs/facteur\" }}{{ .s3_access_key_id }}{{ end }}",
            "GK0123456789abcdef01234567",
        )
        .replace("{{ env \"NOMAD_ADDR_http\" }}", "192.0.2.10:9180");
    assert!(!rendered.contains("{{"), "unrendered: {rendered}");
    let alloc = tempfile::tempdir().unwrap();
    let (local, secrets) = (alloc.path().join("local"), alloc.path().join("secrets"));
    std::fs::create_dir_all(&local).unwrap();
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("cluster-secret"), "0123456789abcdef0123").unwrap();
    std::fs::write(secrets.join("s3-secret-access-key"), "secret").unwrap();
    let path = local.join("facteur.toml");
    std::fs::write(&path, rendered).unwrap();
    let config = facteur::config::Config::load(&path).unwrap();
    config.cluster_secret().unwrap();
    let cert = config.imap.certificate.clone().unwrap();
    assert!(cert.ends_with("secrets/fullchain.pem"), "{cert:?}");

    for destination in ["secrets/fullchain.pem", "secrets/privkey.pem"] {
        let at = job.find(&format!("\"{destination}\"")).unwrap();
        let block = &job[job[..at].rfind("template {").unwrap()..at + 400];
        assert!(block.contains("change_mode   = \"signal\""), "{block}");
        assert!(block.contains("change_signal = \"SIGHUP\""), "{block}");
    }
}

/// The certbot hook, run as certbot would after a renewal: the files are
/// copied, group-readable only, and the reload command runs once they are
/// in place; another lineage is left alone.
#[test]
fn the_certbot_hook_copies_the_certificate_then_reloads() {
    let hook = doc("deploy/certbot-deploy-hook.sh");
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live/mail.example.org");
    let dest = dir.path().join("tls");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(live.join("fullchain.pem"), "chain B").unwrap();
    std::fs::write(live.join("privkey.pem"), "key B").unwrap();
    std::fs::write(dest.join("privkey.pem"), "key A").unwrap();
    let group = String::from_utf8(Command::new("id").arg("-gn").output().unwrap().stdout).unwrap();
    let marker = dir.path().join("reloaded");
    // The reload records what the key file held when it ran.
    let reload = format!(
        "cp {} {}",
        dest.join("privkey.pem").display(),
        marker.display()
    );
    let run = |lineage: &Path| {
        let out = Command::new("sh")
            .arg(&hook)
            .env("RENEWED_LINEAGE", lineage)
            .env("FACTEUR_TLS_DIR", &dest)
            .env("FACTEUR_GROUP", group.trim())
            .env("FACTEUR_RELOAD", &reload)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    run(&dir.path().join("live/other.example.org"));
    assert!(!marker.exists(), "another certificate reloaded Facteur");
    assert_eq!(
        std::fs::read_to_string(dest.join("privkey.pem")).unwrap(),
        "key A"
    );

    run(&live);
    assert_eq!(
        std::fs::read_to_string(dest.join("fullchain.pem")).unwrap(),
        "chain B"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "key B");
    use std::os::unix::fs::PermissionsExt;
    for name in ["fullchain.pem", "privkey.pem"] {
        let mode = std::fs::metadata(dest.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640, "{name}: {mode:o}");
    }
    let left: Vec<_> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "temporary files left: {left:?}");
}

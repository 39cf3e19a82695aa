//! A throwaway sshd on loopback serving bare git repositories (testing-recipes §1).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{current_user, free_port};

const SSHD: &str = "/usr/sbin/sshd";

pub struct TestSshd {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
    user: String,
}

impl TestSshd {
    /// Starts sshd on a free loopback port and waits until it listens.
    pub fn start() -> TestSshd {
        if !Path::new(SSHD).exists() {
            panic!("sshd not found at {SSHD}: run scripts/test (installs openssh-server)");
        }
        // Privilege separation directory; only root can create it, and only root needs it.
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = tempfile::Builder::new()
            .prefix("ocm-sshd-")
            .tempdir()
            .expect("creating the sshd temp dir");
        let ssh = dir.path().join("ssh");
        std::fs::create_dir_all(&ssh).expect("creating <tmp>/ssh");
        std::fs::create_dir_all(dir.path().join("git")).expect("creating <tmp>/git");
        set_mode(&ssh, 0o700);
        let host_key = ssh.join("host_key");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "ocm-test-host", "-f"])
            .arg(&host_key));
        let authorized = ssh.join("authorized_keys");
        std::fs::write(&authorized, "").expect("creating authorized_keys");
        set_mode(&authorized, 0o600);
        let log_path = ssh.join("sshd.log");
        let mut last_log = String::new();
        // The port is free when picked but may be taken before sshd binds it: retry a few times.
        for _ in 0..5 {
            let port = free_port();
            let config = ssh.join("sshd_config");
            write_config(&config, port, &ssh);
            let log = std::fs::File::create(&log_path).expect("creating sshd.log");
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {SSHD}: {e}"));
            let ready = format!("Server listening on 127.0.0.1 port {port}.");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                if last_log.contains(&ready) {
                    return TestSshd {
                        port,
                        dir,
                        child,
                        user: current_user(),
                    };
                }
                let exited = child.try_wait().expect("polling sshd").is_some();
                if exited || Instant::now() >= deadline {
                    if !exited {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if !last_log.contains("Address already in use") {
                break;
            }
        }
        panic!("sshd did not start listening within 10 s; its log:\n{last_log}");
    }

    /// Creates the bare repo `<tmp>/git/<name>.git` with one commit on `main` (README.md
    /// containing `hello from <name>`), and returns its `ssh://` URL.
    pub fn create_repo(&self, name: &str) -> String {
        let bare = self.repo_path(name);
        let work = self.dir.path().join("work").join(name);
        std::fs::create_dir_all(&work).expect("creating the seed work tree");
        run(git().args(["init", "-q", "--bare"]).arg(&bare));
        run(git().args(["init", "-q"]).arg(&work));
        std::fs::write(work.join("README.md"), format!("hello from {name}\n"))
            .expect("writing README.md");
        run(git().arg("-C").arg(&work).args(["add", "README.md"]));
        run(git()
            .arg("-C")
            .arg(&work)
            .args(["commit", "-q", "-m", "initial commit"]));
        run(git()
            .arg("-C")
            .arg(&work)
            .arg("push")
            .arg("-q")
            .arg(&bare)
            .arg("HEAD:refs/heads/main"));
        run(git()
            .arg("-C")
            .arg(&bare)
            .args(["symbolic-ref", "HEAD", "refs/heads/main"]));
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            bare.display()
        )
    }

    /// Appends a public key line to `authorized_keys` (sshd re-reads it per connection).
    pub fn authorize(&self, public_key_line: &str) {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("ssh/authorized_keys"))
            .expect("opening authorized_keys");
        writeln!(file, "{}", public_key_line.trim()).expect("appending to authorized_keys");
    }

    /// `<tmp>/git/<name>.git`
    pub fn repo_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("git").join(format!("{name}.git"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ssh/sshd.log")).unwrap_or_default()
    }

    /// The temp dir holding keys, config, log and repos.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(config: &Path, port: u16, ssh: &Path) {
    let base = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {ssh}/host_key\n\
         AuthorizedKeysFile {ssh}/authorized_keys\nPermitRootLogin prohibit-password\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n\
         PidFile {ssh}/sshd.pid\n",
        ssh = ssh.display()
    );
    // OpenSSH >= 9.8 throttles sources after failed logins, which would make tests that try a
    // refused key flaky. Older versions reject the option, so keep it only if `sshd -t` accepts it.
    std::fs::write(config, format!("{base}PerSourcePenalties no\n")).expect("writing sshd_config");
    let accepted = Command::new(SSHD)
        .arg("-t")
        .arg("-f")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !accepted {
        std::fs::write(config, &base).expect("writing sshd_config");
        let out = Command::new(SSHD)
            .arg("-t")
            .arg("-f")
            .arg(config)
            .output()
            .expect("running sshd -t");
        if !out.status.success() {
            panic!(
                "sshd -t rejected the test config: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// git that needs no global identity or default-branch configuration.
fn git() -> Command {
    let mut cmd = Command::new("git");
    cmd.args([
        "-c",
        "user.name=OCM Test",
        "-c",
        "user.email=ocm-test@example.invalid",
        "-c",
        "init.defaultBranch=main",
        "-c",
        "commit.gpgsign=false",
    ]);
    cmd
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

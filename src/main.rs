//! The `facteur` command line: `serve`, `user add|passwd|list|delete|rekey|check|requeue`,
//! `import`, `export`, `admin escrow-keygen` and `config check`. User mistakes end with one clear line on stderr and a
//! non-zero exit status, never a panic.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use facteur::account::AccountError;
use facteur::config::{Config, DirectoryBackend, StoreBackend};
use facteur::crypto::{CryptoError, Password, RecoveryKey};
use facteur::directory::users_file::hash_password;
use facteur::directory::{Directory, LdapDirectory, UserEntry, UsersFile, normalise_login};
use facteur::server::{self, Services, Shutdown, http};
use facteur::size::ByteSize;
use facteur::store::layout::UserId;

/// jemalloc instead of glibc's malloc: the S3 client allocates for every
/// request, and glibc's malloc took a quarter of the server's CPU under
/// load (doc/performance.md). The `jemalloc` feature, off by default.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "facteur",
    version,
    about = "IMAP + LMTP mail server with encrypted mailboxes in S3"
)]
struct Cli {
    /// Configuration file. Without one, the embedded default is used: an
    /// `fs` store and a users file under --data-dir.
    #[arg(short, long, env = "FACTEUR_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory of the embedded default (ignored with --config).
    #[arg(long, default_value = "facteur-data", global = true)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGINT or SIGTERM; SIGHUP reloads the TLS
    /// certificate.
    Serve {
        /// Listen address of the health and metrics endpoint, overriding
        /// `[http] listen`.
        #[arg(long)]
        http: Option<SocketAddr>,
        /// TCP listen address of LMTP, replacing `[lmtp] listen` (the Unix
        /// socket, if configured, still listens).
        #[arg(long)]
        lmtp: Option<SocketAddr>,
        /// Listen address of IMAP with STARTTLS, replacing `[imap]
        /// starttls_listen`.
        #[arg(long)]
        imap: Option<SocketAddr>,
        /// Listen address of IMAP over implicit TLS, replacing `[imap]
        /// tls_listen`.
        #[arg(long)]
        imaps: Option<SocketAddr>,
    },
    /// Manage users: `add` and `passwd` edit the static users file; `list`,
    /// `delete`, `rekey`, `check` and `requeue` work with any directory,
    /// LDAP included. Passwords are asked on the terminal, or read one per
    /// line from standard input.
    #[command(subcommand)]
    User(UserCommand),
    /// Import mail from another server into a user's mailboxes: a Dovecot
    /// Maildir (UIDVALIDITY, UIDs, flags, keywords and subscriptions kept
    /// where the folder is new) or mbox files (one folder each). Running it
    /// again, or after an interruption, imports only what is missing.
    /// Asks for the user's password (doc/migration.md).
    Import {
        /// The user's login.
        #[arg(long)]
        login: String,
        /// The user's Maildir (the directory holding cur/, new/ and the
        /// `.Folder` directories).
        #[arg(long, required_unless_present = "mbox", conflicts_with = "mbox")]
        maildir: Option<PathBuf>,
        /// An mbox file, imported into the folder named after it
        /// (repeatable; `inbox` goes to INBOX).
        #[arg(long)]
        mbox: Vec<PathBuf>,
        /// Unlock with the recovery key instead of the password.
        #[arg(long)]
        recovery: bool,
    },
    /// Write a user's mailboxes as a Maildir with Dovecot's UID files,
    /// which Dovecot and `facteur import` read with the same UIDs. Asks
    /// for the user's password.
    Export {
        /// The user's login.
        #[arg(long)]
        login: String,
        /// The Maildir to write (must not exist, or be empty).
        #[arg(long)]
        to: PathBuf,
        /// Unlock with the recovery key instead of the password.
        #[arg(long)]
        recovery: bool,
    },
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The association's administration keys.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Make an admin escrow key pair: the secret half goes to FILE (created
    /// 0600; keep it offline), the public half is printed for `[crypto]
    /// escrow_public_key`. With it configured, `user passwd` and `user
    /// rekey` accept `--escrow-key FILE` to set a new password for a user
    /// who lost both the password and the recovery key.
    EscrowKeygen { file: PathBuf },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user: a users-file entry and a keyring in the store. Prints
    /// the recovery key once.
    Add {
        /// The user's login: the user name given in mail clients.
        login: String,
        /// An address delivered to the user (repeatable; the first is the
        /// primary one). Defaults to the login if it looks like an address.
        #[arg(long = "address")]
        addresses: Vec<String>,
        /// A further address delivered to the user (repeatable).
        #[arg(long = "alias")]
        aliases: Vec<String>,
        /// Storage quota, e.g. "2 GiB".
        #[arg(long)]
        quota: Option<ByteSize>,
        /// Most messages kept, all mailboxes together.
        #[arg(long)]
        quota_messages: Option<u64>,
        /// Do not create a recovery key.
        #[arg(long)]
        no_recovery: bool,
    },
    /// Change a user's password: unlock with the current password (or the
    /// recovery key) and re-wrap the keys. No mail is re-encrypted.
    Passwd {
        /// The user's login: the user name given in mail clients.
        login: String,
        /// Unlock with the recovery key instead of the current password.
        #[arg(long)]
        recovery: bool,
        /// Unlock with the admin escrow secret key in this file instead
        /// (`admin escrow-keygen`).
        #[arg(long, conflicts_with = "recovery")]
        escrow_key: Option<PathBuf>,
        /// Also replace the recovery key (the new one is printed once).
        #[arg(long)]
        new_recovery: bool,
    },
    /// List users, their addresses and whether their keyring exists. With
    /// LDAP: every user who has data in the store, by login where the
    /// directory knows it, `unknown (id …)` where it no longer does.
    List,
    /// Delete a user and, unless --keep-data, all of the user's mail. With
    /// LDAP: erase the mail of a login, whether or not its entry is still
    /// in the directory (people are removed in LDAP).
    Delete {
        /// The user's login: the user name given in mail clients.
        login: String,
        /// Confirm erasing the user's mail from the store.
        #[arg(long)]
        yes: bool,
        /// Only remove the users-file entry; keep the data in the store.
        #[arg(long)]
        keep_data: bool,
    },
    /// Make the keyring open with the password the directory now has for
    /// the user (after it changed outside Facteur): unlock with the old
    /// password or the recovery key, then give the directory's password.
    Rekey {
        /// The user's login: the user name given in mail clients.
        login: String,
        /// Unlock with the recovery key instead of the old password.
        #[arg(long)]
        recovery: bool,
        /// Unlock with the admin escrow secret key in this file instead
        /// (`admin escrow-keygen`).
        #[arg(long, conflicts_with = "recovery")]
        escrow_key: Option<PathBuf>,
        /// Also replace the recovery key (the new one is printed once).
        #[arg(long)]
        new_recovery: bool,
    },
    /// Read every object of a user (mailbox list, every mailbox's ops,
    /// snapshots and summary pages, every message body) and report what
    /// is damaged or missing. Asks for the user's password (its keys
    /// decrypt the data). Exits with status 1 if anything is wrong.
    Check {
        /// The user's login: the user name given in mail clients.
        login: String,
        /// Unlock with the recovery key instead of the password.
        #[arg(long)]
        recovery: bool,
        /// Repair what can be: new snapshots without the lost ops, damaged
        /// objects deleted, messages whose body is gone expunged.
        #[arg(long)]
        repair: bool,
    },
    /// List the user's quarantined delivery records (not written by an
    /// instance of this cluster, or damaged), or put the named ones back
    /// into the queue with a valid MAC: only for records known to be
    /// genuine (written before records were authenticated, or under a
    /// previous cluster secret). Whatever they hold is then delivered.
    Requeue {
        /// The user's login: the user name given in mail clients.
        login: String,
        /// Record names, as listed; none lists them.
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Parse the configuration, resolve its secrets, open the directory and
    /// reach the object store.
    Check,
}

/// What `serve` logs when `RUST_LOG` is unset: Facteur's events at `info`
/// (one line per login, doc/logging.md), and rustls only when it fails:
/// its warnings are about clients (e.g. "Illegal SNI extension: ignoring
/// IP address" for every connection of a client that sends an IP address
/// as server name, as neomutt does) and would drown the rest.
const SERVE_LOG_FILTER: &str = "info,rustls=error";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.command {
        Command::Serve { .. } => SERVE_LOG_FILTER,
        // The error itself is printed once at exit; logs would repeat it.
        _ => "error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A log nobody reads any more (`serve | tee log` after Ctrl-C
        // killed tee) is not worth a panic on the broken pipe.
        .log_internal_errors(false)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "facteur: error: cannot start the runtime: {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "facteur: error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: a cause whose
/// text its context already quotes (`cannot read config file x: No such
/// file...`) is not repeated.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Prints a line on standard output for whoever started `facteur`. A
/// closed output (the reader of a pipe is gone) is not an error: the
/// server goes on, and stops cleanly when told.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

async fn run(cli: Cli) -> Result<()> {
    let embedded = cli.config.is_none();
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => {
            prepare_data_dir(&cli.data_dir)?;
            Config::embedded(&cli.data_dir)
        }
    };
    let mut prompt = Prompter::new();
    match cli.command {
        Command::Serve {
            http,
            lmtp,
            imap,
            imaps,
        } => {
            let overrides = Overrides {
                http,
                lmtp,
                imap,
                imaps,
            };
            serve(config, embedded, overrides, &mut prompt).await
        }
        Command::Config(ConfigCommand::Check) => config_check(&config).await,
        Command::Import {
            login,
            maildir,
            mbox,
            recovery,
        } => {
            let source = match maildir {
                Some(dir) => facteur::migrate::Source::maildir(&dir)?,
                None => facteur::migrate::Source::mbox(&mbox)?,
            };
            let services = Services::from_config(&config)?;
            let account = open_account(&services, &login, recovery, &mut prompt).await?;
            import(&account, &source).await
        }
        Command::Export {
            login,
            to,
            recovery,
        } => {
            let services = Services::from_config(&config)?;
            let account = open_account(&services, &login, recovery, &mut prompt).await?;
            export(&account, &to).await
        }
        Command::Admin(AdminCommand::EscrowKeygen { file }) => escrow_keygen(&file),
        Command::User(cmd) => {
            let services = Services::from_config(&config)?;
            // add and passwd edit the users file; list and delete read it,
            // or with LDAP the store; the others work with any directory.
            let users_file = || users_file_path(&config);
            let ldap = config.directory.backend == DirectoryBackend::Ldap;
            match cmd {
                UserCommand::Add {
                    login,
                    addresses,
                    aliases,
                    quota,
                    quota_messages,
                    no_recovery,
                } => {
                    // What can be told without the password is told first.
                    let login = check_new_login(&users_file()?, &login)?;
                    let password = prompt.new_password(&login)?;
                    let has_address = !addresses.is_empty() || login.contains('@');
                    let new = NewUser {
                        login,
                        addresses,
                        aliases,
                        quota,
                        quota_messages,
                        recovery: !no_recovery,
                    };
                    let (login, recovery) =
                        add_user(&services, &users_file()?, new, &password).await?;
                    say!("created user {login}");
                    print_recovery_key(recovery.as_ref());
                    if !has_address {
                        // It can log in, but no mail can be delivered to it.
                        let _ = writeln!(
                            std::io::stderr(),
                            "facteur: warning: {login} has no address, so no mail can be \
                             delivered to it: add `addresses = [\"{login}@example.org\"]` to its \
                             entry in {}, or delete it and add it again with --address",
                            users_file()?.display()
                        );
                    }
                    Ok(())
                }
                UserCommand::Passwd {
                    login,
                    recovery,
                    escrow_key,
                    new_recovery,
                } => {
                    let with = Unlock::new(recovery, escrow_key);
                    passwd(
                        &services,
                        &users_file()?,
                        &login,
                        with,
                        new_recovery,
                        &mut prompt,
                    )
                    .await
                }
                UserCommand::List if ldap => list_ldap(&services, &config).await,
                UserCommand::List => list(&services, &users_file()?).await,
                UserCommand::Delete {
                    login,
                    yes,
                    keep_data,
                } if ldap => delete_ldap(&services, &login, yes, keep_data).await,
                UserCommand::Delete {
                    login,
                    yes,
                    keep_data,
                } => delete(&services, &users_file()?, &login, yes, keep_data).await,
                UserCommand::Rekey {
                    login,
                    recovery,
                    escrow_key,
                    new_recovery,
                } => {
                    let with = Unlock::new(recovery, escrow_key);
                    rekey(&services, &login, with, new_recovery, &mut prompt).await
                }
                UserCommand::Requeue { login, names } => requeue(&services, &login, &names).await,
                UserCommand::Check {
                    login,
                    recovery,
                    repair,
                } => check(&services, &login, recovery, repair, &mut prompt).await,
            }
        }
    }
}

/// Creates the embedded default's data directory and cluster secret.
fn prepare_data_dir(dir: &Path) -> Result<()> {
    // The data directory holds the cluster secret and password hashes.
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let secret = dir.join("cluster-secret");
    if !secret.exists() {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options
            .open(&secret)
            .with_context(|| format!("cannot create {}", secret.display()))?;
        writeln!(f, "{}", hex::encode(rand::random::<[u8; 32]>()))?;
        f.sync_all()?;
    }
    Ok(())
}

fn users_file_path(config: &Config) -> Result<PathBuf> {
    match config.directory.backend {
        DirectoryBackend::Static => config
            .directory
            .users_file
            .clone()
            .ok_or_else(|| anyhow!("directory.backend = \"static\" needs directory.users_file")),
        DirectoryBackend::Ldap => {
            bail!("users live in LDAP: add, change and remove them there (doc/ldap.md)")
        }
    }
}

/// Before asking for a new user's password: refuses a login the users
/// file already has. Returns the normalised login.
fn check_new_login(users_file: &Path, login: &str) -> Result<String> {
    let login = normalise_login(login)?;
    if UsersFile::load(users_file)?.find(&login).is_some() {
        bail!("user {login:?} already exists");
    }
    Ok(login)
}

/// Hashes a password for the users file, off the async runtime (Argon2 is
/// slow on purpose).
async fn hash(services: &Services, password: &Password) -> Result<String> {
    let (password, kdf) = (Password::new(password.as_str()), services.kdf.clone());
    Ok(tokio::task::spawn_blocking(move || hash_password(&password, &kdf)).await??)
}

struct NewUser {
    login: String,
    addresses: Vec<String>,
    aliases: Vec<String>,
    quota: Option<ByteSize>,
    quota_messages: Option<u64>,
    recovery: bool,
}

/// Adds a user to the users file and creates the keyring. The keyring is
/// written first, so a user in the users file always has one.
async fn add_user(
    services: &Services,
    users_file: &Path,
    new: NewUser,
    password: &Password,
) -> Result<(String, Option<RecoveryKey>)> {
    let login = normalise_login(&new.login)?;
    let mut file = UsersFile::load(users_file)?;
    let mut addresses = new.addresses;
    if addresses.is_empty() && login.contains('@') {
        addresses.push(login.clone());
    }
    let phc = hash(services, password).await?;
    let entry = UserEntry {
        login: login.clone(),
        password: phc,
        addresses,
        aliases: new.aliases,
        quota: new.quota,
        quota_messages: new.quota_messages,
    };
    file.add(entry)?;
    let u = services.user_id(&login);
    let (_keys, recovery) = match services
        .keyrings
        .create(
            &u,
            password,
            &services.kdf,
            new.recovery && services.recovery_key,
        )
        .await
    {
        Err(AccountError::KeyringExists) => bail!(
            "the store already holds data for {login:?} (left by `user delete --keep-data`?); \
             erase it with `facteur user delete {login} --yes` or restore its users-file entry"
        ),
        other => other.map_err(store_context)?,
    };
    file.save(users_file)?;
    Ok((login, recovery))
}

async fn passwd(
    services: &Services,
    users_file: &Path,
    login: &str,
    with: Unlock,
    new_recovery: bool,
    prompt: &mut Prompter,
) -> Result<()> {
    let login = normalise_login(login)?;
    let mut file = UsersFile::load(users_file)?;
    if file.find(&login).is_none() {
        bail!("no such user: {login}");
    }
    let keys = unlock(services, &login, with, "Current password", prompt).await?;
    let password = prompt.new_password(&login)?;
    let phc = hash(services, &password).await?;
    let u = services.user_id(&login);
    let recovery = services
        .keyrings
        .set_password(&u, &keys, &password, &services.kdf, new_recovery)
        .await
        .map_err(store_context)?;
    if let Some(entry) = file.find_mut(&login) {
        entry.password = phc;
    }
    file.save(users_file)?;
    say!("password changed for {login}");
    print_recovery_key(recovery.as_ref());
    Ok(())
}

async fn rekey(
    services: &Services,
    login: &str,
    with: Unlock,
    new_recovery: bool,
    prompt: &mut Prompter,
) -> Result<()> {
    let login = normalise_login(login)?;
    if services.directory.find_login(&login).await?.is_none() {
        bail!("no such user: {login}");
    }
    let keys = unlock(services, &login, with, "Old password", prompt).await?;
    let password = prompt.secret("Password the directory now has")?;
    if services
        .directory
        .authenticate(&login, &password)
        .await?
        .is_none()
    {
        bail!("that is not the password the directory has for {login}");
    }
    let u = services.user_id(&login);
    let recovery = services
        .keyrings
        .set_password(&u, &keys, &password, &services.kdf, new_recovery)
        .await
        .map_err(store_context)?;
    say!("keyring of {login} now opens with the directory's password");
    print_recovery_key(recovery.as_ref());
    Ok(())
}

/// `user check`: see `account::check`.
async fn check(
    services: &Services,
    login: &str,
    use_recovery: bool,
    repair: bool,
    prompt: &mut Prompter,
) -> Result<()> {
    let login = normalise_login(login)?;
    let with = Unlock::new(use_recovery, None);
    let keys = unlock(services, &login, with, "Password", prompt).await?;
    let report = facteur::account::check::check_user(
        services.store.as_ref(),
        &services.user_id(&login),
        &keys,
        repair,
    )
    .await
    .map_err(store_context)?;
    for problem in &report.problems {
        say!("damaged: {problem}");
    }
    for repaired in &report.repaired {
        say!("repaired: {repaired}");
    }
    say!(
        "checked {login}: {} objects, {} mailboxes, {} messages, {} problems",
        report.objects,
        report.mailboxes,
        report.messages,
        report.problems.len()
    );
    if report.problems.is_empty() {
        Ok(())
    } else if repair {
        say!("run the check again to see what is left");
        Ok(())
    } else {
        bail!("{login}'s data is damaged (run again with --repair to repair what can be)")
    }
}

/// Unlocks a user's account on this process (a short-lived instance of
/// its own), for `import` and `export`.
async fn open_account(
    services: &Services,
    login: &str,
    use_recovery: bool,
    prompt: &mut Prompter,
) -> Result<Arc<facteur::account::Account>> {
    let login = normalise_login(login)?;
    let with = Unlock::new(use_recovery, None);
    let keys = unlock(services, &login, with, "Password", prompt).await?;
    Ok(facteur::account::Account::new(
        services.user_id(&login),
        keys,
        services.store.clone(),
        services.account_config(server::imap::random_instance()),
    ))
}

/// A progress bar on stderr, hidden when stderr is no terminal.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(total: usize) -> Bar {
        let bar = if std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(total as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} messages, {eta} left  {msg}",
        ) {
            bar.set_style(style);
        }
        Bar(bar)
    }
}

impl facteur::migrate::Progress for Bar {
    fn folder(&self, name: &str) {
        self.0.set_message(name.to_owned());
    }

    fn message(&self) {
        self.0.inc(1);
    }
}

/// `import`: see `facteur::migrate`.
async fn import(
    account: &facteur::account::Account,
    source: &facteur::migrate::Source,
) -> Result<()> {
    let bar = Bar::new(source.message_count());
    let result = facteur::migrate::import(account, source, &bar).await;
    bar.0.finish_and_clear();
    let report = result.map_err(migrate_context)?;
    for name in &report.new_uid_validity {
        say!("{name}: existed already, imported messages come after its own");
    }
    for message in &report.too_large {
        say!("{message}: not imported, larger than max_message_size");
    }
    say!(
        "imported {} folders: {} messages, {} skipped (already there), {} renumbered, {} too large",
        report.folders,
        report.messages,
        report.skipped,
        report.renumbered,
        report.too_large.len()
    );
    Ok(())
}

/// `export`: see `facteur::migrate`.
async fn export(account: &facteur::account::Account, to: &Path) -> Result<()> {
    let bar = Bar::new(0);
    let result = facteur::migrate::export(account, to, &bar).await;
    bar.0.finish_and_clear();
    let report = result.map_err(migrate_context)?;
    if report.keywords_dropped > 0 {
        say!(
            "{} keywords left out: a Maildir file name holds at most 26",
            report.keywords_dropped
        );
    }
    say!(
        "exported {} folders: {} messages to {}",
        report.folders,
        report.messages,
        to.display()
    );
    Ok(())
}

fn migrate_context(e: facteur::migrate::MigrateError) -> anyhow::Error {
    match e {
        facteur::migrate::MigrateError::Account(e) => store_context(e),
        other => other.into(),
    }
}

/// What unlocks a user's keys for `passwd` and `rekey`.
enum Unlock {
    Password,
    Recovery,
    /// The admin escrow secret key in this file.
    Escrow(PathBuf),
}

impl Unlock {
    fn new(recovery: bool, escrow_key: Option<PathBuf>) -> Unlock {
        match (recovery, escrow_key) {
            (_, Some(file)) => Unlock::Escrow(file),
            (true, None) => Unlock::Recovery,
            (false, None) => Unlock::Password,
        }
    }
}

/// Unlocks a user's keys with a password or the recovery key read from
/// the prompter, or with the admin escrow key.
async fn unlock(
    services: &Services,
    login: &str,
    with: Unlock,
    label: &str,
    prompt: &mut Prompter,
) -> Result<facteur::crypto::UserKeys> {
    let u = services.user_id(login);
    let result = match with {
        Unlock::Recovery => {
            let key = prompt.secret("Recovery key")?;
            let key = RecoveryKey::parse(key.as_str())?;
            services.keyrings.unlock_with_recovery(&u, &key).await
        }
        Unlock::Password => {
            let password = prompt.secret(label)?;
            services.keyrings.unlock(&u, &password).await
        }
        Unlock::Escrow(file) => {
            let admin = read_escrow_key(&file)?;
            services.keyrings.unlock_with_escrow(&u, &admin).await
        }
    };
    match result {
        Ok(keys) => Ok(keys),
        Err(AccountError::Crypto(CryptoError::WrongPassword)) => {
            bail!("wrong password for {login} (use --recovery to unlock with the recovery key)")
        }
        Err(AccountError::Crypto(CryptoError::WrongRecoveryKey)) => {
            bail!("wrong recovery key for {login}")
        }
        Err(AccountError::Crypto(CryptoError::WrongEscrowKey)) => {
            bail!("this escrow key does not open the keyring of {login}")
        }
        Err(AccountError::Crypto(CryptoError::NoSuchSlot(_))) => {
            bail!(
                "the keyring of {login} has no escrow slot (it gets one at the next login once [crypto] escrow_public_key is set)"
            )
        }
        Err(AccountError::NoKeyring) => bail!("{login} has no keyring in the store yet"),
        Err(e) => Err(store_context(e)),
    }
}

async fn list(services: &Services, users_file: &Path) -> Result<()> {
    let file = UsersFile::load(users_file)?;
    if file.users.is_empty() {
        say!("no users in {}", users_file.display());
        return Ok(());
    }
    for entry in &file.users {
        let keyring = services
            .keyrings
            .load(&services.user_id(&entry.login))
            .await
            .map_err(store_context)?;
        let mut line = entry.login.clone();
        let addresses: Vec<&str> = entry.addresses.iter().map(String::as_str).collect();
        line += &format!(
            "\taddresses: {}",
            if addresses.is_empty() {
                "-".into()
            } else {
                addresses.join(", ")
            }
        );
        if !entry.aliases.is_empty() {
            line += &format!("\taliases: {}", entry.aliases.join(", "));
        }
        if let Some(q) = entry.quota {
            line += &format!("\tquota: {q}");
        }
        if let Some(n) = entry.quota_messages {
            line += &format!("\tquota: {n} messages");
        }
        line += match &keyring {
            None => "\tkeyring: MISSING",
            Some(k) if k.has_recovery() => "\tkeyring: ok, recovery key",
            Some(_) => "\tkeyring: ok",
        };
        say!("{line}");
    }
    Ok(())
}

async fn delete(
    services: &Services,
    users_file: &Path,
    login: &str,
    yes: bool,
    keep_data: bool,
) -> Result<()> {
    let login = normalise_login(login)?;
    let mut file = UsersFile::load(users_file)?;
    file.remove(&login)?;
    if !keep_data && !yes {
        bail!(
            "this erases all of {login}'s mail from the store; run again with --yes \
             (or with --keep-data to remove only the login)"
        );
    }
    if !keep_data {
        let n = services
            .keyrings
            .delete_user_data(&services.user_id(&login))
            .await
            .map_err(store_context)?;
        say!("deleted {n} objects of {login} from the store");
        announce_deleted(services, &services.user_id(&login)).await;
    }
    file.save(users_file)?;
    say!("deleted user {login}");
    Ok(())
}

/// Tells the running instances that a user's data is gone (a change
/// hint, doc/consistency.md): an account still unlocked there checks its
/// keyring at once and locks itself instead of at its next fallback poll.
/// Best effort: without the hint it locks at that poll.
async fn announce_deleted(services: &Services, id: &facteur::store::layout::UserId) {
    if let Err(e) = facteur::account::hints::announce(services.store.as_ref(), id).await {
        let _ = writeln!(
            std::io::stderr(),
            "facteur: warning: could not tell running instances ({e}); \
             sessions of the deleted user end at their next poll"
        );
    }
}

/// `user list` with LDAP: the users who have data in the store, named by
/// the logins the directory lists (doc/ldap.md). User ids are HMACs of the
/// login, so an id whose login has left the directory can only be shown
/// as an id.
async fn list_ldap(services: &Services, config: &Config) -> Result<()> {
    let settings = config
        .directory
        .ldap
        .as_ref()
        .ok_or_else(|| anyhow!("directory.backend = \"ldap\" needs [directory.ldap]"))?;
    let directory = LdapDirectory::new(settings.settings()?, settings.bind_password()?)?;
    let logins: HashMap<UserId, String> = directory
        .logins()
        .await
        .map_err(|e| anyhow!("cannot list the users in LDAP: {e}"))?
        .into_iter()
        .map(|login| (services.user_id(&login), login))
        .collect();
    let ids = services.keyrings.user_ids().await.map_err(store_context)?;
    if ids.is_empty() {
        say!("no user has data in the store");
        return Ok(());
    }
    let mut lines = Vec::new();
    for id in &ids {
        let keyring = services.keyrings.load(id).await.map_err(store_context)?;
        let keyring = match &keyring {
            None => "keyring: MISSING",
            Some(k) if k.has_recovery() => "keyring: ok, recovery key",
            Some(_) => "keyring: ok",
        };
        let line = match logins.get(id) {
            Some(login) => {
                let mail = match directory.find_login(login).await {
                    Ok(Some(record)) if record.addresses.is_empty() => "addresses: -".to_owned(),
                    Ok(Some(record)) => format!("addresses: {}", record.addresses.join(", ")),
                    Ok(None) => "mail disabled in LDAP".to_owned(),
                    Err(e) => format!("LDAP: {e}"),
                };
                format!("{login}\t{mail}\t{keyring}")
            }
            None => format!("unknown (id {id})\tnot in LDAP\t{keyring}"),
        };
        lines.push(line);
    }
    // Known logins first, in order; then the ids nobody has any more.
    lines.sort_by_key(|l| (l.starts_with("unknown (id "), l.clone()));
    for line in lines {
        say!("{line}");
    }
    Ok(())
}

/// `user delete` with LDAP: erases everything the login has in the store.
/// The person is added and removed in LDAP, not here; their entry is
/// usually gone already, which is fine: the login alone names their data.
async fn delete_ldap(services: &Services, login: &str, yes: bool, keep_data: bool) -> Result<()> {
    let login = normalise_login(login)?;
    if keep_data {
        bail!(
            "with LDAP there is no entry to remove here: remove {login} in LDAP \
             (user delete only erases their mail)"
        );
    }
    let id = services.user_id(&login);
    if !services
        .keyrings
        .has_user_data(&id)
        .await
        .map_err(store_context)?
    {
        bail!("{login} has nothing in the store (check the spelling: `facteur user list`)");
    }
    let still_active = match services.directory.find_login(&login).await {
        Ok(found) => found.is_some(),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "facteur: warning: cannot ask LDAP whether {login} is still there: {e}"
            );
            false
        }
    };
    if !yes {
        bail!("this erases all of {login}'s mail from the store; run again with --yes");
    }
    let n = services
        .keyrings
        .delete_user_data(&id)
        .await
        .map_err(store_context)?;
    say!("deleted {n} objects of {login} from the store");
    announce_deleted(services, &id).await;
    if still_active {
        let _ = writeln!(
            std::io::stderr(),
            "facteur: warning: {login} may still use mail in LDAP: their next login \
             creates a new, empty mailbox; remove or disable them in LDAP to stop that"
        );
    }
    Ok(())
}

/// Writes a new admin escrow secret key to `file` (which must not exist)
/// and prints the public half for the configuration.
fn escrow_keygen(file: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = facteur::crypto::EscrowSecretKey::generate();
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("creating {}", file.display()))?;
    let text = zeroize::Zeroizing::new(format!("{}\n", hex::encode(&key.to_bytes()[..])));
    out.write_all(text.as_bytes())
        .and_then(|()| out.sync_all())
        .with_context(|| format!("writing {}", file.display()))?;
    say!(
        "wrote the escrow secret key to {} (keep it offline)\n\
         [crypto]\nescrow_public_key = \"{}\"",
        file.display(),
        hex::encode(key.public_key().to_bytes())
    );
    Ok(())
}

/// Reads an escrow secret key written by [`escrow_keygen`].
fn read_escrow_key(file: &Path) -> Result<facteur::crypto::EscrowSecretKey> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
    );
    let bytes = zeroize::Zeroizing::new(
        hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| anyhow!("{} does not hold an escrow secret key", file.display()))?,
    );
    Ok(facteur::crypto::EscrowSecretKey::from_bytes(*bytes))
}

async fn requeue(services: &Services, login: &str, names: &[String]) -> Result<()> {
    use facteur::mailbox::incoming;
    let login = normalise_login(login)?;
    let user = services.user_id(&login);
    let store = services.store.as_ref();
    if names.is_empty() {
        let held = incoming::quarantined(store, &user)
            .await
            .with_context(|| format!("listing the quarantine of {login}"))?;
        for name in &held {
            say!("{name}");
        }
        say!("{} quarantined records of {login}", held.len());
        return Ok(());
    }
    for name in names {
        incoming::requeue(store, &user, &services.records, name)
            .await
            .with_context(|| format!("requeuing {name} of {login}"))?;
        say!("requeued {name}: delivered at {login}'s next login");
    }
    Ok(())
}

async fn config_check(config: &Config) -> Result<()> {
    let services = Services::from_config(config)?;
    services
        .check_store()
        .await
        .map_err(|e| anyhow!("object store unreachable: {e}"))?;
    let store = match config.store.backend {
        StoreBackend::Fs => format!(
            "fs at {}",
            config
                .store
                .path
                .as_deref()
                .unwrap_or(Path::new("?"))
                .display()
        ),
        StoreBackend::S3 => match &config.store.s3 {
            Some(s3) => format!("s3 bucket {} at {}", s3.bucket, s3.endpoint),
            None => "s3".into(),
        },
        StoreBackend::Memory => "memory".into(),
    };
    let directory = match config.directory.backend {
        DirectoryBackend::Static => {
            let users = UsersFile::load(&users_file_path(config)?)?.users.len();
            format!("directory static with {users} users")
        }
        DirectoryBackend::Ldap => {
            // Any lookup proves the service bind and the search work.
            services
                .directory
                .find_login("facteur-config-check")
                .await
                .map_err(|e| anyhow!("LDAP directory unreachable: {e}"))?;
            "directory ldap reachable".to_owned()
        }
    };
    // The IMAP certificate is read as `serve` would read it; the
    // self-signed pair is left to be generated by `serve`.
    let imap = &config.imap;
    let tls = match (&imap.certificate, &imap.private_key, &imap.self_signed_dir) {
        (Some(cert), Some(key), _) => {
            facteur::server::tls::server_config(cert, key)
                .map_err(|e| anyhow!("IMAP certificate: {e}"))?;
            format!("imap certificate {} loads", cert.display())
        }
        (_, _, Some(dir)) => format!("imap self-signed certificate in {}", dir.display()),
        _ => "imap without TLS".to_owned(),
    };
    say!("config ok: store {store} reachable; {directory}; {tls}");
    Ok(())
}

/// Listen addresses given on the command line, each replacing its
/// configured list.
struct Overrides {
    http: Option<SocketAddr>,
    lmtp: Option<SocketAddr>,
    imap: Option<SocketAddr>,
    imaps: Option<SocketAddr>,
}

async fn serve(
    config: Config,
    embedded: bool,
    overrides: Overrides,
    prompt: &mut Prompter,
) -> Result<()> {
    // Before anything is announced: a SIGTERM from then on stops cleanly.
    let stop = server::termination_signal();
    let hangup = server::hangup_signal();
    let services = Services::from_config(&config)?;
    if let Err(e) = services.check_store().await {
        tracing::warn!(error = %e, "object store unavailable at start; serving anyway");
    }
    // Every port is bound before the demo account is made, so that a
    // start that cannot serve fails before the once-only password shows.
    let bound = bind_listeners(&config, embedded, &overrides).await?;
    if embedded {
        create_demo_account(&services, &users_file_path(&config)?, &bound, prompt).await?;
    }
    let (trigger, shutdown) = Shutdown::new();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(listener) = bound.http {
        let metrics = Arc::new(http::Metrics::default());
        tasks.spawn(http::serve(
            listener,
            services.clone(),
            metrics,
            shutdown.clone(),
        ));
    }
    let lmtp_settings = server::lmtp::Settings::from_config(&config.lmtp);
    for listener in bound.lmtp {
        tasks.spawn(server::lmtp::serve(
            listener,
            server::lmtp::backend_with(&services, config.lmtp.quota_full_temporary),
            lmtp_settings.clone(),
            shutdown.clone(),
        ));
    }
    let certificate = bound
        .imap
        .as_ref()
        .and_then(|(_, tls)| tls.as_ref().map(|t| t.certificate.clone()));
    tasks.spawn(server::reload_on_hangup(
        hangup,
        certificate,
        shutdown.clone(),
    ));
    if let Some((listeners, tls)) = bound.imap {
        let settings = server::imap::Settings::from_config(&config.imap);
        let imap = server::imap::context(
            &services,
            &settings,
            tls.map(|t| t.acceptor),
            server::imap::random_instance(),
        );
        tasks.spawn(server::imap::serve(
            listeners,
            imap,
            settings,
            shutdown.clone(),
        ));
    }
    say!("facteur: ready");
    stop.await;
    tracing::info!("shutting down");
    trigger.fire();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The listeners of `serve`, bound and not yet serving.
struct Bound {
    http: Option<tokio::net::TcpListener>,
    lmtp: Vec<server::lmtp::Listener>,
    /// The TCP addresses among `lmtp`, for the first start's hints.
    lmtp_tcp: Vec<SocketAddr>,
    imap: Option<(Vec<server::imap::Listener>, Option<server::imap::LoadedTls>)>,
    /// The addresses of the IMAP listeners, implicit TLS first.
    imap_tls: Vec<SocketAddr>,
    imap_starttls: Vec<SocketAddr>,
}

/// Whether a port that cannot be bound stops `serve`: always with a
/// config file or an address given on the command line; the embedded
/// default's fixed ports may be taken by something else on a desktop, so
/// there it warns and goes on, as long as some IMAP port listens.
fn lenient(embedded: bool, overridden: bool) -> bool {
    embedded && !overridden
}

/// Binds every configured listener, printing where each listens.
async fn bind_listeners(config: &Config, embedded: bool, overrides: &Overrides) -> Result<Bound> {
    let mut bound = Bound {
        http: None,
        lmtp: vec![],
        lmtp_tcp: vec![],
        imap: None,
        imap_tls: vec![],
        imap_starttls: vec![],
    };
    if let Some(addr) = overrides.http.or(config.http.listen) {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                say!("facteur: http listening on {}", listener.local_addr()?);
                bound.http = Some(listener);
            }
            Err(e) if lenient(embedded, overrides.http.is_some()) => {
                tracing::warn!(error = %e, %addr, "cannot listen for http; use --http ADDR");
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr} for http")),
        }
    }
    let lmtp_addrs = match overrides.lmtp {
        Some(addr) => vec![addr],
        None => config.lmtp.listen.clone(),
    };
    for addr in lmtp_addrs {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) if lenient(embedded, overrides.lmtp.is_some()) => {
                tracing::warn!(error = %e, %addr, "cannot listen for lmtp; use --lmtp ADDR");
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr} for lmtp")),
        };
        let local = listener.local_addr()?;
        say!("facteur: lmtp listening on {local}");
        bound.lmtp_tcp.push(local);
        bound.lmtp.push(server::lmtp::Listener::Tcp(listener));
    }
    #[cfg(unix)]
    if let Some(path) = &config.lmtp.unix_socket {
        let listener = server::lmtp::bind_unix(path)
            .with_context(|| format!("cannot listen on {} for lmtp", path.display()))?;
        say!("facteur: lmtp listening on unix:{}", path.display());
        bound.lmtp.push(server::lmtp::Listener::Unix(listener));
    }
    imap_listeners(config, embedded, overrides, &mut bound).await?;
    Ok(bound)
}

/// Loads the certificate and binds the IMAP listeners into `bound`. The
/// embedded default only warns when one of its ports is taken, but fails
/// when none is free: a demo server nobody can connect to is no use.
async fn imap_listeners(
    config: &Config,
    embedded: bool,
    overrides: &Overrides,
    bound: &mut Bound,
) -> Result<()> {
    let starttls = match overrides.imap {
        Some(addr) => vec![addr],
        None => config.imap.starttls_listen.clone(),
    };
    let implicit = match overrides.imaps {
        Some(addr) => vec![addr],
        None => config.imap.tls_listen.clone(),
    };
    if starttls.is_empty() && implicit.is_empty() {
        return Ok(());
    }
    let tls = server::imap::load_tls(&config.imap)?;
    match &tls {
        Some(t) if t.certificate.is_self_signed() => say!(
            "facteur: imap certificate {} (self-signed: clients must trust it)",
            t.certificate.path().display()
        ),
        Some(_) => {}
        None if !implicit.is_empty() => bail!(
            "imap.tls_listen needs imap.certificate and imap.private_key \
             (or imap.self_signed_dir); set tls_listen = [] to serve STARTTLS ports only"
        ),
        None => tracing::warn!("imap: no certificate configured, STARTTLS is not offered"),
    }
    let mut listeners = vec![];
    let mut busy = vec![];
    let ports = starttls
        .into_iter()
        .map(|a| (a, overrides.imap.is_some(), None))
        .chain(implicit.into_iter().map(|a| {
            let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
            (a, overrides.imaps.is_some(), acceptor)
        }));
    for (addr, overridden, acceptor) in ports {
        let (mode, label) = match acceptor {
            Some(a) => (server::imap::Mode::ImplicitTls(a), "tls"),
            None => (server::imap::Mode::StartTls, "starttls"),
        };
        let tcp = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) if lenient(embedded, overridden) => {
                tracing::warn!(error = %e, %addr, "cannot listen for imap; use --imap/--imaps ADDR");
                busy.push(format!("{addr}: {e}"));
                continue;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot listen on {addr} for imap ({label})"));
            }
        };
        let local = tcp.local_addr()?;
        say!("facteur: imap ({label}) listening on {local}");
        match mode {
            server::imap::Mode::ImplicitTls(_) => bound.imap_tls.push(local),
            server::imap::Mode::StartTls => bound.imap_starttls.push(local),
        }
        listeners.push(server::imap::Listener { tcp, mode });
    }
    if listeners.is_empty() {
        bail!(
            "cannot listen for imap on any port ({}); stop what uses them, or choose free \
             ports with --imap ADDR and --imaps ADDR",
            busy.join("; ")
        );
    }
    bound.imap = Some((listeners, tls));
    Ok(())
}

/// On the embedded default's first start, creates a demo account so a
/// newcomer can point a mail client at the server at once, and says how:
/// the client settings and a command that delivers a test message.
async fn create_demo_account(
    services: &Services,
    users_file: &Path,
    bound: &Bound,
    _prompt: &mut Prompter,
) -> Result<()> {
    if !UsersFile::load(users_file)?.users.is_empty() {
        return Ok(());
    }
    let password = Password::new(random_password());
    let new = NewUser {
        login: "demo".into(),
        addresses: vec![DEMO_ADDRESS.into()],
        aliases: vec![],
        quota: None,
        quota_messages: None,
        recovery: true,
    };
    let (login, recovery) = add_user(services, users_file, new, &password).await?;
    say!("facteur: first start: created a demo account");
    say!("  address:  {DEMO_ADDRESS}");
    say!("  login:    {login}");
    say!("  password: {}", password.as_str());
    print_recovery_key(recovery.as_ref());
    say!("{}", next_steps(&login, bound));
    Ok(())
}

/// The address of the embedded default's demo account.
const DEMO_ADDRESS: &str = "demo@localhost";

/// What to do after the first start: the mail client's settings and a
/// one-line command that delivers a test message over LMTP (Python's
/// `smtplib` speaks LMTP and is on most machines).
fn next_steps(login: &str, bound: &Bound) -> String {
    let mut text = String::from("facteur: next steps\n  mail client (IMAP):");
    let port =
        |a: &SocketAddr, how: &str| format!("\n    server {}, port {} ({how})", a.ip(), a.port());
    for a in &bound.imap_tls {
        text += &port(a, "SSL/TLS");
    }
    for a in &bound.imap_starttls {
        text += &port(a, "STARTTLS");
    }
    text += &format!(
        "\n    user name {login}, normal password (the one above); the certificate is \
         self-signed: accept it in the client (doc/imap.md)"
    );
    match bound.lmtp_tcp.first() {
        Some(lmtp) => {
            text += &format!(
                "\n  deliver a test message (LMTP on {lmtp}):\n    python3 -c \"import smtplib; \
                 smtplib.LMTP('{}', {}).sendmail('test@localhost', ['{DEMO_ADDRESS}'], \
                 'Subject: Hello from Facteur\\n\\nIt works.\\n'); print('delivered')\"",
                lmtp.ip(),
                lmtp.port()
            );
        }
        None => {
            text += "\n  (no LMTP port listens: start with --lmtp 127.0.0.1:PORT to deliver mail)"
        }
    }
    text
}

fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    (0..20)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn print_recovery_key(key: Option<&RecoveryKey>) {
    if let Some(key) = key {
        say!("  recovery key: {key}");
        say!("  (shown once: it unlocks the mailbox if the password is lost; store it offline)");
    }
}

/// Gives an explicit message to store failures, the most common runtime
/// error of these commands.
fn store_context(e: AccountError) -> anyhow::Error {
    match e {
        AccountError::Store(e) if e.is_transient() => anyhow!("object store unavailable: {e}"),
        AccountError::Store(e) => anyhow!("object store error: {e}"),
        other => other.into(),
    }
}

/// Asks for passwords on the terminal without echo, or reads them one per
/// line from standard input when it is not a terminal (scripts, tests).
struct Prompter {
    tty: bool,
    lines: Option<std::io::Lines<std::io::StdinLock<'static>>>,
}

/// Shortest password accepted for new passwords.
const MIN_PASSWORD_LEN: usize = Password::MIN_CHARS;

impl Prompter {
    fn new() -> Self {
        Prompter {
            tty: std::io::stdin().is_terminal(),
            lines: None,
        }
    }

    fn secret(&mut self, label: &str) -> Result<Password> {
        if self.tty {
            let value = rpassword::prompt_password(format!("{label}: "))
                .context("cannot read from the terminal")?;
            return Ok(Password::new(value));
        }
        let lines = self
            .lines
            .get_or_insert_with(|| std::io::stdin().lock().lines());
        match lines.next() {
            Some(line) => Ok(Password::new(
                line.context("cannot read standard input")?
                    .trim_end_matches('\r'),
            )),
            None => bail!("{label}: expected a line on standard input"),
        }
    }

    /// Reads a new password (twice on a terminal) and checks it is not
    /// trivially weak.
    fn new_password(&mut self, login: &str) -> Result<Password> {
        let password = self.secret("New password")?;
        if self.tty {
            let again = self.secret("Repeat new password")?;
            if again.as_str() != password.as_str() {
                bail!("the two passwords differ");
            }
        }
        let p = password.as_str();
        if p.trim().is_empty() {
            bail!("empty password");
        }
        if p.chars().count() < MIN_PASSWORD_LEN {
            bail!("password too weak: use at least {MIN_PASSWORD_LEN} characters");
        }
        if p.eq_ignore_ascii_case(login.trim()) || p.chars().all(|c| p.starts_with(c)) {
            bail!("password too weak: it is the login or one repeated character");
        }
        Ok(password)
    }
}

//! `grantwheel-server`: the share API as a service.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use grantwheel_server::config::ServeArgs;
use grantwheel_server::keys::KeyStore;
use grantwheel_server::Server;

/// The grantwheel share service.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and the history page (the default).
    Serve(Box<ServeArgs>),
    /// Manage API keys (works while the service runs).
    Keys {
        /// The database file.
        #[arg(
            long,
            env = "GRANTWHEEL_DB",
            default_value = "grantwheel.db",
            global = true
        )]
        db: PathBuf,
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Make a key; its secret is printed once.
    Add {
        /// A name for people: which CRM or team uses it.
        #[arg(long, default_value = "api key")]
        name: String,
    },
    /// List the keys (never their secrets).
    List,
    /// Revoke a key: calls with it get 401 within a second.
    Revoke {
        /// The access key.
        access_key: String,
    },
}

fn keys(db: &std::path::Path, action: KeyAction) -> Result<(), String> {
    let store = KeyStore::open(db).map_err(|e| e.to_string())?;
    match action {
        KeyAction::Add { name } => {
            let key = store.add(&name).map_err(|e| e.to_string())?;
            println!("accessKey: {}", key.access_key);
            println!("secretKey: {}", key.secret);
            println!("(the secret is not kept: store it now)");
        }
        KeyAction::List => {
            for k in store.list().map_err(|e| e.to_string())? {
                let state = match k.revoked_at {
                    Some(t) => format!("revoked {}", t.format("%Y-%m-%d %H:%M UTC")),
                    None => "live".into(),
                };
                println!(
                    "{}  {}  made {}  {}",
                    k.access_key,
                    state,
                    k.created_at.format("%Y-%m-%d %H:%M UTC"),
                    k.name
                );
            }
        }
        KeyAction::Revoke { access_key } => {
            if store.revoke(&access_key).map_err(|e| e.to_string())? {
                println!("revoked {access_key}");
            } else {
                return Err(format!("no live key `{access_key}`"));
            }
        }
    }
    Ok(())
}

async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    // The log goes to stderr and the first key to stdout, so a log
    // collector never sees a secret.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Lines are written by a thread of their own, so a slow stderr never
    // stalls a call; the guard flushes what is queued when serving ends.
    let (writer, _flush) = tracing_appender::non_blocking(std::io::stderr());
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_writer(writer)
            .with_env_filter(filter)
            .init();
    } else {
        // Colours only for a person at a terminal, not in a file.
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(writer)
            .with_env_filter(filter)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let db = args.db.clone();
        let store = if args.postgres.is_some() {
            "postgresql"
        } else {
            "sqlite"
        };
        let server = Server::bind(args).await.map_err(|e| e.to_string())?;
        let addr = server.local_addr().map_err(|e| e.to_string())?;
        if let Some(key) = server.first_key() {
            // Printed once, to the terminal, never to the log.
            let scheme = if server.is_tls() { "https" } else { "http" };
            let base = format!("{scheme}://{addr}/v2/EntityAccess.svc");
            let keys = format!(
                "-H 'x-LSQ-AccessKey: {}' -H 'x-LSQ-SecretKey: {}'",
                key.access_key, key.secret
            );
            println!("A first API key was made (its secret is not kept: store it now):");
            println!("  accessKey: {}", key.access_key);
            println!("  secretKey: {}", key.secret);
            println!();
            println!("Tell grantwheel about an activity and its owner (a lead is shared only with it):");
            println!("  curl -s -X POST '{base}/Events' {keys} -H 'Content-Type: application/json' -d '{{\"Id\":\"evt-1\",\"Trigger\":\"ActivityPosted\",\"Entity\":1,\"EntityId\":\"869196\",\"Activity\":{{\"Id\":\"f2dbf1d5-bbab-418b-bddc-4c92ecdef214\",\"Owner\":\"0203f172-8642-11e7-9bed-069b743e848f\"}}}}'");
            println!("Share the lead (the seed's example):");
            println!("  curl -s -X POST '{base}/Share' {keys} -H 'Content-Type: application/json' -d '[{{\"UserId\":\"0203f172-8642-11e7-9bed-069b743e848f\",\"Entity\":1,\"EntityType\":3,\"EntityId\":\"869196\",\"ContextEntity\":1,\"ContextEntityId\":\"f2dbf1d5-bbab-418b-bddc-4c92ecdef214\",\"AccessType\":2,\"DurationInMinutes\":30}}]'");
            println!("Its status (put the Id from the answer; ShareStatus 6 means processed):");
            println!("  curl -s '{base}/Status/Get?id=<Id>' {keys}");
            println!("The share history page: {scheme}://{addr}/history?Entity=1&EntityId=869196");
            println!();
        }
        let tls = server.is_tls();
        tracing::info!(%addr, db = %db.display(), store, tls, "serving");
        server.run(stop_signal()).await.map_err(|e| e.to_string())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Keys { db, action }) => keys(&db, action),
        Some(Command::Serve(args)) => serve(*args),
        None => serve(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grantwheel-server: {e}");
            ExitCode::FAILURE
        }
    }
}

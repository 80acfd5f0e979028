//! `fake-providers`: serve the fake vendor APIs for the demo and benchmarks, or rewrite a
//! manifest's vendor URLs to point at them.
//!
//!   fake-providers serve [PORT]            serve until killed; prints the base URL. Faults are
//!                                          switched at run time through /_admin/ (see the
//!                                          crate's `admin` module)
//!   fake-providers rewrite BASE < in > out point vendor URLs at BASE

use std::io::Read;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => {
            let port = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(0);
            let fakes = tokensync_fakes::FakeProviders::start_with_admin(port).await?;
            println!("{}", fakes.base_url());
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
        Some("rewrite") if args.len() == 3 => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            print!("{}", tokensync_fakes::rewrite_urls(&text, &args[2]));
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: fake-providers serve [PORT] | fake-providers rewrite BASE < manifest"
            );
            std::process::exit(2)
        }
    }
}

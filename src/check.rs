//! `s3vol check SOURCE`: resolve the profile, connect, list one page, report.

use s3vol::cli::CheckArgs;
use s3vol::store::s3::S3Store;
use s3vol::store::{ListRequest, ObjectStore};
use std::process::ExitCode;

pub fn run(args: &CheckArgs) -> ExitCode {
    let resolved = match args.connect.resolve() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("s3vol: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = match args.connect.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("s3vol: {e}");
            return ExitCode::from(2);
        }
    };
    let p = &resolved.profile;
    println!("provider:     {}", p.provider.name());
    println!(
        "endpoint:     {}",
        resolved.endpoint.as_deref().unwrap_or("(AWS default)")
    );
    println!(
        "region:       {}",
        resolved.region.as_deref().unwrap_or(match resolved.endpoint {
            // Custom endpoints skip the EC2 metadata service (see S3Store::connect).
            Some(_) => "(AWS_REGION or the profile's, else us-east-1)",
            None => "(AWS default chain)",
        })
    );
    println!("addressing:   {:?}", p.addressing);
    println!("bucket:       {}", resolved.bucket);
    println!(
        "prefix:       {}",
        if resolved.prefix.is_empty() {
            "(none)"
        } else {
            &resolved.prefix
        }
    );
    println!("checksums:    {:?}", p.checksums);
    println!("max put:      {} bytes", p.max_put_size);
    println!(
        "part size:    min {} / preferred {} / max {} bytes, {} parts",
        p.min_part_size, p.preferred_part_size, p.max_part_size, p.max_parts
    );
    println!(
        "capabilities: delete-objects={} upload-part-copy={} rename-object={} user-metadata={} markers={:?} get-redirects={} list-v1={}",
        p.delete_objects, p.upload_part_copy, p.rename_object, p.user_metadata, p.markers, p.get_redirects, p.list_v1
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("s3vol: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let store = S3Store::connect(&resolved, settings).await?;
        let req = ListRequest {
            prefix: resolved.prefix.clone(),
            delimiter: Some("/".into()),
            max_keys: Some(1000),
            ..Default::default()
        };
        store.list_page(&req).await.map_err(|e| e.to_string())
    });
    match result {
        Ok(page) => {
            println!(
                "listing:      ok ({} keys, {} prefixes on the first page)",
                page.objects.len(),
                page.prefixes.len()
            );
            let names = page
                .prefixes
                .iter()
                .cloned()
                .chain(page.objects.iter().map(|o| o.key.clone()));
            for name in names.take(args.keys) {
                println!("  {name}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let endpoint = resolved.endpoint.as_deref().unwrap_or("the AWS endpoint");
            eprintln!(
                "s3vol: cannot list s3://{}/{} at {endpoint}: {e}",
                resolved.bucket, resolved.prefix
            );
            ExitCode::FAILURE
        }
    }
}

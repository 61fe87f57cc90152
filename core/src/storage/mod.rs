//! How sluice reaches AWS, for every process: the shared SDK configuration
//! and credential chain ([`aws`]), local files and who may reach them
//! ([`local`]), S3 stores and their registry ([`s3`]),
//! S3 multipart upload calls ([`multipart`]) and the DynamoDB client
//! ([`dynamodb`]). No plan or sink logic: the sinks and the coordinator
//! build on these.

pub mod aws;
pub mod dynamodb;
pub mod local;
pub mod multipart;
pub mod s3;

/// The URL of the object at `location` in the store `in_store` is a URL of
/// (`s3://bucket/dir/`, `file:///`), each part of its path percent-encoded
/// so that `ListingTableUrl::parse` gives `location` back whatever its
/// names hold: `#`, `?`, `%` (Spark's `ts=10%3A00/` directories), spaces.
/// Pasting the path into the URL instead reads another object, or none.
pub fn object_url(in_store: &str, location: &object_store::path::Path) -> Result<String, String> {
    let mut url = url::Url::parse(in_store).map_err(|e| format!("{in_store}: {e}"))?;
    url.path_segments_mut()
        .map_err(|()| format!("{in_store}: not a URL with a path"))?
        .clear()
        .extend(location.as_ref().split('/'));
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::datasource::listing::ListingTableUrl;
    use object_store::path::Path;

    #[test]
    fn object_urls_give_their_path_back_whatever_the_names_hold() -> Result<(), String> {
        for store in ["file:///tmp/in/", "s3://bucket/in/", "s3://bucket/"] {
            for parts in [
                vec!["tmp", "in", "plain.json"],
                vec!["in", "ts=10%3A00", "x.json"],
                vec!["in", "a b#1?.json"],
                vec!["in", "100% [done] {x}.json"],
            ] {
                let path = Path::from_iter(parts.iter().copied());
                let url = object_url(store, &path)?;
                let parsed = ListingTableUrl::parse(&url).map_err(|e| e.to_string())?;
                assert_eq!(parsed.prefix(), &path, "{url}");
                assert_eq!(&url[..3], &store[..3]);
            }
        }
        Ok(())
    }
}

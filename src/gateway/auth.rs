//! Who may do what: signatures checked against the key pairs kept in the backend, anonymous
//! reads where a bucket allows them, and HTTP Basic for Nix's binary cache store.
//!
//! s3s verifies SigV4 (headers, presigned URLs, streaming payloads) with the secret [`Auth`]
//! looks up; [`Access`] then admits a request that is signed, or that the HTTP layer in front
//! marked [`BasicAuthenticated`] (it checked an `Authorization: Basic` header and stripped it),
//! or an anonymous read (GET, HEAD or listing) of a bucket whose settings allow anonymous reads.
//! Every write needs a valid signature or Basic credentials.

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{S3Result, s3_error};

use super::Gateway;
use super::error::commit_error;

/// Marks a request whose `Authorization: Basic` header named a valid key pair.
#[derive(Debug, Clone)]
pub struct BasicAuthenticated {
    /// The access key id it named.
    pub access_key_id: String,
}

/// The secrets of the client key pairs, for s3s's signature checks.
pub struct Auth(pub Gateway);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.secret(access_key).await? {
            Some(secret) => Ok(SecretKey::from(secret)),
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records."
            )),
        }
    }
}

/// The operations an anonymous client may perform where a bucket allows anonymous reads.
const ANONYMOUS_READS: &[&str] =
    &["GetObject", "HeadObject", "ListObjects", "ListObjectsV2", "HeadBucket", "GetBucketLocation"];

/// The access policy of every S3 operation.
pub struct Access(pub Gateway);

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        // The first point where s3s tells the operation: for the request's metrics and log line.
        let op = cx.s3_op().name().to_owned();
        super::http::Operation::set(cx.extensions_mut(), op);
        let signed = cx.credentials().is_some();
        let bucket = match cx.s3_path() {
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => Some(bucket.to_string()),
            S3Path::Root => None,
        };
        let read = ANONYMOUS_READS.contains(&cx.s3_op().name());
        self.0.admit(signed, cx.extensions_mut(), bucket.as_deref(), read).await
    }
}

impl Gateway {
    /// The one access rule: a signed or Basic-marked request may do anything; an anonymous one
    /// only a `read` of a `bucket` whose settings allow anonymous reads (a missing bucket is
    /// AccessDenied too, so anonymous clients cannot probe for names).
    pub(super) async fn admit(
        &self,
        signed: bool,
        extensions: &::http::Extensions,
        bucket: Option<&str>,
        read: bool,
    ) -> S3Result<()> {
        if signed || extensions.get::<BasicAuthenticated>().is_some() {
            return Ok(());
        }
        let (Some(bucket), true) = (bucket, read) else {
            return Err(s3_error!(AccessDenied, "Anonymous users may only read public buckets"));
        };
        let settings = self.cache(bucket).settings().await.map_err(|e| commit_error(bucket, e))?;
        match settings {
            Some(settings) if settings.anonymous_read => Ok(()),
            _ => Err(s3_error!(AccessDenied, "Access Denied")),
        }
    }
}
